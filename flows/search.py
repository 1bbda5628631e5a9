"""Searchers: where each new trial's config comes from, as Ray Tune users know them.

The sweep asks its searcher for a config whenever a slot frees up (`suggest`), tells it
every result that reaches the sweep (`on_trial_result`: a trial's last row at the end of
each of its segments) and how each trial ended (`on_trial_complete`, or
`on_trial_pruned` for a trial a scheduler stopped early). Each suggested trial is
recorded in the experiment before it starts, so a restore finds every one; the restore
then replays them into a fresh searcher (`on_trial_restored`), in the order they were
suggested: no searcher is ever pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect_tune.flows.optuna_search import OptunaSearch
from prefect_tune.flows.search_space import GridSearch, config_at, grid_size, space_from_json
from prefect_tune.flows.searcher import RestoredState, Searcher
from prefect_tune.storage import ConfigError
from prefect_tune.storage.records import flatten


class BasicVariantGenerator(Searcher):
    """Grid and random sampling of the Tuner's search space: `num_samples` passes over
    the grid, random domains drawn afresh for every trial. Lazy: trial i's config is a
    function of the space, the seed (default: the experiment's) and i alone, made when
    the trial starts, so a grid of a million points costs nothing up front and a
    restore goes on at the next index."""

    can_finish = False  # with num_samples=-1 it samples forever

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed
        self._space: Mapping[str, Any] = {}
        self._next = 0
        self._grid = 1

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: Mapping[str, Any], *, seed: int = 0) -> None:
        super().set_search_properties(metric, mode, config, seed=seed)
        self._space = config
        self._grid = grid_size(config)
        if self.seed is None:
            self.seed = seed

    def suggest(self, trial_id: str) -> dict[str, Any]:
        config = config_at(self._space, self._next, self.seed or 0)
        self._next += 1
        return config

    def on_trial_restored(self, trial_id: str, config: dict[str, Any],
                          state: RestoredState, result: dict[str, Any] | None) -> None:
        self._next += 1

    def budget(self, num_samples: int) -> int | None:
        return None if num_samples == -1 else num_samples * self._grid

    def to_json(self) -> dict[str, Any]:
        return {"name": "variants", "seed": self.seed}


class ConcurrencyLimiter(Searcher):
    """At most `max_concurrent` of `searcher`'s trials live (running or paused) at once:
    it suggests nothing while that many have not ended."""

    def __init__(self, searcher: Searcher, max_concurrent: int) -> None:
        if not isinstance(searcher, Searcher):
            raise ConfigError(f"ConcurrencyLimiter({searcher!r}, ...) needs a Searcher")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) \
                or max_concurrent < 1:
            raise ConfigError(f"ConcurrencyLimiter(max_concurrent={max_concurrent!r}) is "
                              "invalid: use an integer >= 1")
        super().__init__()
        self.searcher, self.max_concurrent = searcher, max_concurrent
        self.live: set[str] = set()
        self.can_finish = searcher.can_finish

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: Mapping[str, Any], *, seed: int = 0) -> None:
        self.searcher.set_search_properties(metric, mode, config, seed=seed)
        self.metric, self.mode = self.searcher.metric, self.searcher.mode

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if len(self.live) >= self.max_concurrent:
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            self.live.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        self.live.discard(trial_id)
        self.searcher.on_trial_complete(trial_id, result, error)

    def on_trial_pruned(self, trial_id: str, result: dict[str, Any] | None) -> None:
        self.live.discard(trial_id)
        self.searcher.on_trial_pruned(trial_id, result)

    def on_trial_restored(self, trial_id: str, config: dict[str, Any],
                          state: RestoredState, result: dict[str, Any] | None) -> None:
        if state == "running":
            self.live.add(trial_id)
        self.searcher.on_trial_restored(trial_id, config, state, result)

    def budget(self, num_samples: int) -> int | None:
        return self.searcher.budget(num_samples)

    def to_json(self) -> dict[str, Any]:
        return {"name": "limiter", "max_concurrent": self.max_concurrent,
                "searcher": self.searcher.to_json()}


class Repeater(Searcher):
    """Runs each config of `searcher` `repeat` times, as consecutive trials, and tells
    `searcher` the mean of the group's metric once all of them ended (an error if every
    one failed). Each trial's config holds its index in the group under
    `__trial_index__` when `set_index` is true."""

    def __init__(self, searcher: Searcher, repeat: int = 1, set_index: bool = True) -> None:
        if not isinstance(searcher, Searcher):
            raise ConfigError(f"Repeater({searcher!r}, ...) needs a Searcher")
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ConfigError(f"Repeater(repeat={repeat!r}) is invalid: use an integer >= 1")
        super().__init__()
        self.searcher, self.repeat, self.set_index = searcher, repeat, set_index
        self.can_finish = searcher.can_finish
        #: group id (its first trial's id) -> its config and its trials' ends
        self._groups: dict[str, tuple[dict[str, Any], dict[str, tuple[str, Any]]]] = {}
        self._group_of: dict[str, str] = {}
        self._open: str | None = None  # the group still taking trials
        self._restoring: str | None = None  # the group a restore replays

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: Mapping[str, Any], *, seed: int = 0) -> None:
        self.searcher.set_search_properties(metric, mode, config, seed=seed)
        self.metric, self.mode = self.searcher.metric, self.searcher.mode

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        self._replayed()
        if self._open is None:
            config = self.searcher.suggest(trial_id)
            if not isinstance(config, dict):
                return config
            self._groups[trial_id] = (config, {})
            self._open = trial_id
        return self._join(trial_id)

    def _join(self, trial_id: str) -> dict[str, Any]:
        group = self._open
        assert group is not None
        config, ends = self._groups[group]
        index = len(ends)
        self._group_of[trial_id] = group
        ends[trial_id] = ("running", None)
        if index + 1 == self.repeat:
            self._open = None
        return {**config, "__trial_index__": index} if self.set_index else dict(config)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass  # the inner searcher hears of the group's mean only

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        self._end(trial_id, "error" if error else "complete", result)

    def on_trial_pruned(self, trial_id: str, result: dict[str, Any] | None) -> None:
        self._end(trial_id, "complete", result)

    def on_trial_restored(self, trial_id: str, config: dict[str, Any],
                          state: RestoredState, result: dict[str, Any] | None) -> None:
        if self._open is None:
            self._replayed()
            inner = {k: v for k, v in config.items() if k != "__trial_index__"} \
                if self.set_index else dict(config)
            self._groups[trial_id] = (inner, {})
            self._open = self._restoring = trial_id
        group = self._open
        self._join(trial_id)
        if state != "running":
            self._groups[group][1][trial_id] = (state, result)

    def _replayed(self) -> None:
        """Tell the inner searcher of the group replayed last: how it ended, or that it
        runs on."""
        group, self._restoring = self._restoring, None
        if group is None:
            return
        config = self._groups[group][0]
        if self._complete(group):
            self.searcher.on_trial_restored(group, config, *self._mean(group))
        else:
            self.searcher.on_trial_restored(group, config, "running", None)

    def _end(self, trial_id: str, state: str, result: dict[str, Any] | None) -> None:
        group = self._group_of.get(trial_id)
        if group is None:
            return
        self._groups[group][1][trial_id] = (state, result)
        if self._complete(group):
            state, mean = self._mean(group)
            self.searcher.on_trial_complete(group, mean, error=state == "error")

    def _complete(self, group: str) -> bool:
        ends = self._groups[group][1]
        return len(ends) == self.repeat and all(s != "running" for s, _ in ends.values())

    def _mean(self, group: str) -> tuple[RestoredState, dict[str, Any] | None]:
        """The group's end: its trials' mean metric, or an error if none has one."""
        metric = self.metric
        if metric is None:
            return "error", None
        values = [flatten(r)[metric] for s, r in self._groups[group][1].values()
                  if s != "error" and r and isinstance(flatten(r).get(metric), int | float)]
        if not values:
            return "error", None
        return "complete", {metric: sum(values) / len(values)}

    def budget(self, num_samples: int) -> int | None:
        return self.searcher.budget(num_samples)

    def to_json(self) -> dict[str, Any]:
        return {"name": "repeater", "repeat": self.repeat, "set_index": self.set_index,
                "searcher": self.searcher.to_json()}


def searcher_from_json(data: Mapping[str, Any]) -> Searcher:
    """The searcher experiment.json keeps (see `to_json`), or one the deployable flow is
    given by name: "variants", "optuna" (with its settings), "limiter", "repeater".

    Raises:
        ConfigError: a custom searcher (pass it again), or a name this version lacks.
    """
    name = data.get("name")
    settings = {k: v for k, v in data.items() if k not in ("name", "searcher")}
    try:
        if name == "variants":
            return BasicVariantGenerator(**settings)
        if name == "optuna":
            if isinstance(settings.get("space"), Mapping):
                settings["space"] = space_from_json(settings["space"], "space")
            return OptunaSearch(**settings)
        if name == "limiter":
            return ConcurrencyLimiter(searcher_from_json(data["searcher"]), **settings)
        if name == "repeater":
            return Repeater(searcher_from_json(data["searcher"]), **settings)
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"search_alg={name!r}: search_settings {settings!r} are not its "
                          f"settings ({exc})") from exc
    if name == "custom":
        raise ConfigError(
            f"the experiment was created with the searcher {data.get('class')!r}, which is "
            "not stored with it; pass it again: Tuner.restore(path, trainable, "
            "search_alg=...)")
    raise ConfigError(f"search_alg {dict(data)!r} is not one this prefect-tune knows: use "
                      '"variants", "optuna", "limiter" or "repeater"')


def check_search(searcher: Searcher, space: Mapping[str, Any], num_samples: int,
                 time_budget_s: float | None) -> None:
    """Refuse a search that cannot work.

    Raises:
        ConfigError: `num_samples=-1` with a searcher that never finishes and no time
            budget, or a grid_search in the space of a searcher other than
            BasicVariantGenerator.
    """
    if num_samples == -1 and time_budget_s is None and not searcher.can_finish:
        raise ConfigError(
            f"num_samples=-1 runs trials until the searcher finishes, but "
            f"{type(searcher).__name__} never does: set TuneConfig(time_budget_s=...) or a "
            "positive num_samples")
    inner = searcher
    while isinstance(inner, (ConcurrencyLimiter, Repeater)):
        inner = inner.searcher
    if not isinstance(inner, BasicVariantGenerator) and _has_grid(space):
        raise ConfigError(
            f"grid_search in param_space works with BasicVariantGenerator only, not "
            f"{type(inner).__name__}: use choice([...]) for a searcher to pick from")


def _has_grid(space: Mapping[str, Any]) -> bool:
    return any(isinstance(v, GridSearch) or (isinstance(v, Mapping) and _has_grid(v))
               for v in space.values())


__all__ = ["BasicVariantGenerator", "ConcurrencyLimiter", "OptunaSearch", "Repeater",
           "Searcher", "check_search", "searcher_from_json"]
