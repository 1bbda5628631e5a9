"""Storage resolution and the few filesystem primitives everything else is built on.

`Storage` pairs an fsspec filesystem with a root path. Local storage (a disk or an NFS
mount) gets atomic renames; object stores get single-object PUTs and a marker written
last. Storage options (credentials) live only inside the filesystem object: they are
never part of a repr, a log line or a file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations

from prefect_tune.storage.checkpoint import Checkpoint
from prefect_tune.storage.errors import CheckpointError, ConfigError, StorageError
from prefect_tune.storage.layout import MANIFEST, is_leftover, token
from prefect_tune.storage.scratch import write_local_atomic

_PROBE_BYTES = b"prefect-tune storage probe\n"
#: Characters fsspec expands as glob patterns where it takes several paths.
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True, eq=False)
class Storage:
    """A filesystem and a root path in it; `url` is for display and holds no secrets."""

    url: str
    fs: AbstractFileSystem
    root: str

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    @property
    def is_local(self) -> bool:
        """A local disk or a mount of one (NFS): atomic renames, appendable files."""
        return isinstance(self.fs, LocalFileSystem)

    @property
    def is_in_memory(self) -> bool:
        """memory:// lives in one process: other processes cannot see its files."""
        protocols = self.fs.protocol
        return "memory" in (protocols if isinstance(protocols, tuple) else (protocols,))

    def link(self, path: str) -> str | None:
        """The URI of `path` where a link to it means something; None for a local path,
        which no browser follows."""
        return None if self.is_local else self.uri(path)

    def at(self, path: str) -> Storage:
        """The same filesystem rooted at `path`."""
        return Storage(url=self.uri(path), fs=self.fs, root=path)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def inside(self, path: str) -> str:
        """The full path of `path` (relative to the root, or full, or a URI) if it lies
        under the root.

        Raises:
            ConfigError: `path` leaves the root: "..", percent-encoded or not, another
                scheme, bucket or directory.
        """
        root = self.root.rstrip("/")
        text = urllib.parse.unquote(path)
        if not text:
            return root
        uri = "://" in text
        if uri:
            scheme = text.split("://", 1)[0]
            protocols = self.fs.protocol
            if scheme not in (protocols if isinstance(protocols, tuple) else (protocols,)):
                raise ConfigError(f"path {path!r} is not in storage {self.url}: another scheme")
            text = self.fs._strip_protocol(text)
        full = text if text == root or text.startswith(f"{root}/") else (
            "" if uri or text.startswith("/") else self.join(text)
        )
        if not full or ".." in full[len(root):].split("/"):
            raise ConfigError(
                f"path {path!r} leaves storage {self.url}: use a path inside it, without '..'"
            )
        return full

    def uri(self, path: str) -> str:
        """The user-facing URI of `path`: a plain path locally, scheme://... elsewhere."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def checkpoint(self, path: str) -> Checkpoint:
        """The stored checkpoint directory `path`."""
        return Checkpoint(self.uri(path), self.fs)

    def write_bytes(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Replace `path` with `data` atomically: readers see the old or the new content.

        Locally, `durable` also fsyncs the data before the rename, so that the new
        content survives a power loss too; state files need that, files derived from
        them do not (an object-store PUT is durable when it returns either way).
        """
        try:
            if self.is_local:
                write_local_atomic(path, data, durable=durable)
            else:
                self.fs.pipe_file(path, data)
        except Exception as exc:  # any backend failure, named: the file and the cause
            raise self.error("write", path, exc) from exc

    def touch(self, path: str) -> None:
        """Make `path` an empty file (creating its directory): a record whose name is
        its content, atomic by nature."""
        try:
            if not self.is_local:
                self.fs.pipe_file(path, b"")
                return
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        except Exception as exc:
            raise self.error("write", path, exc) from exc

    def create(self, path: str, data: bytes) -> bool:
        """Write `path` only if it does not exist yet, atomically; False if it does.
        Locally a complete temp file is hard-linked into place; object stores get a PUT
        with If-None-Match (enforced by S3; memory:// is one process)."""
        try:
            if not self.is_local:
                self.fs.pipe_file(path, data, mode="create")
                return True
            temp = f"{path}.tmp-{token()}"
            write_local_atomic(temp, data)
            try:
                os.link(temp, path)
            finally:
                os.unlink(temp)
            return True
        except FileExistsError:
            return False
        except Exception as exc:
            raise self.error("write", path, exc) from exc

    def read_bytes(self, path: str, start: int = 0) -> bytes:
        """The content of `path`, from byte `start` on (b"" past its end).

        Raises:
            FileNotFoundError: there is no such file.
            StorageError: it could not be read (naming the file and the cause).
        """
        try:
            return bytes(self.fs.cat_file(path, start=start or None))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self.error("read", path, exc) from exc

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        """The content of each of `paths` that exists, by path; concurrent on object
        stores. Paths are literal (no glob patterns).

        Raises:
            StorageError: a file exists but could not be read.
        """
        if not paths:
            return {}
        found = self.fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths),
                                   on_error="return")
        out = {}
        for path, data in zip(paths, found, strict=True):
            if isinstance(data, FileNotFoundError):
                continue
            if isinstance(data, BaseException):
                raise self.error("read", path, data) from data
            out[path] = bytes(data)
        return out

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(path))

    def remove(self, path: str) -> None:
        """Delete the file or tree `path` (a literal path, never a glob pattern); nothing
        there is fine."""
        try:
            if self.is_local or not _GLOB.search(path):
                self.fs.rm(path, recursive=True)
                return
            for file in self.find(path):  # fsspec's rm would expand "[", "*", "?"
                self.fs.rm_file(file)
        except FileNotFoundError:
            pass

    def remove_leftovers(self, root: str) -> None:
        """Remove the temp files killed writers left (`layout.is_leftover`) in `root` and,
        locally, one level below it:
        killed local writers leave temp files in trial directories, object stores (whose
        PUTs are atomic) only the probe's in `root`."""
        directories = [root]
        if self.is_local:
            directories += [os.path.join(root, name) for name in self.listdir(root)
                            if os.path.isdir(os.path.join(root, name))]
        for directory in directories:
            for name in self.listdir(directory):
                if is_leftover(name):
                    self.remove(f"{directory}/{name}")

    def error(self, action: str, path: str, exc: BaseException) -> StorageError:
        """A StorageError for a failed `action` on `path`: the URI, the cause and, for a
        local path, what to check (a full disk, permissions, a read-only mount)."""
        return storage_error(action, self.uri(path), exc, path if self.is_local else None)

    def find(self, path: str) -> dict[str, dict[str, Any]]:
        """Every file under `path` with its details, listed afresh (files written behind
        fsspec's back included); {} when there is none."""
        self.fs.invalidate_cache(path)
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        return {self.fs._strip_protocol(k): v for k, v in found.items()}

    def appender(self, path: str, initial: bytes = b"") -> Appender:
        """`path`, replaced by `initial`, to be grown by appends (see `Appender`)."""
        return LocalAppender(path, initial) if self.is_local else ObjectAppender(self, path, initial)

    def listdir(self, path: str) -> list[str]:
        """Base names directly under `path`; [] when it does not exist."""
        try:
            if self.is_local:
                entries = os.listdir(path)
            else:
                entries = self.fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def commit_directory(self, source: str, staging: str, final: str) -> None:
        """Publish local directory `source` as `final`, atomically.

        Locally the tree is copied to `staging`, the manifest written, then `staging`
        renamed to `final`. On object stores the files are uploaded to `final` and the
        manifest is PUT last. Either way `final` counts as committed only once it holds
        the manifest; a crash before that leaves nothing a reader takes for a checkpoint.

        Raises:
            StorageError: naming the checkpoint and the cause (a full disk, ...); nothing
                of it is left behind.
        """
        files, manifest = checkpoint_manifest(source)
        try:
            if self.is_local:
                for rel in files:
                    target = os.path.join(staging, *rel.split("/"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copy2(os.path.join(source, rel), target)
                os.makedirs(staging, exist_ok=True)
                with open(os.path.join(staging, MANIFEST), "wb") as handle:
                    handle.write(manifest)
                os.rename(staging, final)
                return
            if files:
                self.fs.put(
                    [os.path.join(source, rel) for rel in files],
                    [f"{final}/{rel}" for rel in files],
                )
            self.fs.pipe_file(f"{final}/{MANIFEST}", manifest)
        except BaseException as exc:
            self._remove_quietly(staging if self.is_local else final)
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise self.error("write checkpoint", final, exc) from exc
            raise

    def _remove_quietly(self, path: str) -> None:
        """Best-effort removal of an uncommitted upload; what remains is never read, and a
        resumed trial removes it."""
        try:
            self.remove(path)
        except OSError:
            pass

    def delete_directory(self, path: str, trash: str) -> None:
        """Remove a committed directory so that it stops being committed first.

        Locally it is renamed to `trash` (atomic) and then removed; on object stores the
        manifest goes first, then the rest. Idempotent: calling it again after a partial
        failure finishes the job (pass the same `trash`); nothing left is fine.
        """
        if self.is_local:
            if os.path.isdir(path):
                os.rename(path, trash)
            self.remove(trash)
            return
        if self.fs.exists(f"{path}/{MANIFEST}"):
            self.fs.rm_file(f"{path}/{MANIFEST}")
        self.remove(path)

    def probe(self, path: str) -> None:
        """Write, read back and delete the small object `path`.

        Raises:
            StorageError: naming the URI, the cause and what to change.
        """
        directory = path.rsplit("/", 1)[0]
        try:
            if self.is_local:
                write_local_atomic(path, _PROBE_BYTES)
            else:
                self.fs.pipe_file(path, _PROBE_BYTES)
            if self.fs.cat_file(path) != _PROBE_BYTES:
                raise StorageError(f"{self.uri(path)} read back different bytes than written")
            self.fs.rm_file(path)
        except StorageError:
            raise
        except (TypeError, AttributeError) as exc:  # s3fs uses its options at first use
            raise ConfigError(
                f"storage_options for {self.uri(directory)} were rejected by the filesystem: "
                f"{_describe(exc)}; pass only keyword arguments that its fsspec filesystem "
                "accepts, with values of the types it expects"
            ) from exc
        except Exception as exc:  # any backend failure: the probe exists to translate it
            local = _local_hint(path, exc) if self.is_local else ""
            raise StorageError(
                f"storage {self.uri(directory)} is not usable: writing {self.uri(path)} "
                f"failed: {_describe(exc)}{local or '. ' + _hint(exc)}"
            ) from exc


def resolve_storage(url: str, options: Mapping[str, Any] | None = None) -> Storage:
    """Resolve a local path or fsspec URL (plus fsspec options) to a Storage.

    Raises:
        StorageError: the scheme is unknown or its fsspec package is not installed.
        ConfigError: the filesystem rejected `options`.
    """
    if "://" not in url and "::" not in url:
        url = os.path.abspath(os.path.expanduser(url))
    for key, value in (options or {}).items():  # e.g. client_kwargs, config_kwargs
        if key.endswith("kwargs") and not isinstance(value, Mapping):
            raise ConfigError(
                f"storage_options[{key!r}] must be a dict of keyword arguments, not a "
                f"{type(value).__name__}"
            )
    try:
        fs, root = fsspec.core.url_to_fs(url, **dict(options or {}))
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        known = known_implementations.get(scheme, {})
        hint = known.get("err") or f"install the fsspec backend for {scheme}://"
        raise StorageError(
            f"storage_path {url!r} needs a package that is not installed ({exc}): {hint}"
        ) from exc
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise ConfigError(f"storage_path {url!r} is invalid: {exc}") from exc
        scheme = url.split("://", 1)[0]
        raise StorageError(
            f"storage_path {url!r} has an unknown scheme {scheme!r}; use a local path or "
            "an fsspec URL such as s3://bucket/path, gs://bucket/path or file:///path"
        ) from exc
    except TypeError as exc:
        raise ConfigError(
            f"storage_options for {url!r} were rejected by the filesystem: {exc}; pass only "
            f"keyword arguments that {url.split('://', 1)[0]!r} filesystems accept"
        ) from exc
    except OSError as exc:  # e.g. hdfs:// without a JVM, a host that cannot be reached
        raise StorageError(
            f"storage_path {url!r} cannot be opened: {_describe(exc)}. {_hint(exc)}"
        ) from exc
    display = root if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(root)
    return Storage(url=display, fs=fs, root=root.rstrip("/") or root)


class Appender(Protocol):
    """A file that grows by appends. Locally every `write` reaches the file at once; on
    object stores, which cannot append, the content is kept in memory and PUT whole by
    `flush`. Either way `flush` makes everything written so far durable in storage."""

    def write(self, data: bytes) -> None: ...
    def replace(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class LocalAppender:
    """An appended local file; `replace` rewrites it atomically. A failure (a full disk)
    is a StorageError naming the file."""

    def __init__(self, path: str, initial: bytes) -> None:
        self._path = path
        try:
            if initial:
                write_local_atomic(path, initial)
                self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
            else:  # nothing to keep: truncating in place is as safe (a resume cuts again)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self._file = open(path, "wb")  # noqa: SIM115
        except OSError as exc:
            raise storage_error("write", path, exc, path) from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            raise storage_error("write", self._path, exc, self._path) from exc

    def replace(self, data: bytes) -> None:
        self._file.close()
        try:
            write_local_atomic(self._path, data, durable=False)
            self._file = open(self._path, "ab")  # noqa: SIM115
        except OSError as exc:
            raise storage_error("write", self._path, exc, self._path) from exc

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ObjectAppender:
    """An object-store file held in memory and PUT whole when flushed (if it changed)."""

    def __init__(self, storage: Storage, path: str, initial: bytes) -> None:
        self._storage, self._path = storage, path
        self._data = bytearray(initial)
        self._dirty = True

    def write(self, data: bytes) -> None:
        self._data += data
        self._dirty = True

    def replace(self, data: bytes) -> None:
        self._data = bytearray(data)
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self._storage.write_bytes(self._path, bytes(self._data))
            self._dirty = False

    def close(self) -> None:
        self.flush()


def checkpoint_manifest(source: str) -> tuple[dict[str, int], bytes]:
    """The files of local checkpoint directory `source` (relative path -> size) and the
    manifest that commits them, written last into the stored checkpoint."""
    files = local_files(source)
    return files, json.dumps({"format": 1, "files": files}, sort_keys=True).encode()


def local_files(source: str) -> dict[str, int]:
    """Relative path -> size of every file under `source`, following symbolic links to
    files and folders (a checkpoint holds what its links point to, on every backend).

    Raises:
        StorageError: `source` is not a directory.
        CheckpointError: a link is broken, or leads back into a folder it is in (a loop).
    """
    if not os.path.isdir(source):
        raise StorageError(f"checkpoint directory {source!r} does not exist")
    files: dict[str, int] = {}

    def walk(directory: str, relative: str, ancestors: frozenset[str]) -> None:
        real = os.path.realpath(directory)
        if real in ancestors:
            raise CheckpointError(
                f"checkpoint directory {source!r}: {relative!r} links back to {real!r}, a "
                "folder it is inside of (a loop); link to the files themselves instead"
            )
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir():
                    walk(entry.path, name, ancestors | {real})
                elif entry.is_file():
                    files[name] = entry.stat().st_size
                elif entry.is_symlink():
                    raise CheckpointError(
                        f"checkpoint directory {source!r}: {name!r} is a broken link (to "
                        f"{os.readlink(entry.path)!r}); remove it or make it point to a file"
                    )

    walk(source, "", frozenset())
    return files


def storage_error(action: str, uri: str, exc: BaseException,
                  local_path: str | None = None) -> StorageError:
    """"could not <action> <uri>: <cause>", plus what to check about a local path."""
    hint = _local_hint(local_path, exc) if local_path is not None else ""
    return StorageError(f"could not {action} {uri}: {_describe(exc)}{hint}")


def _local_hint(path: str, exc: BaseException) -> str:
    """What to check about local `path` after `exc`."""
    number = getattr(exc, "errno", None)
    if number == errno.ENOSPC:
        return ": the disk is full; free space or use another storage_path"
    if number == errno.EROFS:
        return ": the file system is read-only; use another storage_path"
    if number in (errno.EACCES, errno.EPERM):
        directory = path
        while directory and not os.path.exists(directory):
            directory = os.path.dirname(directory)
        try:
            info = os.stat(directory)
        except OSError:
            return ""
        return (f": {directory} is owned by uid {info.st_uid} with mode "
                f"{stat.filemode(info.st_mode)}, and this process runs as uid {os.getuid()}; "
                "fix the permissions or use another storage_path")
    return ""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _hint(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "Check that the bucket or directory exists, or create it."
    if isinstance(exc, PermissionError):
        return "The credentials were refused: check storage_options or the storage block."
    return "Check storage_path, storage_options and that the storage service is reachable."
