"""`Result` and `ResultGrid`: what a sweep returns, backed by the experiment's storage."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, cast

import pandas as pd

from prefect_tune.storage import (
    Checkpoint,
    ConfigError,
    ExperimentStore,
    TrialError,
    TrialOutcome,
    TrialStatus,
)
from prefect_tune.storage.records import flatten
from prefect_tune.storage.retention import best_of

Scope = Literal["last", "avg", "all", "last-5-avg", "last-10-avg"]


@dataclass(frozen=True, eq=False)
class Result:
    """One trial's result.

    Attributes:
        metrics: The last reported row.
        config: The trial's config.
        path: URI of the trial directory.
        checkpoint: The latest persisted checkpoint (not the best), or None.
        best_checkpoints: The kept best-N as (checkpoint, metrics), in report order.
        error: The trial's failure, or None.
    """

    outcome: TrialOutcome = field(repr=False)
    store: ExperimentStore = field(repr=False)

    @property
    def trial_id(self) -> str:
        return self.outcome.trial_id

    @property
    def status(self) -> TrialStatus:
        return self.outcome.status

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.outcome.last_metrics)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.outcome.config)

    @property
    def path(self) -> str:
        return self.store.trial_uri(self.outcome.trial_name)

    @property
    def checkpoint(self) -> Checkpoint | None:
        latest = self.outcome.latest_checkpoint
        return self.store.checkpoint(self.outcome.trial_name, latest.index) if latest else None

    @property
    def best_checkpoints(self) -> list[tuple[Checkpoint, dict[str, Any]]]:
        name = self.outcome.trial_name
        return [
            (self.store.checkpoint(name, r.index), dict(r.metrics))
            for r in self.outcome.best_checkpoints
        ]

    @property
    def error(self) -> TrialError | None:
        return TrialError(self.outcome) if self.outcome.status is TrialStatus.ERROR else None

    @cached_property
    def metrics_dataframe(self) -> pd.DataFrame:
        """Every reported row of the trial, read from its result.json."""
        rows = self.store.read_rows(self.outcome.trial_name)
        return pd.DataFrame([flatten(row) for row in rows])

    def __repr__(self) -> str:
        return (
            f"Result(trial={self.outcome.trial_name!r}, status={self.status.value}, "
            f"metrics={self.metrics!r})"
        )


class ResultGrid:
    """The results of every trial of one sweep, in trial order."""

    def __init__(
        self, results: Sequence[Result], experiment_path: str,
        metric: str | None = None, mode: str | None = None,
        ranking: tuple[str | None, str] = (None, "max"),
    ) -> None:
        """`ranking`: the checkpoint score attribute and order (None: by recency)."""
        self._results = list(results)
        self.experiment_path = experiment_path
        self._metric = metric
        self._mode = mode
        self._ranking = ranking

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    def __getitem__(self, index: int) -> Result:
        return self._results[index]

    def __repr__(self) -> str:
        return f"ResultGrid({len(self)} trials at {self.experiment_path!r})"

    @property
    def errors(self) -> list[TrialError]:
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        return sum(r.status is TrialStatus.TERMINATED for r in self._results)

    def get_best_result(
        self, metric: str | None = None, mode: str | None = None, scope: Scope = "last",
        filter_nan_and_inf: bool = True,
    ) -> Result:
        """The trial that is best by `metric` (default: TuneConfig's) over `scope`.

        scope: "last" (last value), "avg" (mean of all), "last-5-avg", "last-10-avg",
        or "all" (best value ever reported).
        """
        metric = metric or self._metric
        mode = mode or self._mode
        if not metric or mode not in ("min", "max"):
            raise ConfigError(
                f"get_best_result needs a metric and a mode of 'min' or 'max' (got "
                f"metric={metric!r}, mode={mode!r}); pass them or set TuneConfig(metric, mode)"
            )
        if scope not in ("last", "avg", "all", "last-5-avg", "last-10-avg"):
            raise ConfigError(
                f"scope={scope!r} is invalid: use last, avg, all, last-5-avg or last-10-avg"
            )
        scored = []
        for result in self._results:
            value = _scope_value(result, metric, mode, scope)
            if value is None or (filter_nan_and_inf and not math.isfinite(value)):
                continue
            scored.append((value if mode == "max" else -value, result))
        if not scored:
            raise ConfigError(
                f"no trial reported a usable value of {metric!r}; check the metric name "
                f"(reported: {sorted({k for r in self._results for k in flatten(r.metrics)})})"
            )
        return max(scored, key=lambda pair: pair[0])[1]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the experiment path, trial counts by status and, with a metric and
        mode, the best trial: its name, config, metric value and best checkpoint URI."""
        counts: dict[str, int] = {}
        for result in self._results:
            counts[result.status.value] = counts.get(result.status.value, 0) + 1
        out: dict[str, Any] = {"experiment_path": self.experiment_path, "trials": counts}
        try:
            best = self.get_best_result()
        except ConfigError:  # no metric, or no trial reported it
            return out
        checkpoint = self.best_checkpoint(best)
        out["best"] = {
            "trial": best.outcome.trial_name,
            "config": best.config,
            "metric": self._metric,
            "value": flatten(best.metrics).get(cast(str, self._metric)),
            "checkpoint": checkpoint.path if checkpoint else None,
        }
        return out

    def best_checkpoint(self, result: Result) -> Checkpoint | None:
        """`result`'s best kept checkpoint by the sweep's checkpoint ranking."""
        kept = best_of(result.outcome.checkpoints, *self._ranking, 1)
        return result.store.checkpoint(result.outcome.trial_name, kept[0].index) if kept \
            else None

    def get_dataframe(self) -> pd.DataFrame:
        """One row per trial: its last metrics plus config/... columns."""
        rows = []
        for result in self._results:
            row = {
                "trial_id": result.trial_id, "trial_name": result.outcome.trial_name,
                "status": result.status.value,
            }
            row.update(flatten(result.metrics))
            row.update({f"config/{k}": v for k, v in flatten(result.config).items()})
            rows.append(row)
        return pd.DataFrame(rows)


def _scope_value(result: Result, metric: str, mode: str, scope: str) -> float | None:
    if scope == "last":
        value = flatten(result.metrics).get(metric)
        return float(value) if isinstance(value, (int, float)) and _is_number(value) else None
    frame = result.metrics_dataframe
    if metric not in frame.columns:
        return None
    series = pd.to_numeric(frame[metric], errors="coerce").dropna()
    if series.empty:
        return None
    if scope == "all":
        return float(series.max() if mode == "max" else series.min())
    tail = {"avg": len(series), "last-5-avg": 5, "last-10-avg": 10}[scope]
    return float(series.tail(tail).mean())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
