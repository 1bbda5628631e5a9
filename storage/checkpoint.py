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

from prefect_tune.storage.errors import CheckpointError, MetricError
from prefect_tune.storage.layout import DICT_FILE, DICT_PICKLE_FILE, MANIFEST
from prefect_tune.storage.records import to_json_value
from prefect_tune.storage.scratch import scratch_dir


class Checkpoint:
    """A checkpoint directory.

    Made by the user with `from_directory` / `from_dict` and passed to `report()`; handed
    back by `get_checkpoint()` and in results, where `path` is its URI in storage. Reading
    never changes a stored checkpoint: `as_directory()` of a stored checkpoint yields a copy.

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
        """Copy the checkpoint's files into local directory `path` (a new temp dir if None)."""
        target = os.fspath(path) if path is not None else tempfile.mkdtemp(
            prefix="checkpoint_tmp_"
        )
        os.makedirs(target, exist_ok=True)
        source = self._fs_path
        remote = [p for p in self.filesystem.find(source) if not p.endswith(f"/{MANIFEST}")]
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
