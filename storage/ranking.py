"""What "best" means, for checkpoints and for trials: pure functions, no I/O.

A trial's checkpoints are ranked by `CheckpointConfig.checkpoint_score_attribute` when it
is set, else by the sweep's metric and mode, else by recency. That one rule decides which
checkpoints retention keeps, each trial's best checkpoint and best score, and the best
checkpoint that results.csv, `ResultGrid` and the command line show. Trials are ranked by
the sweep's metric; NaN and missing values never win.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from prefect_tune.storage.config import CheckpointConfig
from prefect_tune.storage.errors import MetricError
from prefect_tune.storage.records import CheckpointRecord, flatten

T = TypeVar("T")
Order = Literal["min", "max"]


def score_of(metrics: Mapping[str, Any], attribute: str) -> float | None:
    """The numeric value of `attribute` ("a/b" for nested) in `metrics`, None if absent.

    Raises:
        MetricError: the value is present but not a number.
    """
    flat = flatten(metrics)
    if attribute not in flat:
        return None
    value = flat[attribute]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricError(
            f"score attribute {attribute!r} is {value!r}, not a number; report a number"
        )
    try:
        return float(value)
    except OverflowError:
        raise MetricError(
            f"score attribute {attribute!r} is an integer too large for a float "
            f"({len(str(value))} digits); report a number below 1.8e308"
        ) from None


def value_of(metrics: Mapping[str, Any] | None, metric: str | None) -> float | None:
    """The finite numeric value of `metric` ("a/b" for nested) in `metrics`; None if it
    is missing, not a number, NaN or infinite (for watching, never raises)."""
    value = flatten(metrics).get(metric) if metrics and metric else None
    if isinstance(value, int | float) and not isinstance(value, bool) and \
            math.isfinite(value):
        return float(value)
    return None


def rank_key(score: float | None, order: str) -> tuple[bool, float]:
    """Sort key where larger is better; NaN and missing rank below every real score."""
    if score is None or math.isnan(score):
        return (False, 0.0)
    return (True, score if order == "max" else -score)


@dataclass(frozen=True)
class Ranking:
    """How a trial's checkpoints rank: by `attribute` in `order`, or by recency when
    `attribute` is None. `required`: every checkpoint must report the attribute (the user
    named it in CheckpointConfig); a ranking taken from the sweep's metric is lenient."""

    attribute: str | None = None
    order: Order = "max"
    required: bool = False

    @classmethod
    def of(cls, checkpoints: CheckpointConfig, metric: str | None = None,
           mode: Order | None = None) -> Ranking:
        """checkpoint_score_attribute if set, else the sweep's metric, else recency."""
        if checkpoints.checkpoint_score_attribute:
            return cls(checkpoints.checkpoint_score_attribute,
                       checkpoints.checkpoint_score_order, required=True)
        if metric:
            return cls(metric, mode or "max")
        return cls()

    def score(self, metrics: Mapping[str, Any]) -> float | None:
        """The ranking score in `metrics` (None without an attribute or value).

        Raises:
            MetricError: the value is not a number.
        """
        return score_of(metrics, self.attribute) if self.attribute else None

    def better(self, score: float | None, than: float | None) -> bool:
        """Whether `score` ranks above `than` (ties do not)."""
        return rank_key(score, self.order) > rank_key(than, self.order)

    def best_checkpoints(
        self, records: Iterable[CheckpointRecord], count: int
    ) -> tuple[CheckpointRecord, ...]:
        """The `count` best records in report order; ties go to the newer."""
        if self.attribute is None:
            ranked = sorted(records, key=lambda r: r.index)
        else:
            ranked = sorted(records, key=lambda r: (rank_key(self.score(r.metrics), self.order),
                                                    r.index))
        chosen = ranked[-count:] if count else []
        return tuple(sorted(chosen, key=lambda r: r.index))

    def best_checkpoint(self, records: Iterable[CheckpointRecord]) -> CheckpointRecord | None:
        best = self.best_checkpoints(records, 1)
        return best[0] if best else None

    def retain(
        self, records: Sequence[CheckpointRecord], num_to_keep: int | None
    ) -> tuple[tuple[CheckpointRecord, ...], tuple[CheckpointRecord, ...]]:
        """Split a trial's committed checkpoints into (kept, best).

        `kept` is everything that must stay in storage, in report order: the best
        `num_to_keep` plus the latest, which is never deleted; `best` is the best N alone.
        With num_to_keep=None every record is kept and counts as best.
        """
        ordered = tuple(sorted(records, key=lambda r: r.index))
        if num_to_keep is None:
            return ordered, ordered
        best = self.best_checkpoints(ordered, num_to_keep)
        kept = {r.index: r for r in best}
        if ordered:
            kept[ordered[-1].index] = ordered[-1]
        return tuple(kept[i] for i in sorted(kept)), best


def best_by(scored: Iterable[tuple[float | None, T]], mode: Order, *,
            finite_only: bool = True) -> T | None:
    """The item with the best score under `mode`; NaN and missing scores never win, nor
    infinities when `finite_only`. The first of equal best scores wins."""
    best: tuple[tuple[bool, float], T] | None = None
    for score, item in scored:
        if score is None or math.isnan(score) or (finite_only and math.isinf(score)):
            continue
        key = rank_key(score, mode)
        if best is None or key > best[0]:
            best = (key, item)
    return best[1] if best is not None else None
