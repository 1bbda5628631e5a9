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
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, Self

from prefect_tune.flows.search_space import Domain, space_from_json, space_to_json
from prefect_tune.storage import CheckpointConfig, ConfigError
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
        return {trial: self.bracket_at(i) for i, trial in enumerate(trials)}

    def bracket_at(self, index: int) -> int:
        """The bracket of the `index`-th trial: brackets fill in order, band by band."""
        sizes = self.band()
        full, rest = divmod(index, sum(sizes))
        bracket = full * len(sizes)
        for size in sizes:
            if rest < size:
                break
            rest, bracket = rest - size, bracket + 1
        return bracket

    def bracket_size(self, bracket: int) -> int:
        sizes = self.band()
        return sizes[bracket % len(sizes)]

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


@dataclass(frozen=True)
class PopulationBasedTraining(_Scheduler):
    """Population-based training: every trial pauses each `perturbation_interval` of
    time_attr (from `burn_in_period` on, its checkpoint committed); a trial then in the
    worst `quantile_fraction` of the population (by the latest score of each trial)
    exploits one in the best: it goes on from a copy of that trial's checkpoint, with
    that trial's config explored (`prefect_tune.flows.pausing.Population`).

    `hyperparam_mutations` maps config keys to a list of values (explored as a step to
    a neighbouring value, or resampled) or a search-space domain such as uniform(0, 1)
    (multiplied by one of `perturbation_factors`, or resampled); each key is resampled
    with `resample_probability`. With `seed`, every choice is reproducible (it is drawn
    from the seed, the trial and the time, so a restored sweep draws the same).
    """

    perturbation_interval: float = 10
    hyperparam_mutations: Mapping[str, Any] = field(default_factory=dict)
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    perturbation_factors: tuple[float, float] = (1.2, 0.8)
    burn_in_period: float = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        _positive(self, "perturbation_interval")
        name = "PopulationBasedTraining"
        if not isinstance(self.hyperparam_mutations, Mapping) or not self.hyperparam_mutations:
            raise ConfigError(f"{name}(hyperparam_mutations={self.hyperparam_mutations!r}) "
                              "is invalid: map config keys to lists of values or domains, "
                              "such as {'lr': uniform(1e-4, 1e-1)}")
        if isinstance(self.hyperparam_mutations, Mapping) and not isinstance(
                self.hyperparam_mutations, dict):
            object.__setattr__(self, "hyperparam_mutations", dict(self.hyperparam_mutations))
        for key, mutation in self.hyperparam_mutations.items():
            if not (isinstance(mutation, (list, tuple)) and mutation) and \
                    not isinstance(mutation, Domain):
                raise ConfigError(f"{name}: the mutation of {key!r} is {mutation!r}; use a "
                                  "non-empty list of values or a domain such as uniform()")
        if not 0 < self.quantile_fraction <= 0.5:
            raise ConfigError(f"{name}(quantile_fraction={self.quantile_fraction!r}) is "
                              "invalid: use a fraction in (0, 0.5]")
        if not 0 <= self.resample_probability <= 1:
            raise ConfigError(f"{name}(resample_probability={self.resample_probability!r}) "
                              "is invalid: use a probability in [0, 1]")
        if len(self.perturbation_factors) != 2 or any(
                not isinstance(f, (int, float)) or f <= 0 for f in self.perturbation_factors):
            raise ConfigError(f"{name}(perturbation_factors={self.perturbation_factors!r}) "
                              "is invalid: use two positive numbers, such as (1.2, 0.8)")
        object.__setattr__(self, "perturbation_factors", tuple(self.perturbation_factors))
        if self.burn_in_period < 0:
            raise ConfigError(f"{name}(burn_in_period={self.burn_in_period!r}) is invalid: "
                              "use a number >= 0")

    max_t = math.inf  # trials end on their own (stop conditions, or returning)

    def check_space(self, config: Mapping[str, Any]) -> None:
        """Raises ConfigError if a mutated key is not in a trial's `config`."""
        missing = sorted(k for k in self.hyperparam_mutations if k not in config)
        if missing:
            raise ConfigError(f"PopulationBasedTraining mutates {missing}, which the search "
                              f"space does not have (its keys: {sorted(config)}); add them "
                              "to param_space or drop them from hyperparam_mutations")

    def next_point(self, time: float) -> float:
        """The time at which a trial that is at `time` pauses next."""
        return max(time + self.perturbation_interval, self.burn_in_period)

    def rng(self, *parts: object) -> random.Random:
        """A generator drawn from the seed and `parts` (the trial, the time)."""
        return random.Random(f"{self.seed}:" + ":".join(map(str, parts)))

    def explore(self, config: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
        """`config` with each mutated key perturbed or resampled."""
        explored = dict(config)
        for key, mutation in self.hyperparam_mutations.items():
            value = config[key]
            if isinstance(mutation, Domain):
                if rng.random() < self.resample_probability or \
                        not isinstance(value, (int, float)):
                    explored[key] = mutation.sample(rng)
                else:
                    explored[key] = type(value)(value * rng.choice(self.perturbation_factors))
                continue
            values = list(mutation)
            if rng.random() < self.resample_probability or value not in values:
                explored[key] = rng.choice(values)
            else:
                index = values.index(value) + rng.choice((-1, 1))
                explored[key] = values[min(max(index, 0), len(values) - 1)]
        return explored

    def decide(self, board: Board, trial_id: str,
               history: Sequence[tuple[float, float]]) -> Decision | None:
        return None  # trials end on their own; the sweep pauses them (pausing.Population)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(),
                "hyperparam_mutations": space_to_json(self.hyperparam_mutations),
                "perturbation_factors": list(self.perturbation_factors)}


Scheduler = (FIFOScheduler | ASHAScheduler | MedianStoppingRule | HyperBandScheduler
             | PopulationBasedTraining)
_KINDS: dict[str, type[Any]] = {k.__name__: k for k in (
    FIFOScheduler, ASHAScheduler, MedianStoppingRule, HyperBandScheduler,
    PopulationBasedTraining)}


def check_scheduler(scheduler: Scheduler | None, space: Mapping[str, Any],
                    checkpoints: CheckpointConfig) -> None:
    """Refuse a scheduler the sweep's other settings do not suit.

    Raises:
        ConfigError: a pausing scheduler with checkpoints switched off (a resumed trial
            would start over), or PBT mutating a key the search space lacks.
    """
    pauses = isinstance(scheduler, (HyperBandScheduler, PopulationBasedTraining)) or (
        isinstance(scheduler, ASHAScheduler) and scheduler.promotion)
    if pauses and checkpoints.num_to_keep == 0:
        raise ConfigError(
            f"{type(scheduler).__name__} pauses trials and resumes them from their latest "
            "checkpoint, but CheckpointConfig(num_to_keep=0) keeps none; keep at least one "
            "(num_to_keep=1 keeps the latest)"
        )
    if isinstance(scheduler, PopulationBasedTraining):
        scheduler.check_space(space)


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
    arguments = {k: v for k, v in data.items() if k in names}
    if kind is PopulationBasedTraining:
        arguments["hyperparam_mutations"] = space_from_json(
            arguments.get("hyperparam_mutations", {}), "hyperparam_mutations")
        arguments["perturbation_factors"] = tuple(arguments.get("perturbation_factors", ()))
    return kind(**arguments)  # type: ignore[no-any-return]


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
