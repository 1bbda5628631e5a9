"""The Prefect storage block, and turning any supported block into a `Storage`.

This is the only module of `prefect_tune.storage` that imports Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.blocks.core import Block, UnknownBlockType
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.types import SecretDict
from pydantic import Field, PrivateAttr

from prefect_tune.storage.buckets import SUPPORTED, bucket_storage, install_hint
from prefect_tune.storage.errors import ConfigError
from prefect_tune.storage.filesystem import Storage, resolve_storage


class TuneStorage(WritableFileSystem):
    """Where prefect-tune experiments live: a path or fsspec URL plus secret options.

    Register with `prefect block register -m prefect_tune.storage.block`. The options (keys,
    tokens, endpoints) are a secret field: shown masked in the UI and never written to
    logs or experiment files. Doubles as Prefect result storage.
    """

    _block_type_name = "Tune Storage"
    _block_type_slug = "tune-storage"
    _description = "Experiment storage for prefect-tune: a local path, NFS mount, s3:// or gs:// URL."

    url: str = Field(
        default=...,
        description="Local path, NFS mount or fsspec URL, e.g. s3://bucket/sweeps.",
    )
    storage_options: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        description="fsspec options such as key, secret, token, endpoint_url (kept secret).",
    )

    _resolved: Storage | None = PrivateAttr(default=None)

    @classmethod
    def over(cls, storage: Storage, path: str) -> TuneStorage:
        """An unsaved block over `path` of an already resolved storage, for Prefect's
        result persistence; it holds no options of its own, so saving it saves no secret."""
        block = cls(url=storage.uri(path))
        block._resolved = storage.at(path)
        return block

    def storage(self) -> Storage:
        """The resolved storage; credentials stay inside the filesystem object."""
        if self._resolved is not None:
            return self._resolved
        return resolve_storage(self.url, self.storage_options.get_secret_value())

    def _resolve_path(self, path: str) -> Path:
        """The full path of `path` under `url`; a full path under it is returned as it is
        (Prefect's result store calls this on unsaved blocks and then passes full paths
        back).

        Raises:
            ConfigError: `path` leaves `url` ("..", percent-encoded or not, another
                scheme, bucket or directory).
        """
        return Path(self.storage().inside(path))

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        """Read `path` (relative to `url`, or full); `_sync` is passed by Prefect."""
        return self.storage().read_bytes(str(self._resolve_path(path)))

    def write_path(  # type: ignore[override]
        self, path: str, content: bytes, _sync: bool | None = None
    ) -> str:
        """Atomically write `path` (relative to `url`, or full) and return its full path."""
        target = str(self._resolve_path(path))
        # Atomic but not fsynced, as Prefect's own LocalFileSystem: the trial outcomes
        # prefect-tune stores here are copies of trial.json.
        self.storage().write_bytes(target, content, durable=False)
        return target


def storage_from_block(block: Any) -> Storage:
    """Resolve a saved block name ("slug/name") or a block instance to a Storage.

    Supported: TuneStorage, Prefect's RemoteFileSystem and LocalFileSystem, and the
    S3Bucket (prefect-aws) and GcsBucket (prefect-gcp) blocks with their credentials.

    Raises:
        ConfigError: the reference is malformed, names no saved block or a block type
            whose package is not installed, or the block is unsupported or unusable.
    """
    if isinstance(block, str):
        if "/" not in block:
            raise ConfigError(
                f"storage_block={block!r} is not a block reference: use 'slug/name', e.g. "
                f"'tune-storage/{block}'"
            )
        try:
            block = Block.load(block)
        except UnknownBlockType as exc:
            hint = install_hint(block.split("/", 1)[0]) or f"{exc}; install its package"
            raise ConfigError(f"storage_block={block!r} could not be loaded: {hint}") from exc
        except ValueError as exc:
            raise ConfigError(
                f"storage_block={block!r} could not be loaded ({exc}); create it first, in "
                "the UI or with TuneStorage(url=...).save(name)"
            ) from exc
    if isinstance(block, TuneStorage):
        return block.storage()
    if isinstance(block, RemoteFileSystem):
        return resolve_storage(block.basepath, block.settings)
    if isinstance(block, LocalFileSystem):
        if not block.basepath:
            raise ConfigError("storage_block is a LocalFileSystem without basepath; set one")
        return resolve_storage(block.basepath)
    storage = bucket_storage(block)
    if storage is not None:
        return storage
    raise ConfigError(
        f"storage_block of type {type(block).__name__} is not supported: use "
        f"TuneStorage, RemoteFileSystem, LocalFileSystem, {SUPPORTED}"
    )
