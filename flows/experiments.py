"""Stored experiments read back: for `Tuner.restore`/`get_results` and the command line.

Everything here reads storage only (no Prefect API): an experiment is a directory
holding experiment.json, wherever it was copied to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from prefect_tune.flows.plan import stored_configs, stored_ranking
from prefect_tune.flows.results import Result, ResultGrid
from prefect_tune.storage import (
    ConfigError,
    ExperimentStore,
    Storage,
    TrialOutcome,
    TrialStatus,
    resolve_storage,
)
from prefect_tune.storage.layout import EXPERIMENT_STATE, PARAMS
from prefect_tune.storage.state import ExperimentRecord


@dataclass(frozen=True)
class Experiment:
    """A stored experiment, read back: its record, every trial's outcome, and when any of
    its files last changed."""

    store: ExperimentStore
    record: ExperimentRecord
    outcomes: tuple[TrialOutcome, ...]
    updated: datetime | None

    @property
    def statuses(self) -> Counter[str]:
        return Counter(o.status.value for o in self.outcomes)

    def grid(self) -> ResultGrid:
        tune = stored_configs(self.record)[0]
        return ResultGrid([Result(o, self.store) for o in self.outcomes], self.store.path,
                          tune.metric, tune.mode, stored_ranking(self.record))

    def frame(self) -> pd.DataFrame:
        """One row per trial, as results.csv has it."""
        return self.grid().get_dataframe()


def experiment_store(path: str, storage_options: Mapping[str, Any] | None = None
                     ) -> ExperimentStore:
    """The store of the experiment directory `path` (`<storage_path>/<name>`).

    Raises:
        ConfigError: `path` names no directory inside a storage.
    """
    parent, _, name = path.rstrip("/").rpartition("/") if isinstance(path, str) else ("", "", "")
    if not name or not parent or parent.endswith(":/"):
        raise ConfigError(
            f"path={path!r} is not an experiment directory; pass <storage_path>/<name>, the "
            "directory a sweep wrote"
        )
    return ExperimentStore(resolve_storage(parent, storage_options), name)


def read_record(store: ExperimentStore, path: str | None = None) -> ExperimentRecord:
    """The experiment's experiment.json.

    Raises:
        ConfigError: there is none (naming `path`, default the store's URI).
    """
    try:
        return store.read_experiment()
    except FileNotFoundError:
        raise ConfigError(
            f"no experiment at {path or store.path!r} ({store.path}/{EXPERIMENT_STATE} does "
            "not exist); pass the directory a sweep wrote: <storage_path>/<name>"
        ) from None


def open_experiment(path: str, storage_options: Mapping[str, Any] | None = None) -> Experiment:
    """Read the experiment at `path` (a directory holding experiment.json).

    Raises:
        ConfigError: there is no experiment at `path`.
    """
    return read_experiment(experiment_store(path, storage_options), path)


def read_experiment(
    store: ExperimentStore, path: str | None = None, *, scan: bool = True
) -> Experiment:
    """Every trial's outcome as stored now. With `scan`, one listing of the experiment
    also tells which trials without trial.json have started (RUNNING, not PENDING) and
    when any file last changed."""
    record = read_record(store, path)
    files = _files(store.storage, store.layout.root) if scan else {}
    outcomes = tuple(
        stored or TrialOutcome(
            spec.trial_id, spec.trial_name, spec.config,
            TrialStatus.RUNNING if store.trial(spec.trial_name).file(PARAMS) in files
            else TrialStatus.PENDING,
        )
        for spec, stored in zip(record.trials, store.read_trial_states(record.trials),
                                strict=True)
    )
    return Experiment(store, record, outcomes, max(files.values(), default=None))


def list_experiments(storage: Storage) -> Iterator[ExperimentStore]:
    """The experiments directly under `storage`, by name."""
    for name in sorted(storage.listdir(storage.root)):
        store = ExperimentStore(storage, name)
        if store.exists():
            yield store


def _files(storage: Storage, root: str) -> dict[str, datetime]:
    """Path -> modification time of every file of the experiment and its trial dirs
    (not inside checkpoints). One recursive listing: on object stores a depth limit would
    cost a request per directory instead."""
    depth = root.rstrip("/").count("/") + 2
    files = {}
    for path, info in storage.find(root).items():
        when = _mtime(info)
        if path.count("/") <= depth and when is not None:
            files[path] = when
    return files


def _mtime(info: Mapping[str, Any]) -> datetime | None:
    value = info.get("mtime", info.get("LastModified", info.get("updated")))
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
