"""`OptunaSearch`: Optuna's samplers through its ask-and-tell interface.

An in-memory study holds the search. A trial's config is asked for when it starts,
each result the sweep hears of is reported as an intermediate value at its
`training_iteration`, and its end is told: COMPLETE with its last value, FAIL when it
errored or lacks the metric, PRUNED with its last intermediate value when a scheduler
stopped it early (so TPE does not learn from cut-short curves as if they had finished).
A restore rebuilds the study from the experiment's trial records alone: finished and
pruned trials are added as they ended, those that run again are asked for anew with
their stored params, and the sampler is reseeded from the seed and the number of trials
read back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from prefect_tune.flows.search_space import (
    Choice,
    Domain,
    GridSearch,
    LogUniform,
    RandInt,
    Uniform,
    space_to_json,
)
from prefect_tune.flows.searcher import RestoredState, Searcher
from prefect_tune.storage import ConfigError
from prefect_tune.storage.ranking import value_of
from prefect_tune.storage.records import flatten

#: Samplers by the name experiment.json and the deployable flow use.
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler",
            "gp": "GPSampler", "qmc": "QMCSampler", "nsgaii": "NSGAIISampler"}


class OptunaSearch(Searcher):
    """Optuna's sampler `sampler` (a name from SAMPLERS or an optuna sampler; default
    TPE) over `space` (default: the Tuner's param_space), seeded by `seed` (default: the
    experiment's). Needs a metric and mode (default: TuneConfig's).
    `pip install 'prefect-tune[optuna]'`."""

    can_finish = False

    def __init__(self, space: Mapping[str, Any] | None = None, metric: str | None = None,
                 mode: Literal["min", "max"] | None = None, sampler: Any = None,
                 seed: int | None = None) -> None:
        try:
            import optuna
        except ImportError as exc:
            raise ConfigError(f"OptunaSearch needs optuna ({exc}): pip install "
                              "'prefect-tune[optuna]'") from exc
        super().__init__(metric, mode)
        self._optuna = optuna
        if sampler is None:
            sampler = "tpe"
        if isinstance(sampler, str) and sampler not in SAMPLERS:
            raise ConfigError(f"OptunaSearch(sampler={sampler!r}) is not a sampler this "
                              f"knows: use one of {', '.join(SAMPLERS)}, or an optuna sampler")
        if not isinstance(sampler, str) and not isinstance(sampler, optuna.samplers.BaseSampler):
            raise ConfigError(f"OptunaSearch(sampler={sampler!r}) is neither a sampler name "
                              "nor an optuna sampler")
        self.sampler, self.seed = sampler, seed
        self.space: dict[str, Any] = dict(space) if space is not None else {}
        self._own_space = space is not None
        if space is not None:
            self._distributions = distributions(optuna, space)
        self._trials: dict[str, Any] = {}  # trial id -> optuna Trial
        self._steps: dict[str, int] = {}  # trial id -> the last step reported
        self._restored = 0
        self._study: Any = None

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: Mapping[str, Any], *, seed: int = 0) -> None:
        super().set_search_properties(metric, mode, config, seed=seed)
        if self.metric is None or self.mode not in ("min", "max"):
            raise ConfigError("OptunaSearch needs a metric and a mode: set them on it or on "
                              'TuneConfig(metric="loss", mode="min")')
        if not self._own_space:
            self.space = dict(config)
            self._distributions = distributions(self._optuna, config)
        if self.seed is None:
            self.seed = seed
        direction: Literal["minimize", "maximize"] = \
            "minimize" if self.mode == "min" else "maximize"
        self._study = self._optuna.create_study(direction=direction,
                                                sampler=self._new_sampler(self.seed))

    def _new_sampler(self, seed: int | None) -> Any:
        if not isinstance(self.sampler, str):
            return self.sampler
        kind = getattr(self._optuna.samplers, SAMPLERS[self.sampler])
        return kind(seed=seed)

    def suggest(self, trial_id: str) -> dict[str, Any]:
        if self._restored:  # reseed once, after the replay, so a restore is reproducible
            self._study.sampler = self._new_sampler((self.seed or 0) + self._restored)
            self._restored = 0
        trial = self._study.ask(self._distributions)
        self._trials[trial_id] = trial
        return unflatten(self.space, trial.params)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self._trials.get(trial_id)
        point = _point(result, self.metric)
        if trial is not None and point is not None and point[0] > self._steps.get(trial_id, -1):
            trial.report(point[1], point[0])
            self._steps[trial_id] = point[0]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        trial = self._trials.pop(trial_id, None)
        if trial is None:
            return
        value = value_of(result, self.metric)
        if error or value is None:
            self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(trial, value)

    def on_trial_pruned(self, trial_id: str, result: dict[str, Any] | None) -> None:
        if result is not None:
            self.on_trial_result(trial_id, result)
        trial = self._trials.pop(trial_id, None)
        if trial is not None:
            self._study.tell(trial, state=self._optuna.trial.TrialState.PRUNED)

    def on_trial_restored(self, trial_id: str, config: dict[str, Any],
                          state: RestoredState, result: dict[str, Any] | None) -> None:
        self._restored += 1
        flat = flatten(config)
        params = {k: flat[k] for k in self._distributions if k in flat}
        if len(params) < len(self._distributions):
            return  # not a config of this space (another searcher made it): skip it
        if state == "running":
            self._study.enqueue_trial(params, skip_if_exists=False)
            self._trials[trial_id] = self._study.ask(self._distributions)
            return
        states = self._optuna.trial.TrialState
        value, point = value_of(result, self.metric), _point(result, self.metric)
        if state == "complete" and value is None:
            state = "error"
        self._study.add_trial(self._optuna.trial.create_trial(
            params=params, distributions=self._distributions,
            value=value if state == "complete" else None,
            intermediate_values={int(point[0]): point[1]} if point else None,
            state={"complete": states.COMPLETE, "pruned": states.PRUNED,
                   "error": states.FAIL}[state]))

    def to_json(self) -> dict[str, Any]:
        sampler = self.sampler if isinstance(self.sampler, str) else next(
            (name for name, kind in SAMPLERS.items() if type(self.sampler).__name__ == kind),
            type(self.sampler).__name__)
        return {"name": "optuna", "metric": self.metric, "mode": self.mode,
                "sampler": sampler, "seed": self.seed,
                "space": space_to_json(self.space) if self._own_space else None}


def distributions(optuna: Any, space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Optuna's distribution of each domain of `space`, by its flattened key ("a/b").

    Raises:
        ConfigError: a grid_search, or a choice among values Optuna cannot store.
    """
    found: dict[str, Any] = {}
    dist = optuna.distributions
    for key, value in space.items():
        path = f"{prefix}{key}"
        if isinstance(value, GridSearch):
            raise ConfigError(f"param_space {path!r} is a grid_search, which OptunaSearch "
                              "cannot sample: use choice([...])")
        if isinstance(value, Uniform | LogUniform):
            found[path] = dist.FloatDistribution(value.lower, value.upper,
                                                 log=isinstance(value, LogUniform))
        elif isinstance(value, RandInt):
            found[path] = dist.IntDistribution(value.lower, value.upper - 1)
        elif isinstance(value, Choice):
            if not all(v is None or isinstance(v, bool | int | float | str)
                       for v in value.values):
                raise ConfigError(
                    f"param_space {path!r}: choice({list(value.values)!r}) holds lists or "
                    "dicts, which Optuna cannot represent: choose among names or numbers "
                    "and build the value in the trainable")
            found[path] = dist.CategoricalDistribution(value.values)
        elif isinstance(value, Domain):
            raise ConfigError(f"param_space {path!r}: {value!r} has no Optuna counterpart")
        elif isinstance(value, Mapping):
            found.update(distributions(optuna, value, f"{path}/"))
    return found


def unflatten(space: Mapping[str, Any], params: Mapping[str, Any], prefix: str = ""
              ) -> dict[str, Any]:
    """The config of `space` with `params` (by flattened key) for its domains and its
    constants as they are."""
    config: dict[str, Any] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        if isinstance(value, Domain):
            config[key] = params[path]
        elif isinstance(value, Mapping):
            config[key] = unflatten(value, params, f"{path}/")
        else:
            config[key] = value
    return config


def _point(result: Mapping[str, Any] | None, metric: str | None) -> tuple[int, float] | None:
    """(training_iteration, metric) of a result, if it has both."""
    value = value_of(result, metric)
    step = flatten(result).get("training_iteration") if result else None
    if value is None or not isinstance(step, int):
        return None
    return step, value
