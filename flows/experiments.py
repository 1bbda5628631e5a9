"""Stored experiments read back: for `Tuner.restore`/`get_results` and the command line.

Everything here reads storage only (no Prefect API): an experiment is a directory
holding experiment.json, wherever it was copied to.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from prefect_tune.flows.config import stored_configs, stored_ranking
from prefect_tune.flows.results import Result, ResultGrid
from prefect_tune.storage import (
    ConfigError,
    ExperimentStore,
    Storage,
    TrialOutcome,
    TrialStatus,
    resolve_storage,
)
from prefect_tune.storage.layout import EXPERIMENT_STATE, MANIFEST, PARAMS
from prefect_tune.storage.state import ExperimentRecord


@dataclass(frozen=True)
class Experiment:
    """A stored experiment, read back: its record, every trial's outcome, when any of its
    files last changed, and the URIs of recorded checkpoints that are gone from storage
    (deleted by hand or by a lifecycle rule; the outcomes no longer list them)."""

    store: ExperimentStore
    record: ExperimentRecord
    outcomes: tuple[TrialOutcome, ...]
    updated: datetime | None
    missing: tuple[str, ...] = ()

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


def experiment_store(path: str | os.PathLike[str],
                     storage_options: Mapping[str, Any] | None = None) -> ExperimentStore:
    """The store of the experiment directory `path` (`<storage_path>/<name>`; a local
    path may be relative).

    Raises:
        ConfigError: `path` names no directory inside a storage.
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
    if text and "://" not in text and "::" not in text:
        text = os.path.abspath(os.path.expanduser(text))
    parent, _, name = text.rstrip("/").rpartition("/")
    if not name or not parent or parent.endswith(":/"):
        raise ConfigError(
            f"path={path!r} is not an experiment directory; pass <storage_path>/<name>, the "
            "directory a sweep wrote"
        )
    return ExperimentStore(resolve_storage(parent, storage_options), name)


def read_record(store: ExperimentStore, path: str | os.PathLike[str] | None = None
                ) -> ExperimentRecord:
    """The experiment's experiment.json.

    Raises:
        ConfigError: there is none (naming `path`, default the store's URI).
    """
    try:
        return store.read_experiment()
    except FileNotFoundError:
        where = os.fspath(path) if path else store.path
        inside = [e.name for e in list_experiments(store.storage.at(store.layout.root))]
        if inside:
            shown = ", ".join(inside[:3]) + (", ..." if len(inside) > 3 else "")
            raise ConfigError(
                f"{where} is a storage root with {len(inside)} experiments ({shown}), not "
                f"an experiment: list them with prefect-tune ls {where}, or pass one, "
                f"{where.rstrip('/')}/<name>") from None
        raise ConfigError(
            f"no experiment at {where!r} ({store.path}/{EXPERIMENT_STATE} does not "
            "exist); pass the directory a sweep wrote: <storage_path>/<name>"
        ) from None


def open_experiment(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Experiment:
    """Read the experiment at `path` (a directory holding experiment.json).

    Raises:
        ConfigError: there is no experiment at `path`.
    """
    return read_experiment(experiment_store(path, storage_options), path)


def read_experiment(store: ExperimentStore, path: str | os.PathLike[str] | None = None
                    ) -> Experiment:
    """Every trial's outcome as stored now, from one listing of the experiment (which also
    tells which trials without trial.json have started, RUNNING rather than PENDING, and
    which recorded checkpoints are gone: those are dropped from the outcomes, logged as a
    warning and listed in `missing`)."""
    record = read_record(store, path)
    checkpoints = stored_configs(record)[1]
    files = _files(store.storage, store.layout.root)
    stored = store.read_outcomes(record.trials, stored_ranking(record), checkpoints.num_to_keep)
    outcomes, missing = [], []
    for spec, outcome in zip(record.trials, stored, strict=True):
        trial = store.trial(spec.trial_name)
        if outcome is None:
            started = trial.file(PARAMS) in files
            outcome = TrialOutcome(spec.trial_id, spec.trial_name, spec.config,
                                   TrialStatus.RUNNING if started else TrialStatus.PENDING,
                                   attempts=int(started))
        gone = [r for r in outcome.checkpoints
                if f"{trial.root}/{r.dir_name}/{MANIFEST}" not in files]
        if gone:
            missing += [trial.checkpoint(r.index).path for r in gone]
            outcome = replace(
                outcome, checkpoints=tuple(r for r in outcome.checkpoints if r not in gone),
                best_checkpoints=tuple(r for r in outcome.best_checkpoints if r not in gone),
            )
        outcomes.append(outcome)
    if missing:
        logging.getLogger("prefect_tune").warning(
            "%d recorded checkpoints of %s are gone from storage (deleted by hand or by a "
            "lifecycle rule): %s", len(missing), store.path, ", ".join(missing),
        )
    return Experiment(store, record, tuple(outcomes), max(files.values(), default=None),
                      tuple(missing))


def list_experiments(storage: Storage) -> Iterator[ExperimentStore]:
    """The experiments directly under `storage`, by name."""
    for name in sorted(storage.listdir(storage.root)):
        store = ExperimentStore(storage, name)
        if store.exists():
            yield store


def _files(storage: Storage, root: str) -> dict[str, datetime]:
    """Path -> modification time of every file of the experiment and its trial dirs, and
    of the checkpoint manifests. One recursive listing: on object stores a depth limit
    would cost a request per directory instead."""
    depth = root.rstrip("/").count("/") + 2
    files = {}
    for path, info in storage.find(root).items():
        if path.count("/") <= depth or path.endswith(f"/{MANIFEST}"):
            files[path] = _mtime(info) or datetime.fromtimestamp(0, tz=UTC)
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
