"""`TrialDir`: one trial's directory: its checkpoints, result log, params and errors.

Contract:
- A checkpoint directory is committed once it holds the manifest; listings and reads
  ignore anything else, and an index is never reused.
- `result.json` is JSON lines; a torn last line (a killed writer) is skipped on read.
- `progress.csv` always has the union of all columns seen so far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_tune.storage.checkpoint import Checkpoint
from prefect_tune.storage.errors import StorageError
from prefect_tune.storage.filesystem import Storage, resolve_storage
from prefect_tune.storage.layout import (
    ERROR_FILE,
    MANIFEST,
    PARAMS,
    PERTURBATIONS,
    RESULT_LOG,
    ExperimentLayout,
    checkpoint_index,
    is_leftover,
    staging_trial_dir,
    used_index,
)
from prefect_tune.storage.ranking import Ranking, best_by
from prefect_tune.storage.records import (
    AUTO_KEYS,
    CheckpointRecord,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
)
from prefect_tune.storage.result_log import ResultLog
from prefect_tune.storage.sync import Logger, StagedTrial, SyncConfig


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


@dataclass(frozen=True)
class TrialDir:
    """The directory of trial `name` in experiment `layout`, in `storage`."""

    storage: Storage
    layout: ExperimentLayout
    name: str

    @property
    def root(self) -> str:
        return self.layout.trial_dir(self.name)

    @property
    def uri(self) -> str:
        return self.storage.uri(self.root)

    def file(self, file_name: str) -> str:
        return self.layout.trial_file(self.name, file_name)

    def checkpoint(self, index: int) -> Checkpoint:
        return self.storage.checkpoint(self.layout.checkpoint_dir(self.name, index))

    def write_params(self, config: Mapping[str, Any]) -> None:
        data = json.dumps(config, sort_keys=True, indent=2).encode()
        self.storage.write_bytes(self.file(PARAMS), data, durable=False)

    def append_error(self, text: str) -> None:
        """Append one failure record to the trial's error.txt."""
        path = self.file(ERROR_FILE)
        previous = self.storage.read_bytes(path).decode() if self.storage.exists(path) else ""
        count = previous.count("Failure # ") + 1
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        entry = f"Failure # {count} (occurred at {stamp})\n{text.rstrip()}\n\n"
        self.storage.write_bytes(path, (previous + entry).encode())

    def clear_history(self) -> None:
        """Forget the trial's results and errors, so that it restarts from scratch; its
        checkpoints, referenced by nothing after this, go when it resumes."""
        self.open_log().close()
        self.storage.remove(self.file(ERROR_FILE))

    def open_log(self, rows: Iterable[Mapping[str, Any]] = (), *,
                 staged: StagedTrial | None = None, tensorboard: bool = False) -> ResultLog:
        """The trial's result log, rewritten to hold exactly `rows`; in the staging
        directory of `staged`, if given."""
        if staged is not None:
            return ResultLog(resolve_storage(staged.source), staged.source, rows,
                             tensorboard=tensorboard)
        return ResultLog(self.storage, self.root, rows, tensorboard=tensorboard)

    def stage(self, sync: SyncConfig, local_dir: str | None, logger: Logger
              ) -> StagedTrial | None:
        """A fresh staging directory for one attempt of the trial, if `sync` has a
        syncer."""
        if not sync.stages:
            return None
        experiment = self.layout.root.rstrip("/").rsplit("/", 1)[-1]
        source = staging_trial_dir(local_dir, experiment, self.name)
        return StagedTrial(sync, self.storage, source, self.root, logger)

    def resume_point(self, *, clean: bool = True) -> ResumePoint:
        """Read where the trial resumes, and remove what nothing refers to.

        The resume checkpoint is the latest one that is both committed and recorded in
        result.json (a checkpoint committed just before a crash, without its row, is
        dropped). Rows reported after it are discarded, so a resumed trial records every
        training_iteration exactly once. With `clean`, uncommitted and unrecorded
        checkpoint directories are deleted (only the attempt that resumes may do that: the
        next index counts them first, so indexes are never reused).
        """
        rows = self.read_rows()
        cut, records = _recorded(rows, set(self.committed_indexes()))
        referenced = [r.index for r in _recorded(rows, None)[1]]
        next_index = max(self.next_index(), max(referenced, default=-1) + 1)
        if clean:
            self._discard_unreferenced({r.index for r in records})
        return ResumePoint(tuple(rows[:cut]), records, next_index)

    def recover(self, spec: TrialSpec, rows: list[dict[str, Any]], ranking: Ranking,
                num_to_keep: int | None) -> TrialOutcome:
        """The outcome of a trial whose first attempt died before it wrote trial.json:
        RUNNING, with its result rows and the committed checkpoints they record, kept and
        ranked as the trial would have."""
        records = _recorded(rows, set(self.committed_indexes()))[1]
        kept, best = ranking.retain(records, num_to_keep)
        scores = [ranking.score(row) for row in rows]
        return TrialOutcome(
            spec.trial_id, spec.trial_name, spec.config, TrialStatus.RUNNING,
            last_metrics=rows[-1] if rows else {}, num_reports=len(rows), checkpoints=kept,
            best_checkpoints=best, best_score=best_by(((s, s) for s in scores), ranking.order,
                                                      finite_only=False),
        )

    def _discard_unreferenced(self, referenced: set[int]) -> None:
        for name in self.storage.listdir(self.root):
            index = used_index(name)
            if index is None and is_leftover(name):
                self.storage.remove(f"{self.root}/{name}")
            if index is None or index in referenced:
                continue
            path = f"{self.root}/{name}"
            if checkpoint_index(name) is not None and self.storage.exists(f"{path}/{MANIFEST}"):
                self.delete_checkpoint(index)
            else:
                self.storage.remove(path)

    def commit_checkpoint(self, index: int, source: str) -> None:
        """Publish local directory `source` as checkpoint `index` of the trial."""
        self.storage.commit_directory(source, self.layout.staging_dir(self.name, index),
                                      self.layout.checkpoint_dir(self.name, index))

    def replace_checkpoint(self, index: int, source: str) -> None:
        """Make checkpoint `index` hold local directory `source` instead (population-based
        training: the trial goes on from another's state). In between it is not
        committed: a crash leaves the trial to resume from an earlier one, never a torn
        one."""
        self.delete_checkpoint(index)
        self.commit_checkpoint(index, source)

    def append_perturbation(self, entry: Mapping[str, Any]) -> None:
        """Add one exploit (time, donor, its checkpoint, the new config) to the trial's
        history."""
        path = self.file(PERTURBATIONS)
        previous = self.storage.read_bytes(path) if self.storage.exists(path) else b""
        line = json.dumps(dict(entry), sort_keys=True).encode() + b"\n"
        self.storage.write_bytes(path, previous + line)

    def read_perturbations(self) -> list[dict[str, Any]]:
        """The trial's exploits, oldest first."""
        path = self.file(PERTURBATIONS)
        if not self.storage.exists(path):
            return []
        return parse_rows(self.storage.read_bytes(path).decode(), self.storage.uri(path))

    def delete_checkpoint(self, index: int) -> None:
        """Delete checkpoint `index`; after a partial failure, calling again finishes it."""
        self.storage.delete_directory(self.layout.checkpoint_dir(self.name, index),
                                      self.layout.trash_dir(self.name, index))

    def committed_indexes(self) -> list[int]:
        """Indexes of the trial's committed checkpoints, ascending."""
        found = []
        for name in self.storage.listdir(self.root):
            index = checkpoint_index(name)
            if index is not None and self.storage.exists(f"{self.root}/{name}/{MANIFEST}"):
                found.append(index)
        return sorted(found)

    def next_index(self) -> int:
        """One past the highest index any directory of the trial ever claimed."""
        used = [used_index(n) for n in self.storage.listdir(self.root)]
        return max((i for i in used if i is not None), default=-1) + 1

    def read_rows(self) -> list[dict[str, Any]]:
        """The trial's result rows; a torn last line is skipped."""
        path = self.file(RESULT_LOG)
        try:
            text = self.storage.read_bytes(path).decode()
        except FileNotFoundError:
            return []
        return parse_rows(text, self.storage.uri(path))


def read_new_rows(storage: Storage, path: str, offset: int
                  ) -> tuple[list[dict[str, Any]], int]:
    """The complete rows of result log `path` past byte `offset` (the end of a row read
    before), and the offset after them. A log rewritten since (a retry cut its rows) is
    read again from the start: the byte before `offset` is then no line end."""
    try:
        data = storage.read_bytes(path, max(offset - 1, 0))
    except FileNotFoundError:
        return [], 0
    except StorageError:
        if not offset:
            raise
        data = b""  # past the end of a log rewritten shorter (object stores refuse it)
    if offset and not data.startswith(b"\n"):
        data, offset = storage.read_bytes(path), 0
    elif offset:
        data = data[1:]
    end = data.rfind(b"\n") + 1
    return parse_rows(data[:end].decode(), storage.uri(path)), offset + end


def _recorded(rows: list[dict[str, Any]], committed: set[int] | None
              ) -> tuple[int, tuple[CheckpointRecord, ...]]:
    """The checkpoints `rows` record (only those in `committed`, unless None) and how many
    rows lead up to the last of them."""
    cut, records = 0, []
    for position, row in enumerate(rows):
        index = checkpoint_index(str(row.get("checkpoint_dir_name") or ""))
        if index is not None and (committed is None or index in committed):
            cut = position + 1
            records.append(CheckpointRecord(
                index, {k: v for k, v in row.items() if k not in AUTO_KEYS}
            ))
    return cut, tuple(records)


def parse_rows(text: str, where: str) -> list[dict[str, Any]]:
    """Parse JSON lines, tolerating a torn (unterminated or unparsable) last line."""
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) or all(not rest.strip() for rest in lines[number:]):
                break
            raise StorageError(f"{where}: line {number} is not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise StorageError(
                f"{where}: line {number} is {type(row).__name__}, not a result row (a JSON "
                "object); the file is damaged"
            )
        rows.append(row)
    return rows
