"""`Checkpoint`: a directory of files, local or in storage, named by (path, filesystem)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from prefect_tune.storage.errors import CheckpointError, MetricError, StorageError
from prefect_tune.storage.layout import (
    DICT_FILE,
    DICT_PICKLE_FILE,
    MANIFEST,
    METADATA_FILE,
    is_leftover,
)
from prefect_tune.storage.records import to_json_value
from prefect_tune.storage.scratch import scratch_dir, write_local_atomic

#: The most bytes of JSON `set_metadata` stores (1 MiB): metadata is for small facts
#: about a checkpoint (its step, a framework version); data goes in its files.
METADATA_LIMIT = 1 << 20


class Checkpoint:
    """A checkpoint directory.

    Made by the user with `from_directory` / `from_dict` and passed to `report()`; handed
    back by `get_checkpoint()` and in results, where `path` is its URI in storage. Reading
    never changes a stored checkpoint: `as_directory()` of a stored checkpoint yields a copy.
    Its metadata (`get_metadata`, `set_metadata`, `update_metadata`) is a small JSON
    object kept in the directory as `.metadata.json`, copied and committed with the rest.

    Example:
        >>> ckpt = Checkpoint.from_dict({"step": 3})
        >>> ckpt.to_dict()
        {'step': 3}
    """

    def __init__(self, path: str, filesystem: AbstractFileSystem | None = None) -> None:
        if filesystem is None:
            filesystem, _ = fsspec.core.url_to_fs(path)
        self.path = path
        self.filesystem = filesystem
        self._fs_path = str(fsspec.core.strip_protocol(path))

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """A checkpoint of the local directory `path`; `report()` copies it into storage."""
        local = os.path.abspath(os.fspath(path))
        if not os.path.isdir(local):
            raise CheckpointError(
                f"Checkpoint.from_directory({os.fspath(path)!r}): not a directory; write the "
                "checkpoint files into a directory first"
            )
        return cls(local, LocalFileSystem())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, allow_pickle: bool = False) -> Checkpoint:
        """A checkpoint holding `data` as JSON.

        Values JSON cannot hold are refused unless `allow_pickle=True`, which stores a
        pickle instead (and `to_dict` then needs `allow_pickle=True` too).
        """
        directory = scratch_dir("dict-")
        try:
            write_dict(directory, data, allow_pickle=allow_pickle)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        checkpoint = cls(directory, LocalFileSystem())
        weakref.finalize(checkpoint, shutil.rmtree, directory, ignore_errors=True)
        return checkpoint

    def _is_stored(self) -> bool:
        return bool(self.filesystem.exists(f"{self._fs_path}/{MANIFEST}"))

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy the checkpoint's files into local directory `path` (a new temp dir if None),
        its metadata file included: `Checkpoint.from_directory` of the copy has the same
        metadata. The manifest of a stored checkpoint is not copied."""
        target = os.fspath(path) if path is not None else tempfile.mkdtemp(
            prefix="checkpoint_tmp_"
        )
        os.makedirs(target, exist_ok=True)
        source = self._fs_path
        remote = [p for p in self.filesystem.find(source) if not p.endswith(f"/{MANIFEST}")
                  and not _metadata_leftover(p[len(source) + 1:])]
        if not remote and not self.filesystem.exists(source):
            raise CheckpointError(f"checkpoint {self.path} does not exist in storage")
        local = [os.path.join(target, *p[len(source) + 1:].split("/")) for p in remote]
        for directory in {os.path.dirname(p) for p in local}:
            os.makedirs(directory, exist_ok=True)
        if remote:
            self.filesystem.get(remote, local)
        return target

    @contextmanager
    def as_directory(self) -> Iterator[str]:
        """Yield a local directory with the checkpoint's files.

        A user's own local directory is yielded as is; a stored checkpoint is copied to a
        temp dir that is removed afterwards, so the stored one cannot be modified.
        """
        if isinstance(self.filesystem, LocalFileSystem) and not self._is_stored():
            yield self._fs_path
            return
        directory = self.to_directory(scratch_dir("checkpoint-"))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def to_dict(self, *, allow_pickle: bool = False) -> dict[str, Any]:
        """The data of a checkpoint made with `from_dict`."""
        base = self._fs_path
        fs = self.filesystem
        if fs.exists(f"{base}/{DICT_FILE}"):
            try:
                return dict(json.loads(fs.cat_file(f"{base}/{DICT_FILE}")))
            except (ValueError, TypeError) as exc:
                raise CheckpointError(
                    f"checkpoint {self.path}: {DICT_FILE} is not a JSON object ({exc}); the "
                    "file is damaged: use another checkpoint"
                ) from exc
        if fs.exists(f"{base}/{DICT_PICKLE_FILE}"):
            if not allow_pickle:
                raise CheckpointError(
                    f"checkpoint {self.path} holds a pickle; pass allow_pickle=True to load it "
                    "(only for checkpoints you trust)"
                )
            with fs.open(f"{base}/{DICT_PICKLE_FILE}", "rb") as handle:
                return dict(pickle.load(handle))
        raise CheckpointError(
            f"checkpoint {self.path} was not made with Checkpoint.from_dict; read its files "
            "with to_directory() or as_directory()"
        )

    def get_metadata(self) -> dict[str, Any]:
        """The metadata stored with the checkpoint; {} when none was set.

        Raises:
            CheckpointError: the metadata file is damaged (not a JSON object), naming the
                checkpoint.
        """
        path = f"{self._fs_path}/{METADATA_FILE}"
        try:
            data = self.filesystem.cat_file(path)
        except FileNotFoundError:
            return {}
        try:
            metadata = json.loads(data)
        except ValueError as exc:  # not JSON, or not UTF-8
            metadata, reason = None, f" ({exc})"
        else:
            reason = f" (it holds a {type(metadata).__name__})"
        if not isinstance(metadata, dict):
            raise CheckpointError(
                f"checkpoint {self.path}: {METADATA_FILE} is not a JSON object{reason}; the "
                "file is damaged: replace it with set_metadata(), or use another checkpoint"
            )
        return metadata

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace the checkpoint's metadata with `metadata`, a dict of JSON data with
        string keys, at most 1 MiB as JSON (`METADATA_LIMIT`).

        Set it before `report()`, which commits the metadata with the checkpoint's files.
        A checkpoint already in storage (`get_checkpoint()`, `Result.checkpoint`) may be
        given metadata too, as in Ray: the file is replaced atomically (a renamed temp
        file locally, one PUT on object stores), so readers see the old or the new
        metadata and the checkpoint stays committed throughout. Its manifest, which
        commits the files as they were reported, is not rewritten.

        Raises:
            CheckpointError: `metadata` is not a dict, has a key that is not a string or
                a value JSON cannot hold (named), or is over the limit; or the checkpoint
                directory no longer exists.
            StorageError: the file could not be written.
        """
        self._write_metadata(_encode_metadata(_clean_metadata(metadata, "set_metadata")))

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Merge `metadata` into the stored metadata (its keys replace the same keys,
        like `dict.update`); otherwise as `set_metadata`. Not atomic against another
        writer updating the same checkpoint at the same time: the last write wins.

        Raises:
            CheckpointError: as `set_metadata`, or the stored metadata is damaged.
            StorageError: the file could not be written.
        """
        update = _clean_metadata(metadata, "update_metadata")
        self._write_metadata(_encode_metadata({**self.get_metadata(), **update}))

    def _write_metadata(self, data: bytes) -> None:
        """Replace the metadata file with `data` atomically; never creates the directory
        (that would bring a deleted checkpoint's directory back)."""
        fs, base = self.filesystem, self._fs_path
        path = f"{base}/{METADATA_FILE}"
        fs.invalidate_cache(base)
        gone = CheckpointError(
            f"checkpoint {self.path} does not exist (deleted, e.g. by retention or by "
            "hand): its metadata cannot be set"
        )
        try:
            if isinstance(fs, LocalFileSystem):
                write_local_atomic(path, data, create_dirs=False)
            elif not fs.isdir(base):
                raise gone
            else:
                fs.pipe_file(path, data)
        except FileNotFoundError:
            raise gone from None
        except CheckpointError:
            raise
        except Exception as exc:  # any backend failure, named: the file and the cause
            raise StorageError(
                f"could not write {self.path}/{METADATA_FILE}: {type(exc).__name__}: {exc}"
            ) from exc

    def __fspath__(self) -> str:
        raise TypeError(
            "a Checkpoint is not a path; use checkpoint.as_directory() or to_directory()"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and (other.path, other.filesystem.protocol) == (
            self.path, self.filesystem.protocol
        )

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r})"


def write_dict(directory: str, data: Mapping[str, Any], *, allow_pickle: bool = True) -> None:
    """Store `data` in local `directory` as JSON; if JSON cannot hold it, as a pickle when
    `allow_pickle`, else raise CheckpointError naming the value."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"a dict checkpoint needs a dict, got {type(data).__name__}")
    try:
        payload = to_json_value(data, "checkpoint")
    except MetricError as exc:
        if not allow_pickle:
            raise CheckpointError(
                f"Checkpoint.from_dict: {exc}; or pass allow_pickle=True to store a pickle"
            ) from None
        with open(os.path.join(directory, DICT_PICKLE_FILE), "wb") as handle:
            pickle.dump(dict(data), handle)
        return
    with open(os.path.join(directory, DICT_FILE), "w") as handle:
        json.dump(payload, handle)


def holds_dict(directory: str) -> bool:
    """Whether local checkpoint `directory` was written by `write_dict`."""
    return any(os.path.exists(os.path.join(directory, name))
               for name in (DICT_FILE, DICT_PICKLE_FILE))


def _clean_metadata(metadata: Mapping[str, Any], caller: str) -> dict[str, Any]:
    """`metadata` as plain JSON data; CheckpointError naming what JSON cannot hold."""
    if not isinstance(metadata, Mapping):
        raise CheckpointError(
            f"Checkpoint.{caller}() needs a dict, got {type(metadata).__name__}; pass "
            "e.g. {\"step\": 3}"
        )
    clean = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"Checkpoint.{caller}(): key {key!r} is not a string; metadata is stored as "
                f"JSON, whose keys are strings: use str({key!r})"
            )
        try:
            clean[key] = to_json_value(value, f"metadata[{key!r}]")
        except MetricError as exc:
            raise CheckpointError(
                f"Checkpoint.{caller}(): {exc}; metadata is stored as JSON: convert the "
                "value first (e.g. str(value), value.tolist()) or write it into the "
                "checkpoint's files"
            ) from None
    return clean


def _encode_metadata(metadata: dict[str, Any]) -> bytes:
    """`metadata` as JSON bytes; CheckpointError when over `METADATA_LIMIT`, naming the
    largest key."""
    data = json.dumps(metadata).encode()
    if len(data) > METADATA_LIMIT:
        largest = max(metadata, key=lambda k: len(json.dumps(metadata[k])))
        raise CheckpointError(
            f"checkpoint metadata is {len(data)} bytes of JSON, over the limit of "
            f"{METADATA_LIMIT} (1 MiB); the largest is key {largest!r}: keep metadata to small "
            "facts and write large data into the checkpoint's files"
        )
    return data


def _metadata_leftover(relative: str) -> bool:
    """Whether `relative` is the temp file of a metadata write killed mid-way."""
    return relative.startswith(f"{METADATA_FILE}.tmp-") and is_leftover(relative)
