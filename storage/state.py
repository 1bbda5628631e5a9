"""Experiment state: what a restore reads, as plain JSON records.

Two kinds of file, each replaced atomically and never appended to:
- `experiment.json`, written once when the experiment is created: the trainable's name,
  the search (seed, search space, every sampled config) and the settings to restore.
- `<trial>/trial.json`, written by the trial at each status change: its outcome so far.

So the bytes written per trial event do not depend on the number of trials, and every
path stored is relative to the experiment directory (checkpoint indexes, trial names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect_tune.storage.errors import StorageError
from prefect_tune.storage.records import CheckpointRecord, TrialOutcome, TrialSpec, TrialStatus

#: Bumped when a state file changes incompatibly; older readers refuse newer files.
STATE_FORMAT = 1


@dataclass(frozen=True)
class ExperimentRecord:
    """How an experiment was created: enough to restore it from its directory alone.

    `tune` and `run` hold the non-secret settings as plain JSON (storage options never).
    """

    trainable: str
    seed: int
    param_space: Mapping[str, Any]
    trials: tuple[TrialSpec, ...]
    tune: Mapping[str, Any]
    run: Mapping[str, Any]

    def to_json(self) -> bytes:
        return _dump({
            "format": STATE_FORMAT,
            "trainable": self.trainable,
            "search": {"seed": self.seed, "param_space": self.param_space},
            "tune": self.tune,
            "run": self.run,
            "trials": [
                {"trial_id": t.trial_id, "trial_name": t.trial_name, "config": t.config}
                for t in self.trials
            ],
        })

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ExperimentRecord:
        raw = _load(data, where)
        try:
            return cls(
                trainable=raw["trainable"],
                seed=raw["search"]["seed"],
                param_space=raw["search"]["param_space"],
                trials=tuple(
                    TrialSpec(t["trial_id"], t["trial_name"], t["config"]) for t in raw["trials"]
                ),
                tune=raw["tune"],
                run=raw["run"],
            )
        except (KeyError, TypeError) as exc:
            raise StorageError(f"{where} is not an experiment state file: missing {exc}") from exc


def outcome_to_json(outcome: TrialOutcome) -> bytes:
    """The trial state file for `outcome` (its config lives in experiment.json)."""
    def records(records: tuple[CheckpointRecord, ...]) -> list[dict[str, Any]]:
        return [{"index": r.index, "metrics": r.metrics} for r in records]

    return json.dumps({
        "format": STATE_FORMAT,
        "trial_id": outcome.trial_id,
        "trial_name": outcome.trial_name,
        "status": outcome.status.value,
        "attempts": outcome.attempts,
        "num_reports": outcome.num_reports,
        "last_metrics": outcome.last_metrics,
        "best_score": outcome.best_score,
        "checkpoints": records(outcome.checkpoints),
        "best_checkpoints": records(outcome.best_checkpoints),
        "error": outcome.error,
    }, indent=1).encode()


def outcome_from_json(data: bytes, spec: TrialSpec, where: str) -> TrialOutcome:
    raw = _load(data, where)
    try:
        return TrialOutcome(
            trial_id=spec.trial_id,
            trial_name=spec.trial_name,
            config=spec.config,
            status=TrialStatus(raw["status"]),
            last_metrics=raw["last_metrics"],
            num_reports=raw["num_reports"],
            checkpoints=_records(raw["checkpoints"]),
            best_checkpoints=_records(raw["best_checkpoints"]),
            best_score=raw["best_score"],
            error=raw["error"],
            attempts=raw["attempts"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{where} is not a trial state file: {exc!r}") from exc


def _records(raw: list[dict[str, Any]]) -> tuple[CheckpointRecord, ...]:
    return tuple(CheckpointRecord(int(r["index"]), r["metrics"]) for r in raw)


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, indent=1).encode()


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"{where} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise StorageError(f"{where} is not a state file: expected a JSON object")
    version = raw.get("format")
    if version != STATE_FORMAT:
        raise StorageError(
            f"{where} has state format {version!r}; this prefect-tune reads format "
            f"{STATE_FORMAT}: use the prefect-tune version that wrote it"
        )
    return raw
