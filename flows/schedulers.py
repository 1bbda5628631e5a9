"""Trial schedulers: `TuneConfig(scheduler=...)` stops trials that are doing badly.

A scheduler decides inside each trial, at the report that caused the decision, from the
trial's own history and the records trials share through the experiment's storage
(`prefect_tune.storage.board`): no round trip to the sweep, the same on threads,
processes and Dask workers, and a restored sweep finds every record where it was.

A trial a scheduler stops ends TERMINATED, with the reason in `stopped_early`
(trial.json, results.csv, `Result.stopped_early`). `metric` and `mode` default to
TuneConfig's.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Self

from prefect_tune.storage import ConfigError
from prefect_tune.storage.board import Board
from prefect_tune.tasks.plan import Decision

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class _Scheduler:
    """What every scheduler has: the metric it reads, its mode, and its clock."""

    time_attr: str = "training_iteration"
    metric: str | None = None
    mode: Mode | None = None

    def bind(self, metric: str | None, mode: str | None) -> Self:
        """This scheduler with TuneConfig's `metric` and `mode` where it has none.

        Raises:
            ConfigError: no metric or mode either way, or a bad one.
        """
        bound = replace(self, metric=self.metric or metric,
                        mode=self.mode or mode)  # type: ignore[arg-type]
        name = type(self).__name__
        if not bound.metric or not isinstance(bound.metric, str):
            raise ConfigError(f"{name} needs a metric: set {name}(metric=...) or "
                              "TuneConfig(metric=...)")
        if bound.mode not in ("min", "max"):
            raise ConfigError(f"{name}(mode={bound.mode!r}) is invalid: set mode \"min\" or "
                              "\"max\" on the scheduler or on TuneConfig")
        if not isinstance(self.time_attr, str) or not self.time_attr:
            raise ConfigError(f"{name}(time_attr={self.time_attr!r}) is invalid: use a "
                              "metric name such as \"training_iteration\"")
        return bound

    def to_json(self) -> dict[str, Any]:
        """What experiment.json keeps of it."""
        return {"name": type(self).__name__, **asdict(self)}

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than


@dataclass(frozen=True)
class FIFOScheduler:
    """Every trial runs to its end (the default)."""

    def bind(self, metric: str | None, mode: str | None) -> None:
        return None

    def to_json(self) -> dict[str, Any]:
        return {"name": "FIFOScheduler"}


@dataclass(frozen=True)
class ASHAScheduler(_Scheduler):
    """Asynchronous successive halving, stopping variant: rungs sit at `grace_period *
    reduction_factor**k` (below `max_t`); a trial that reaches a rung with a value
    outside the best `1/reduction_factor` of the values other trials recorded there
    stops. The first trial at a rung goes on; every trial ends at `max_t`.

    With `brackets` > 1 each trial belongs to one bracket, chosen from its trial id (so
    a restored sweep chooses the same), whose rungs start `reduction_factor**b` later.

    `promotion=True` is the paper's algorithm: a trial pauses at each rung (its latest
    checkpoint committed), and a free slot first resumes the best paused trial in the
    best `1/reduction_factor` of its rung, else starts a new trial
    (`prefect_tune.flows.pausing.Promotion`).
    """

    max_t: float = 100
    grace_period: float = 1
    reduction_factor: float = 4
    brackets: int = 1
    promotion: bool = False

    def __post_init__(self) -> None:
        _positive(self, "max_t", "grace_period")
        if isinstance(self.reduction_factor, bool) or \
                not isinstance(self.reduction_factor, (int, float)) or self.reduction_factor <= 1:
            raise ConfigError(f"ASHAScheduler(reduction_factor={self.reduction_factor!r}) is "
                              "invalid: use a number > 1, such as 4")
        if isinstance(self.brackets, bool) or not isinstance(self.brackets, int) \
                or self.brackets < 1:
            raise ConfigError(f"ASHAScheduler(brackets={self.brackets!r}) is invalid: use an "
                              "integer >= 1")
        if self.max_t < self.grace_period:
            raise ConfigError(f"ASHAScheduler(max_t={self.max_t!r}) is below grace_period="
                              f"{self.grace_period!r}: no trial could reach a rung; raise "
                              "max_t or lower grace_period")

    def rungs(self, bracket: int) -> list[float]:
        """The rung milestones of `bracket`, lowest first."""
        count = int(math.log(self.max_t / self.grace_period, self.reduction_factor)
                    - bracket + 1 + 1e-9)
        return [self.grace_period * self.reduction_factor ** (k + bracket)
                for k in range(max(count, 0))]

    def bracket(self, trial_id: str) -> int:
        digest = hashlib.sha256(trial_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.brackets

    def decide(self, board: Board, trial_id: str,
               history: Sequence[tuple[float, float]]) -> Decision | None:
        time, value = history[-1]
        before = history[-2][0] if len(history) > 1 else -math.inf
        if time >= self.max_t:
            return Decision(f"{self.time_attr} reached max_t={self.max_t:g}", early=False)
        if self.promotion:
            return None  # the sweep pauses it at each rung and decides (pausing.Promotion)
        bracket = self.bracket(trial_id)
        reached = [m for m in self.rungs(bracket) if before < m <= time]
        if not reached:
            return None
        rung = reached[-1]
        key = f"asha-b{bracket}-{rung:g}"
        others = board.values(key)
        if trial_id in others:
            return None  # decided before this trial was resumed
        board.post(key, trial_id, value)
        if not others:
            return None
        cutoff = _percentile([v if self.mode == "max" else -v for v in others.values()],
                             1 - 1 / self.reduction_factor)
        if (value if self.mode == "max" else -value) < cutoff:
            return Decision(
                f"{self.metric}={value:g} at {self.time_attr}={time:g} is outside the best "
                f"1/{self.reduction_factor:g} of the {len(others)} other trials at rung "
                f"{rung:g} (cutoff {cutoff if self.mode == 'max' else -cutoff:g})"
            )
        return None


@dataclass(frozen=True)
class MedianStoppingRule(_Scheduler):
    """Stops a trial whose best value by time t is worse than the median of the running
    means, up to t, of the other trials that reached t (once at least
    `min_samples_required` did, and t >= `grace_period`). Times are compared as equal
    values of `time_attr`: use a counter such as training_iteration."""

    grace_period: float = 1
    min_samples_required: int = 3

    def __post_init__(self) -> None:
        _positive(self, "grace_period")
        if isinstance(self.min_samples_required, bool) or \
                not isinstance(self.min_samples_required, int) or self.min_samples_required < 1:
            raise ConfigError(f"MedianStoppingRule(min_samples_required="
                              f"{self.min_samples_required!r}) is invalid: use an integer >= 1")

    def decide(self, board: Board, trial_id: str,
               history: Sequence[tuple[float, float]]) -> Decision | None:
        time = history[-1][0]
        values = [v for _, v in history]
        others = board.post(f"median-{time:g}", trial_id, sum(values) / len(values))
        others.pop(trial_id)
        if time < self.grace_period or len(others) < self.min_samples_required:
            return None
        median = statistics.median(others.values())
        best = max(values) if self.mode == "max" else min(values)
        if self._better(median, best):
            return Decision(
                f"its best {self.metric}={best:g} by {self.time_attr}={time:g} is worse than "
                f"the median {median:g} of the running means of {len(others)} other trials"
            )
        return None


@dataclass(frozen=True)
class HyperBandScheduler(_Scheduler):
    """HyperBand: trials fill brackets in the order they were sampled (bracket s of
    each band: ceil((s_max + 1) / (s + 1) * reduction_factor**s) trials, milestones
    max_t / reduction_factor**s, then * reduction_factor each level); in a bracket,
    every trial trains to the milestone and pauses, and once all have, the best
    1/reduction_factor resume to the next milestone and the rest stop
    (`prefect_tune.flows.pausing.Bracketed`). Every trial ends at max_t."""

    max_t: float = 81
    reduction_factor: float = 3

    def __post_init__(self) -> None:
        _positive(self, "max_t")
        if isinstance(self.reduction_factor, bool) or \
                not isinstance(self.reduction_factor, (int, float)) or self.reduction_factor <= 1:
            raise ConfigError(f"HyperBandScheduler(reduction_factor={self.reduction_factor!r}) "
                              "is invalid: use a number > 1, such as 3")

    @property
    def s_max(self) -> int:
        return max(int(math.log(self.max_t, self.reduction_factor) + 1e-9), 0)

    def band(self) -> list[int]:
        """How many trials each bracket of a band holds; bracket s at index s_max - s."""
        eta, top = self.reduction_factor, self.s_max
        return [math.ceil((top + 1) / (s + 1) * eta ** s) for s in range(top, -1, -1)]

    def assign(self, trials: Sequence[str]) -> dict[str, int]:
        """Each trial's bracket (numbered across bands), filling brackets in order."""
        sizes, brackets, bracket, filled = self.band(), {}, 0, 0
        for trial in trials:
            if filled == sizes[bracket % len(sizes)]:
                bracket, filled = bracket + 1, 0
            brackets[trial] = bracket
            filled += 1
        return brackets

    def milestones(self, bracket: int) -> list[float]:
        """Where the trials of `bracket` pause (below max_t, where they end)."""
        s = self.s_max - bracket % (self.s_max + 1)
        eta = self.reduction_factor
        return [self.max_t / eta ** (s - i) for i in range(s)]

    def decide(self, board: Board, trial_id: str,
               history: Sequence[tuple[float, float]]) -> Decision | None:
        if history[-1][0] >= self.max_t:
            return Decision(f"{self.time_attr} reached max_t={self.max_t:g}", early=False)
        return None


Scheduler = FIFOScheduler | ASHAScheduler | MedianStoppingRule | HyperBandScheduler
_KINDS: dict[str, type[Any]] = {k.__name__: k for k in (
    FIFOScheduler, ASHAScheduler, MedianStoppingRule, HyperBandScheduler)}


def scheduler_from_json(data: Mapping[str, Any]) -> Scheduler:
    """The scheduler experiment.json keeps (see `to_json`).

    Raises:
        ConfigError: not one this version knows.
    """
    kind = _KINDS.get(str(data.get("name")))
    if kind is None:
        raise ConfigError(f"scheduler {dict(data)!r} is not one this prefect-tune knows "
                          f"({', '.join(_KINDS)})")
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in data.items() if k in names})  # type: ignore[no-any-return]


def _positive(scheduler: Any, *names: str) -> None:
    for name in names:
        value = getattr(scheduler, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{type(scheduler).__name__}({name}={value!r}) is invalid: use "
                              "a number > 0")


def _percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values`, interpolated linearly (numpy's default)."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
