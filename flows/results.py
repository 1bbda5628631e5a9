"""`Result` and `ResultGrid`: what a sweep returns, backed by the experiment's storage."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, cast

import pandas as pd

from prefect_tune.storage import (
    Checkpoint,
    ConfigError,
    ExperimentStore,
    NoResultError,
    Ranking,
    TrialDir,
    TrialError,
    TrialOutcome,
    TrialStatus,
)
from prefect_tune.storage.layout import PROGRESS
from prefect_tune.storage.ranking import best_by, value_of
from prefect_tune.storage.records import AUTO_KEYS, flatten

Scope = Literal["last", "avg", "all", "last-5-avg", "last-10-avg"]
#: The trial table's first and last columns; config/... and metrics go between.
LEADING = ("trial_id", "trial_name", "status")
TRAILING = ("best_score", "num_checkpoints", "best_checkpoint", "stopped_early", "error")


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
    def stopped_early(self) -> str | None:
        """Why a scheduler stopped the trial before its end (it is TERMINATED); None if
        it did not."""
        return self.outcome.stopped_early

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
    def trial(self) -> TrialDir:
        return self.store.trial(self.outcome.trial_name)

    @property
    def path(self) -> str:
        return self.trial.uri

    @property
    def checkpoint(self) -> Checkpoint | None:
        latest = self.outcome.latest_checkpoint
        return self.trial.checkpoint(latest.index) if latest else None

    @property
    def best_checkpoints(self) -> list[tuple[Checkpoint, dict[str, Any]]]:
        return [(self.trial.checkpoint(r.index), dict(r.metrics))
                for r in self.outcome.best_checkpoints]

    @property
    def error(self) -> TrialError | None:
        return TrialError(self.outcome) if self.outcome.status is TrialStatus.ERROR else None

    @cached_property
    def metrics_dataframe(self) -> pd.DataFrame:
        """Every reported row of the trial, read from its result.json (nested metrics
        flattened to "a/b" columns); from progress.csv when result.json is missing."""
        rows = self.trial.read_rows()
        if rows:
            return pd.DataFrame([flatten(row) for row in rows])
        try:
            data = self.store.storage.read_bytes(self.trial.file(PROGRESS))
        except FileNotFoundError:
            return pd.DataFrame()
        return pd.read_csv(io.BytesIO(data)) if data.strip() else pd.DataFrame()

    def get_best_checkpoint(self, metric: str, mode: Literal["min", "max"]) -> Checkpoint:
        """The kept checkpoint whose reported `metric` ("a/b" for nested) is best in
        `mode`; checkpoints whose value is missing, NaN or infinite never win.

        Raises:
            ConfigError: `mode` is not "min" or "max".
            NoResultError: the trial kept no checkpoint, or none with a usable value.
        """
        if mode not in ("min", "max"):
            raise ConfigError(f"mode={mode!r} is invalid: use 'min' or 'max'")
        kept = self.outcome.checkpoints
        if not kept:
            raise NoResultError(f"trial {self.outcome.trial_name} kept no checkpoint")
        best = best_by(((value_of(r.metrics, metric), r) for r in kept), mode)
        if best is None:
            reported = sorted({k for r in kept for k in flatten(r.metrics)})
            raise NoResultError(
                f"no checkpoint of trial {self.outcome.trial_name} reported a usable value "
                f"of {metric!r} (reported with its checkpoints: {reported})")
        return self.trial.checkpoint(best.index)

    def __repr__(self) -> str:
        """The trial, its status, the metrics it reported itself (not the fields
        prefect-tune fills in), its latest checkpoint and its error."""
        metrics = {k: v for k, v in self.metrics.items() if k not in AUTO_KEYS}
        error = f", error={self.outcome.error_summary!r}" if self.error else ""
        return (f"Result(trial={self.outcome.trial_name!r}, status={self.status.value}, "
                f"metrics={metrics!r}, checkpoint={self.checkpoint!r}{error})")


class ResultGrid:
    """The results of every trial of one sweep, in trial order; `metric` and `mode` are
    the sweep's (what `get_best_result` ranks by when given none)."""

    def __init__(
        self, results: Sequence[Result], experiment_path: str,
        metric: str | None = None, mode: Literal["min", "max"] | None = None,
        ranking: Ranking | None = None,
    ) -> None:
        """`ranking`: what ranks each trial's checkpoints (default: recency)."""
        self._results = list(results)
        self.experiment_path = experiment_path
        self.metric = metric
        self.mode = mode
        self._ranking = ranking or Ranking()

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

    @property
    def num_paused(self) -> int:
        """Trials a scheduler paused that this sweep did not resume (it was stopped)."""
        return sum(r.status is TrialStatus.PAUSED for r in self._results)

    @property
    def num_stopped_early(self) -> int:
        """Trials a scheduler stopped before their end (they are TERMINATED)."""
        return sum(r.stopped_early is not None for r in self._results)

    def get_best_result(
        self, metric: str | None = None, mode: str | None = None, scope: Scope = "last",
        filter_nan_and_inf: bool = True,
    ) -> Result:
        """The trial that is best by `metric` (default: TuneConfig's) in `mode` over
        `scope`: "last" (last value), "avg" (mean of all), "last-5-avg", "last-10-avg",
        or "all" (best value ever reported). As in Ray, a grid of one trial returns it
        when there is no metric to rank by.

        Raises:
            ConfigError: no metric or mode (in a grid of several trials), a bad scope.
            NoResultError: no trial reported a usable value of `metric` (NaN and
                infinities are none, unless `filter_nan_and_inf=False`).
        """
        metric = metric or self.metric
        mode = mode or self.mode
        if not metric and len(self._results) == 1:
            return self._results[0]
        if not metric or mode not in ("min", "max"):
            raise ConfigError(
                f"get_best_result needs a metric and a mode of 'min' or 'max' (got "
                f"metric={metric!r}, mode={mode!r}); pass them or set TuneConfig(metric, mode)"
            )
        if scope not in ("last", "avg", "all", "last-5-avg", "last-10-avg"):
            raise ConfigError(
                f"scope={scope!r} is invalid: use last, avg, all, last-5-avg or last-10-avg"
            )
        best = best_by(((_scope_value(r, metric, mode, scope), r) for r in self._results),
                       cast(Literal["min", "max"], mode), finite_only=filter_nan_and_inf)
        if best is None:
            nan = "are ignored: pass filter_nan_and_inf=False to rank them" \
                if filter_nan_and_inf else "rank last"
            reported = sorted({k for r in self._results for k in flatten(r.metrics)})
            raise NoResultError(
                f"no trial reported a usable value of {metric!r} (NaN and infinities "
                f"{nan}); check the metric name (reported: {reported})")
        return best

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the experiment path, trial counts by status and, with a metric and
        mode, the best trial: its name, config, metric value and best checkpoint URI."""
        counts: dict[str, int] = {}
        for result in self._results:
            counts[result.status.value] = counts.get(result.status.value, 0) + 1
        out: dict[str, Any] = {"experiment_path": self.experiment_path, "trials": counts}
        best = self.best_or_none()
        if best is None:
            return out
        checkpoint = self.best_checkpoint(best)
        out["best"] = {
            "trial": best.outcome.trial_name,
            "config": best.config,
            "metric": self.metric,
            "value": flatten(best.metrics).get(cast(str, self.metric)),
            "checkpoint": checkpoint.path if checkpoint else None,
        }
        return out

    def best_or_none(self) -> Result | None:
        """The best trial by the sweep's metric and mode; None without them, or when no
        trial reported a usable value."""
        if not self.metric or self.mode not in ("min", "max"):
            return None
        try:
            return self.get_best_result()
        except NoResultError:
            return None

    def best_checkpoint(self, result: Result) -> Checkpoint | None:
        """`result`'s best kept checkpoint by the sweep's checkpoint ranking."""
        best = self._ranking.best_checkpoint(result.outcome.checkpoints)
        return result.trial.checkpoint(best.index) if best else None

    def get_dataframe(self, filter_metric: str | None = None,
                      filter_mode: Literal["min", "max"] | None = None) -> pd.DataFrame:
        """The trial table, one row per trial, as results.csv, the results artifact and
        `prefect-tune export` have it: trial_id, trial_name, status, config/..., the last
        metrics (and training_iteration), best_score, num_checkpoints, best_checkpoint
        (its URI), stopped_early (why a scheduler stopped it) and error (the exception
        line). With `filter_metric` and `filter_mode` (as Ray's), each trial's metrics are
        those of its row that is best by that metric (NaN and infinities never win; a
        trial without a usable value keeps its last row); this reads every result.json.

        Raises:
            ConfigError: only one of `filter_metric` and `filter_mode`, or a bad mode.
        """
        if (filter_metric is None) != (filter_mode is None) or \
                filter_mode not in (None, "min", "max"):
            raise ConfigError(
                f"get_dataframe(filter_metric={filter_metric!r}, filter_mode="
                f"{filter_mode!r}): give both, with a mode of 'min' or 'max', or neither")
        rows = []
        for result in self._results:
            outcome = result.outcome
            best = self.best_checkpoint(result)
            shown = outcome.last_metrics
            if filter_metric is not None:
                shown = best_by(((value_of(row, filter_metric), row)
                                 for row in result.trial.read_rows()),
                                cast(Literal["min", "max"], filter_mode)) or shown
            metrics = {k: v for k, v in flatten(shown).items()
                       if k not in AUTO_KEYS or k == "training_iteration"}
            rows.append({
                "trial_id": outcome.trial_id,
                "trial_name": outcome.trial_name,
                "status": outcome.status.value,
                **{f"config/{k}": _cell(v) for k, v in flatten(outcome.config).items()},
                **{metric_column(k): _cell(v) for k, v in metrics.items()},
                "best_score": outcome.best_score,
                "num_checkpoints": len(outcome.checkpoints),
                "best_checkpoint": best.path if best else None,
                "stopped_early": outcome.stopped_early,
                "error": outcome.error_summary or None,
            })
        if not rows:
            return pd.DataFrame(columns=[*LEADING, *TRAILING])
        frame = pd.DataFrame(rows)
        middle = [c for c in frame.columns if c not in LEADING + TRAILING]
        return frame[[*LEADING, *middle, *TRAILING]]


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


def metric_column(name: str) -> str:
    """The trial table's column of metric `name`: the name itself, or "metric/<name>" for
    a name that is a fixed column or starts with config/ or metric/, so that no metric
    ever replaces a fixed value or another metric."""
    if name in LEADING + TRAILING or name.startswith(("config/", "metric/")):
        return f"metric/{name}"
    return name


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def describe(grid: ResultGrid) -> str:
    """The trial counts of `grid` in words: "4 trials: 3 terminated, 1 errored, 0
    stopped", then the paused ones and those a scheduler stopped early, if any."""
    counts = {s: sum(r.status is s for r in grid) for s in TrialStatus}
    paused, early = counts[TrialStatus.PAUSED], grid.num_stopped_early
    return (
        f"{len(grid)} trials: {counts[TrialStatus.TERMINATED]} terminated, "
        f"{counts[TrialStatus.ERROR]} errored, {counts[TrialStatus.STOPPED]} stopped"
        + (f", {paused} paused" if paused else "")
        + (f" ({early} stopped early by the scheduler)" if early else "")
    )
