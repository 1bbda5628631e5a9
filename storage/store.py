"""`ExperimentStore`: one experiment directory: its state files and its trials.

The experiment's own files (experiment.json, the storage marker, results tables) and each
trial's trial.json are written here; everything else inside a trial's directory is the
trial's `TrialDir`. Storage options never appear in anything written here.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace

from prefect_tune.storage.board import Board
from prefect_tune.storage.errors import StorageError, StorageNotShared
from prefect_tune.storage.filesystem import Storage
from prefect_tune.storage.layout import (
    EXPERIMENT_STATE,
    LEASE_DIR,
    RESULT_LOG,
    STORAGE_MARKER,
    TRIAL_STATE,
    TRIALS_DIR,
    ExperimentLayout,
    token,
)
from prefect_tune.storage.lease import Lease, Logger
from prefect_tune.storage.ranking import Ranking
from prefect_tune.storage.records import TrialOutcome, TrialSpec
from prefect_tune.storage.state import (
    ExperimentRecord,
    outcome_from_json,
    outcome_to_json,
    spec_from_json,
    spec_to_json,
)
from prefect_tune.storage.trial_dir import TrialDir, parse_rows


@dataclass(frozen=True)
class StorageMarker:
    """What the sweep wrote into its storage for trials to read back."""

    token: str
    host: str


class ExperimentStore:
    """Reads and writes one experiment directory `<storage>/<name>`."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name
        self.layout = ExperimentLayout(storage.join(name))

    def __repr__(self) -> str:
        return f"ExperimentStore({self.path!r})"

    @property
    def path(self) -> str:
        """URI of the experiment directory."""
        return self.storage.uri(self.layout.root)

    def probe(self) -> None:
        """Check that the experiment directory can be written, read and deleted from."""
        self.storage.probe(self.layout.probe_file())

    def remove_leftovers(self) -> None:
        """Remove the temp files killed writers left in the experiment directory (call
        it holding the lease: then no other run is writing them)."""
        self.storage.remove_leftovers(self.layout.root)

    def lease(self, run: str | None, logger: Logger) -> Lease:
        """Take the experiment's lease for run `run` (a flow run id).

        Raises:
            ExperimentBusy: another live run holds it.
        """
        return Lease.take(self.storage, self.layout.join(LEASE_DIR), run, logger)

    @property
    def board(self) -> Board:
        """The scheduler records its trials share."""
        return Board(self.storage, self.layout)

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

    def trial(self, trial_name: str) -> TrialDir:
        """The directory of trial `trial_name`."""
        return TrialDir(self.storage, self.layout, trial_name)

    def exists(self) -> bool:
        """Whether an experiment was created here (its experiment.json exists)."""
        return self.storage.exists(self.layout.join(EXPERIMENT_STATE))

    def create(self, record: ExperimentRecord) -> None:
        """Write the experiment's state file; its trials start out PENDING."""
        self.storage.write_bytes(self.layout.join(EXPERIMENT_STATE), record.to_json())

    def add_trial(self, sequence: int, spec: TrialSpec) -> None:
        """Record the `sequence`-th trial of the search (numbered after experiment.json's
        own), before it starts: one small file, written once.

        Raises:
            StorageError: that trial is recorded already (another run of the experiment
                is searching too).
        """
        path = self.layout.trial_entry(sequence)
        if not self.storage.create(path, spec_to_json(spec)):
            raise StorageError(f"{self.storage.uri(path)} exists already: another run is "
                               "adding trials to this experiment")

    def read_experiment(self) -> ExperimentRecord:
        """The experiment's state file, with every trial the search added since.

        Raises:
            FileNotFoundError: there is no experiment here.
            StorageError: a file is not a state file this version reads.
        """
        path = self.layout.join(EXPERIMENT_STATE)
        record = ExperimentRecord.from_json(self.storage.read_bytes(path),
                                            self.storage.uri(path))
        directory = self.layout.join(TRIALS_DIR)
        names = sorted(n for n in self.storage.listdir(directory) if n.endswith(".json"))
        paths = [f"{directory}/{name}" for name in names]
        found = self.storage.read_many(paths)
        added = [spec_from_json(found[p], self.storage.uri(p)) for p in paths if p in found]
        return replace(record, trials=record.trials + tuple(added))

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
        found = self.storage.read_many(paths)
        return [
            outcome_from_json(found[path], spec, self.storage.uri(path)) if found.get(path)
            else None
            for path, spec in zip(paths, specs, strict=True)
        ]

    def read_outcomes(self, specs: Sequence[TrialSpec], ranking: Ranking,
                      num_to_keep: int | None) -> list[TrialOutcome | None]:
        """Every trial's outcome: its trial.json, or for a trial whose first attempt died
        before writing one, what its result rows and checkpoints show (RUNNING); None for
        a trial that never reported."""
        outcomes = self.read_trial_states(specs)
        missing = [(i, self.trial(s.trial_name)) for i, s in enumerate(specs)
                   if outcomes[i] is None]
        logs = self.storage.read_many([trial.file(RESULT_LOG) for _, trial in missing])
        for i, trial in missing:
            path = trial.file(RESULT_LOG)
            rows = parse_rows(logs[path].decode(), self.storage.uri(path)) if path in logs else []
            if rows:
                outcomes[i] = trial.recover(specs[i], rows, ranking, num_to_keep)
        return outcomes

    def write_file(self, name: str, data: bytes) -> None:
        """Atomically replace the experiment-level file `name`."""
        self.storage.write_bytes(self.layout.join(name), data)
