"""`ExperimentStore`: everything one experiment reads from and writes to storage.

Contract:
- A checkpoint directory is committed once it holds the manifest; listings and reads
  ignore anything else, and an index is never reused.
- `result.json` is JSON lines; a torn last line (a killed writer) is skipped on read.
- `progress.csv` always has the union of all columns seen so far.
- Storage options never appear in anything written here.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect_tune.storage.checkpoint import Checkpoint
from prefect_tune.storage.errors import StorageError, StorageNotShared
from prefect_tune.storage.filesystem import Storage, resolve_storage
from prefect_tune.storage.layout import (
    ERROR_FILE,
    EXPERIMENT_STATE,
    MANIFEST,
    PARAMS,
    PROGRESS,
    RESULT_LOG,
    STORAGE_MARKER,
    TRIAL_STATE,
    ExperimentLayout,
    checkpoint_index,
    staging_trial_dir,
    token,
    used_index,
)
from prefect_tune.storage.records import (
    AUTO_KEYS,
    CheckpointRecord,
    TrialOutcome,
    TrialSpec,
)
from prefect_tune.storage.result_log import ResultLog
from prefect_tune.storage.state import ExperimentRecord, outcome_from_json, outcome_to_json
from prefect_tune.storage.sync import Logger, StagedTrial, SyncConfig, default_local_dir


@dataclass(frozen=True)
class StorageMarker:
    """What the sweep wrote into its storage for trials to read back."""

    token: str
    host: str


@dataclass(frozen=True)
class ResumePoint:
    """Where a trial resumes: the result rows up to its latest recorded checkpoint, the
    checkpoints those rows reference, and the next unused checkpoint index."""

    rows: tuple[dict[str, Any], ...]
    records: tuple[CheckpointRecord, ...]
    next_index: int

    @property
    def latest(self) -> CheckpointRecord | None:
        return self.records[-1] if self.records else None


class ExperimentStore:
    """Reads and writes one experiment directory `<storage>/<name>`."""

    def __init__(
        self, storage: Storage, name: str, *, tensorboard: bool = True,
        sync_config: SyncConfig | None = None, local_dir: str | None = None,
    ) -> None:
        """`tensorboard`: trials also write TensorBoard event files, when tensorboardX or
        tensorboard is installed. A `sync_config` with a syncer stages trial files under
        `local_dir`."""
        self.storage = storage
        self.name = name
        self.layout = ExperimentLayout(storage.join(name))
        self.tensorboard = tensorboard
        self.sync_config = sync_config
        self.local_dir = local_dir

    def __repr__(self) -> str:
        return f"ExperimentStore({self.path!r})"

    @property
    def path(self) -> str:
        """URI of the experiment directory."""
        return self.storage.uri(self.layout.root)

    def probe(self) -> None:
        """Check that the experiment directory can be written, read and deleted from."""
        self.storage.probe(self.layout.probe_file())

    def mark(self) -> StorageMarker:
        """Write a fresh storage marker for this run's trials to `check_marker`."""
        marker = StorageMarker(token(), socket.gethostname())
        data = json.dumps({"token": marker.token, "host": marker.host}).encode()
        self.storage.write_bytes(self.layout.join(STORAGE_MARKER), data, durable=False)
        return marker

    def check_marker(self, marker: StorageMarker, trial_name: str) -> None:
        """Check that this process sees the storage the sweep wrote `marker` into.

        Raises:
            StorageNotShared: naming this host, the sweep's host and what to use instead.
        """
        path = self.layout.join(STORAGE_MARKER)
        try:
            found = json.loads(self.storage.read_bytes(path)).get("token")
        except (FileNotFoundError, ValueError):
            found = None
        if found == marker.token:
            return
        seen = "finds no such file" if found is None else "finds another run's marker there"
        where = (
            "memory:// storage lives in one process: use a local path, NFS or cloud storage"
            if self.storage.is_in_memory else
            "a local path is only on the machine it belongs to: mount one shared filesystem "
            "(NFS) at that path on every machine, or use cloud storage (s3://, gs://)"
        )
        raise StorageNotShared(
            f"trial {trial_name} on host {socket.gethostname()!r} cannot see the experiment's "
            f"storage {self.path}: the sweep on host {marker.host!r} wrote "
            f"{self.storage.uri(path)}, but this process {seen}. {where}"
        )

    def trial_uri(self, trial_name: str) -> str:
        return self.storage.uri(self.layout.trial_dir(trial_name))

    def checkpoint(self, trial_name: str, index: int) -> Checkpoint:
        path = self.layout.checkpoint_dir(trial_name, index)
        return Checkpoint(self.storage.uri(path), self.storage.fs)

    def exists(self) -> bool:
        """Whether an experiment was created here (its experiment.json exists)."""
        return self.storage.exists(self.layout.join(EXPERIMENT_STATE))

    def create(self, record: ExperimentRecord) -> None:
        """Write the experiment's state file; its trials start out PENDING."""
        self.storage.write_bytes(self.layout.join(EXPERIMENT_STATE), record.to_json())

    def read_experiment(self) -> ExperimentRecord:
        """The experiment's state file.

        Raises:
            FileNotFoundError: there is no experiment here.
            StorageError: the file is not a state file this version reads.
        """
        path = self.layout.join(EXPERIMENT_STATE)
        return ExperimentRecord.from_json(self.storage.read_bytes(path), self.storage.uri(path))

    def write_trial_state(self, outcome: TrialOutcome) -> None:
        """Replace the trial's trial.json atomically.

        Not fsynced, like the checkpoints it lists: an fsync per trial event was two
        thirds of the cost of experiment state. A power loss can at worst leave the file
        empty, which reads as "no record" (the trial is unfinished and resumes from its
        checkpoints)."""
        path = self.layout.trial_file(outcome.trial_name, TRIAL_STATE)
        self.storage.write_bytes(path, outcome_to_json(outcome), durable=False)

    def read_trial_state(self, spec: TrialSpec) -> TrialOutcome | None:
        """The trial's last recorded outcome; None if there is none (see
        `write_trial_state`)."""
        return self.read_trial_states([spec])[0]

    def read_trial_states(self, specs: Sequence[TrialSpec]) -> list[TrialOutcome | None]:
        """`read_trial_state` of every trial, fetched in one batch (concurrently on
        object stores)."""
        paths = [self.layout.trial_file(s.trial_name, TRIAL_STATE) for s in specs]
        found = self.storage.fs.cat(paths, on_error="omit") if paths else {}
        found = {self.storage.fs._strip_protocol(k): v for k, v in found.items()}
        return [
            outcome_from_json(found[path], spec, self.storage.uri(path)) if found.get(path)
            else None
            for path, spec in zip(paths, specs, strict=True)
        ]

    def clear_history(self, trial_name: str) -> None:
        """Forget the trial's results and errors, so that it restarts from scratch; its
        checkpoints, referenced by nothing after this, go when it resumes."""
        self.open_log(trial_name).close()
        error = self.layout.trial_file(trial_name, ERROR_FILE)
        if self.storage.exists(error):
            self.storage.fs.rm_file(error)

    def write_file(self, name: str, data: bytes) -> None:
        """Atomically replace the experiment-level file `name`."""
        self.storage.write_bytes(self.layout.join(name), data)

    def write_params(self, trial_name: str, config: Mapping[str, Any]) -> None:
        data = json.dumps(config, sort_keys=True, indent=2).encode()
        self.storage.write_bytes(self.layout.trial_file(trial_name, PARAMS), data, durable=False)

    def append_error(self, trial_name: str, text: str) -> None:
        """Append one failure record to the trial's error.txt."""
        path = self.layout.trial_file(trial_name, ERROR_FILE)
        previous = self.storage.read_bytes(path).decode() if self.storage.exists(path) else ""
        count = previous.count("Failure # ") + 1
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        entry = f"Failure # {count} (occurred at {stamp})\n{text.rstrip()}\n\n"
        self.storage.write_bytes(path, (previous + entry).encode())

    def open_log(
        self, trial_name: str, rows: Iterable[Mapping[str, Any]] = (),
        staged: StagedTrial | None = None,
    ) -> ResultLog:
        """The trial's result log, rewritten to hold exactly `rows`; in the staging
        directory of `staged`, if given."""
        storage, directory = (
            (resolve_storage(staged.source), staged.source) if staged is not None
            else (self.storage, self.layout.trial_dir(trial_name))
        )
        return ResultLog(storage, f"{directory}/{RESULT_LOG}", f"{directory}/{PROGRESS}", rows,
                         tensorboard=self.tensorboard)

    def staged_trial(self, trial_name: str, logger: Logger) -> StagedTrial | None:
        """A fresh staging directory for one attempt of the trial, if a syncer is set."""
        if self.sync_config is None or not self.sync_config.stages:
            return None
        source = staging_trial_dir(self.local_dir or default_local_dir(), self.name,
                                   trial_name)
        return StagedTrial(self.sync_config, self.storage, source,
                           self.layout.trial_dir(trial_name), logger)

    def resume_point(self, trial_name: str, *, clean: bool = True) -> ResumePoint:
        """Read where the trial resumes, and remove what nothing refers to.

        The resume checkpoint is the latest one that is both committed and recorded in
        result.json (a checkpoint committed just before a crash, without its row, is
        dropped). Rows reported after it are discarded, so a resumed trial records every
        training_iteration exactly once. With `clean`, uncommitted and unrecorded
        checkpoint directories are deleted (only the attempt that resumes may do that: the
        next index counts them first, so indexes are never reused).
        """
        rows = self.read_rows(trial_name)
        committed = set(self.committed_indexes(trial_name))
        referenced = [
            checkpoint_index(str(row.get("checkpoint_dir_name") or "")) for row in rows
        ]
        next_index = max(
            self.next_index(trial_name),
            max((i for i in referenced if i is not None), default=-1) + 1,
        )
        cut, records = 0, []
        for position, row in enumerate(rows):
            index = checkpoint_index(str(row.get("checkpoint_dir_name") or ""))
            if index is not None and index in committed:
                cut = position + 1
                metrics = {k: v for k, v in row.items() if k not in AUTO_KEYS}
                records.append(CheckpointRecord(index, metrics))
        if clean:
            self._discard_unreferenced(trial_name, {r.index for r in records})
        return ResumePoint(tuple(rows[:cut]), tuple(records), next_index)

    def _discard_unreferenced(self, trial_name: str, referenced: set[int]) -> None:
        trial_dir = self.layout.trial_dir(trial_name)
        for name in self.storage.listdir(trial_dir):
            index = used_index(name)
            if index is None or index in referenced:
                continue
            path = f"{trial_dir}/{name}"
            if checkpoint_index(name) is not None and self.storage.exists(f"{path}/{MANIFEST}"):
                self.delete_checkpoint(trial_name, index)
            else:
                self.storage.fs.rm(path, recursive=True)

    def commit_checkpoint(self, trial_name: str, index: int, source: str) -> None:
        """Publish local directory `source` as checkpoint `index` of the trial."""
        final = self.layout.checkpoint_dir(trial_name, index)
        staging = self.layout.staging_dir(trial_name, index)
        try:
            self.storage.commit_directory(source, staging, final)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(
                f"could not write checkpoint {self.storage.uri(final)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def delete_checkpoint(self, trial_name: str, index: int) -> None:
        """Delete checkpoint `index`; after a partial failure, calling again finishes it."""
        path = self.layout.checkpoint_dir(trial_name, index)
        self.storage.delete_directory(path, self.layout.trash_dir(trial_name, index))

    def committed_indexes(self, trial_name: str) -> list[int]:
        """Indexes of the trial's committed checkpoints, ascending."""
        trial_dir = self.layout.trial_dir(trial_name)
        found = []
        for name in self.storage.listdir(trial_dir):
            index = checkpoint_index(name)
            if index is not None and self.storage.exists(f"{trial_dir}/{name}/{MANIFEST}"):
                found.append(index)
        return sorted(found)

    def next_index(self, trial_name: str) -> int:
        """One past the highest index any directory of the trial ever claimed."""
        used = [used_index(n) for n in self.storage.listdir(self.layout.trial_dir(trial_name))]
        return max((i for i in used if i is not None), default=-1) + 1

    def read_rows(self, trial_name: str) -> list[dict[str, Any]]:
        """The trial's result rows; a torn last line is skipped."""
        path = self.layout.trial_file(trial_name, RESULT_LOG)
        try:
            text = self.storage.read_bytes(path).decode()
        except FileNotFoundError:
            return []
        return parse_rows(text, self.storage.uri(path))


def parse_rows(text: str, where: str) -> list[dict[str, Any]]:
    """Parse JSON lines, tolerating a torn (unterminated or unparsable) last line."""
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines) or all(not rest.strip() for rest in lines[number:]):
                break
            raise StorageError(f"{where}: line {number} is not valid JSON ({exc})") from exc
    return rows
