"""Experiment state: what a restore reads, as plain JSON records.

Three kinds of file, each written atomically and never appended to:
- `experiment.json`, written once when the experiment is created: the trainable's name,
  the search (seed, search space, trial id prefix) and the settings to restore.
- `.trials/<n>.json`, written once per trial as the search adds it, before it starts:
  its id, name and config (experiments of older versions list them in experiment.json).
- `<trial>/trial.json`, written by the trial at each status change: its outcome so far.

So the bytes written per trial event do not depend on the number of trials, and every
path stored is relative to the experiment directory (checkpoint indexes, trial names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    #: What the ids of the trials the search adds begin with.
    trial_prefix: str = ""
    #: The URI it was read from, for error messages ("" for a new one).
    where: str = field(default="", compare=False)

    def to_json(self) -> bytes:
        """Keys in the order given, so that configs keep their search space's order."""
        return json.dumps({
            "format": STATE_FORMAT,
            "trainable": self.trainable,
            "search": {"seed": self.seed, "param_space": self.param_space,
                       "trial_prefix": self.trial_prefix},
            "tune": self.tune,
            "run": self.run,
            "trials": [
                {"trial_id": t.trial_id, "trial_name": t.trial_name, "config": t.config}
                for t in self.trials
            ],
        }, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ExperimentRecord:
        raw = _load(data, where)
        try:
            record = cls(
                trainable=raw["trainable"],
                seed=raw["search"]["seed"],
                param_space=raw["search"]["param_space"],
                trials=tuple(
                    TrialSpec(t["trial_id"], t["trial_name"], t["config"]) for t in raw["trials"]
                ),
                tune=raw["tune"],
                run=raw["run"],
                trial_prefix=str(raw["search"].get("trial_prefix", "")),
                where=where,
            )
        except (KeyError, TypeError) as exc:
            raise StorageError(f"{where} is not an experiment state file: missing {exc}") from exc
        for name in ("tune", "run", "param_space"):
            if not isinstance(getattr(record, name), dict):
                raise StorageError(f"{where}: {name} is not an object; the file is damaged")
        if not all(isinstance(t.config, dict) for t in record.trials):
            raise StorageError(f"{where}: a trial's config is not an object; the file is "
                               "damaged")
        return record


def spec_to_json(spec: TrialSpec) -> bytes:
    return json.dumps({"format": STATE_FORMAT, "trial_id": spec.trial_id,
                       "trial_name": spec.trial_name, "config": spec.config}).encode()


def spec_from_json(data: bytes, where: str) -> TrialSpec:
    """The trial a `.trials/<n>.json` file records.

    Raises:
        StorageError: the file is not one, naming it.
    """
    raw = _load(data, where)
    return TrialSpec(_field(raw, "trial_id", str, where),
                     _field(raw, "trial_name", str, where), _field(raw, "config", dict, where))


def outcome_to_json(outcome: TrialOutcome) -> bytes:
    """The trial state file for `outcome` (with its config: population-based training
    changes it; experiment.json keeps the one it was sampled with)."""
    def records(records: tuple[CheckpointRecord, ...]) -> list[dict[str, Any]]:
        return [{"index": r.index, "metrics": r.metrics} for r in records]

    return json.dumps({
        "format": STATE_FORMAT,
        "trial_id": outcome.trial_id,
        "trial_name": outcome.trial_name,
        "config": outcome.config,
        "status": outcome.status.value,
        "attempts": outcome.attempts,
        "num_reports": outcome.num_reports,
        "last_metrics": outcome.last_metrics,
        "best_score": outcome.best_score,
        "checkpoints": records(outcome.checkpoints),
        "best_checkpoints": records(outcome.best_checkpoints),
        "error": outcome.error,
        "stopped_early": outcome.stopped_early,
    }, indent=1).encode()


def outcome_from_json(data: bytes, spec: TrialSpec, where: str) -> TrialOutcome:
    """The outcome a trial state file holds.

    Raises:
        StorageError: the file is not one, naming the file and the field that is wrong.
    """
    raw = _load(data, where)
    try:
        status = TrialStatus(_field(raw, "status", str, where))
    except ValueError:
        raise StorageError(f"{where}: status {raw['status']!r} is not a trial status; the "
                           "file is damaged") from None
    best_score = raw.get("best_score")
    if best_score is not None and not isinstance(best_score, (int, float)):
        raise StorageError(f"{where}: best_score is {best_score!r}, not a number")
    error, early, config = raw.get("error"), raw.get("stopped_early"), raw.get("config")
    return TrialOutcome(
        trial_id=spec.trial_id,
        trial_name=spec.trial_name,
        config=config if isinstance(config, dict) else spec.config,  # PBT changes it
        status=status,
        last_metrics=_field(raw, "last_metrics", dict, where),
        num_reports=_field(raw, "num_reports", int, where),
        checkpoints=_records(raw, "checkpoints", where),
        best_checkpoints=_records(raw, "best_checkpoints", where),
        best_score=best_score,
        error=error if isinstance(error, str) else None,
        attempts=_field(raw, "attempts", int, where),
        stopped_early=early if isinstance(early, str) else None,
    )


def _field(raw: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """`raw[name]`, which must be a `kind`; else StorageError naming the file and field."""
    if name not in raw:
        raise StorageError(f"{where} lacks the field {name!r}; the file is damaged")
    value = raw[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = {dict: "an object", list: "a list", int: "an integer", str: "a string"}
        raise StorageError(
            f"{where}: {name} is {type(value).__name__} {value!r:.60}, expected "
            f"{expected[kind]}; the file is damaged"
        )
    return value


def _records(raw: Mapping[str, Any], name: str, where: str) -> tuple[CheckpointRecord, ...]:
    records = []
    for item in _field(raw, name, list, where):
        if not (isinstance(item, dict) and isinstance(item.get("index"), int)
                and isinstance(item.get("metrics"), dict)):
            raise StorageError(f"{where}: an entry of {name} is not a checkpoint record "
                               f"({item!r:.60}); the file is damaged")
        records.append(CheckpointRecord(item["index"], item["metrics"]))
    return tuple(records)


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
