"""`SyncConfig`, and the staging directory a trial writes to when a syncer copies its files.

Without a syncer (the default, and `syncer=None` for a shared directory), trials write
straight to storage through fsspec. With one (a command template or a function), each
trial attempt writes its result files and new checkpoints to a local staging directory,
and the syncer copies that directory's contents into the trial's directory in storage:
every `sync_period` seconds, at each checkpoint, and when the attempt ends.

Contract:
- A checkpoint counts only once prefect-tune has seen all of its files in storage after a
  sync and written its manifest there itself; a sync cut short leaves no checkpoint.
- Once committed, a checkpoint's staged copy is removed: staging holds at most the
  checkpoint being synced, never old ones. The syncer must copy, not mirror (no
  `--delete`): storage keeps what staging no longer holds, and prefect-tune deletes what
  retention evicts there itself.
- A failing or hanging sync is retried `sync_attempts` times, then raised (SyncError): at
  a checkpoint from `report()`, otherwise from the trial's next report or its end.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from prefect_tune.storage.errors import ConfigError, StorageError
from prefect_tune.storage.filesystem import Storage, checkpoint_manifest
from prefect_tune.storage.layout import MANIFEST

Syncer = str | Callable[[str, str], Any] | None
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class SyncError(StorageError):
    """The syncer failed or timed out on every attempt, or did not copy what it had to."""


@dataclass(frozen=True)
class SyncConfig:
    """How trial files reach storage.

    Args:
        syncer: "auto" (default): trials write straight to storage through fsspec.
            None: storage is a directory every machine shares (NFS); the same direct
            writes, nothing is copied. A command template with {source} and {target}
            (e.g. "aws s3 sync {source} {target}"), run by the shell with both quoted, or
            a function `syncer(source, target)`: trials write to a local staging
            directory (`RunConfig.local_dir`), and the syncer copies its contents into
            the trial's directory in storage. It must copy, not mirror (no --delete).
        sync_period: Seconds between syncs while a trial runs (also at each checkpoint
            and at the end).
        sync_timeout: Seconds one sync may take before it counts as failed (a command
            is killed; a function is abandoned, still running).
        sync_attempts: Tries per sync before the trial fails with SyncError.
        upload_dir: The older name of `RunConfig.storage_path`: where results go.
        sync_artifacts: Copy the files a trial writes into its working directory
            (`get_context().working_dir`, the process's cwd with process isolation) to
            `<trial>/artifacts/` in storage: when the attempt ends, failed or not.
        sync_artifacts_on_checkpoint: With `sync_artifacts`, also at each checkpoint.
    """

    syncer: Syncer | Literal["auto"] = "auto"
    sync_period: float = 300.0
    sync_timeout: float = 1800.0
    sync_attempts: int = 3
    upload_dir: str | None = None
    sync_artifacts: bool = False
    sync_artifacts_on_checkpoint: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.upload_dir, os.PathLike):
            object.__setattr__(self, "upload_dir", os.fspath(self.upload_dir))
        syncer = self.syncer
        if isinstance(syncer, str) and syncer != "auto":
            missing = [f for f in ("{source}", "{target}") if f not in syncer]
            if missing:
                raise ConfigError(
                    f"syncer={syncer!r} lacks {' and '.join(missing)}: a sync command must "
                    'name both, e.g. "aws s3 sync {source} {target}"'
                )
        elif syncer is not None and not isinstance(syncer, str) and not callable(syncer):
            raise ConfigError(
                f"syncer={syncer!r} is invalid: use None, a command template with {{source}} "
                "and {target}, or a function syncer(source, target)"
            )
        for name in ("sync_period", "sync_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name}={value!r} is invalid: use a number of seconds > 0")
        attempts = self.sync_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(f"sync_attempts={attempts!r} is invalid: use an integer >= 1")
        for name in ("sync_artifacts", "sync_artifacts_on_checkpoint"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.upload_dir is not None and (not isinstance(self.upload_dir, str)
                                            or not self.upload_dir):
            raise ConfigError(f"upload_dir={self.upload_dir!r} must be a non-empty string")

    @property
    def stages(self) -> bool:
        """Whether trials write to a staging directory for the syncer to copy."""
        return self.syncer is not None and self.syncer != "auto"


class StagedTrial:
    """One trial attempt's staging directory `source`, copied into `target` (the trial's
    directory in `storage`) by the configured syncer."""

    def __init__(self, config: SyncConfig, storage: Storage, source: str, target: str,
                 logger: Logger) -> None:
        self.config = config
        self.storage = storage
        self.source = source
        self.target = target
        self.logger = logger
        self._pending: dict[str, bytes] = {}  # staged checkpoint name -> its manifest
        self._lock = threading.Lock()
        self._failed: SyncError | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if os.path.exists(source):
            # Left by an attempt that died before its last sync: nothing in it is newer
            # than its last committed checkpoint, which is in storage.
            logger.info("discarding the staging directory of an earlier attempt: %s", source)
            shutil.rmtree(source)
        os.makedirs(source)

    def start(self) -> None:
        """Sync every `sync_period` seconds until `close`."""
        self._thread = threading.Thread(target=self._periodic, name="trial-sync", daemon=True)
        self._thread.start()

    def stage_checkpoint(self, name: str, directory: str) -> None:
        """Copy local `directory` into staging as checkpoint `name`; it is committed in
        storage by the next `sync`."""
        _, manifest = checkpoint_manifest(directory)
        shutil.copytree(directory, os.path.join(self.source, name))
        with self._lock:
            self._pending[name] = manifest

    def check(self) -> None:
        """Raise the SyncError of a failed periodic sync, if there was one."""
        if self._failed is not None:
            raise self._failed

    def sync(self) -> None:
        """Copy staging into storage now, then commit the checkpoints it carried.

        Raises:
            SyncError: this sync, or an earlier periodic one, failed on every attempt.
        """
        with self._lock:
            self.check()
            try:
                self._copy()
                for name, manifest in list(self._pending.items()):
                    self._commit(name, manifest)
                    del self._pending[name]
            except SyncError as exc:
                self._failed = exc
                raise

    def close(self) -> None:
        """Stop the periodic syncs, sync a last time, and remove the staging directory.

        Raises:
            SyncError: the last sync failed; the staging directory is kept.
        """
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        self.sync()
        shutil.rmtree(self.source, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(self.source))  # the experiment's, once it is empty
        except OSError:
            pass

    def _periodic(self) -> None:
        while not self._closed.wait(self.config.sync_period):
            try:
                self.sync()
            except SyncError:
                return  # raised from the trial's next report() or its end

    def _copy(self) -> None:
        attempts = self.config.sync_attempts
        for attempt in range(1, attempts + 1):
            try:
                self._run_syncer()
                return
            except Exception as exc:
                if attempt == attempts:
                    raise SyncError(
                        f"syncing {self.source} to {self.storage.uri(self.target)} failed "
                        f"{attempts} times; last: {exc}"
                    ) from exc
                self.logger.warning("sync attempt %d of %d failed (retrying): %s",
                                    attempt, attempts, exc)
                time.sleep(min(0.5 * 2 ** (attempt - 1), 10.0))

    def _run_syncer(self) -> None:
        syncer, timeout = self.config.syncer, self.config.sync_timeout
        target = self.storage.uri(self.target)
        if isinstance(syncer, str):
            command = syncer.format(source=shlex.quote(self.source), target=shlex.quote(target))
            _run_command(command, timeout)
            return
        assert callable(syncer)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                syncer(self.source, target)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        thread = threading.Thread(target=call, name="trial-syncer", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the syncer function timed out after {timeout:g} s")
        if errors:
            error = errors[0]
            raise RuntimeError(f"the syncer function raised {type(error).__name__}: {error}")

    def _commit(self, name: str, manifest: bytes) -> None:
        """Write checkpoint `name`'s manifest in storage once all its files are there."""
        final = f"{self.target}/{name}"
        expected = json.loads(manifest)["files"]
        found = {
            path[len(final) + 1:]: info.get("size")
            for path, info in self.storage.find(final).items()  # the syncer wrote them
        }
        wrong = sorted(rel for rel, size in expected.items() if found.get(rel) != size)
        if wrong:
            raise SyncError(
                f"after the sync, {self.storage.uri(final)} lacks {wrong[:3]} (or their sizes "
                "differ): the syncer must copy the contents of {source} into {target}, e.g. "
                '"aws s3 sync {source} {target}" or "rsync -a {source}/ {target}"'
            )
        self.storage.write_bytes(f"{final}/{MANIFEST}", manifest, durable=False)
        shutil.rmtree(os.path.join(self.source, name))


def _run_command(command: str, timeout: float) -> None:
    """Run `command` in a shell of its own process group; kill the group on timeout."""
    with subprocess.Popen(command, shell=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, start_new_session=True) as process:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise TimeoutError(f"the sync command timed out after {timeout:g} s") from None
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"the sync command exited with status {process.returncode}: {tail}")
