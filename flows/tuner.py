"""`Tuner`: the Python entry point of a sweep."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.results import ResultGrid
from prefect_tune.flows.search_space import validate_space
from prefect_tune.flows.sweep import SweepPlan, tune_flow
from prefect_tune.storage import ConfigError, RunConfig
from prefect_tune.storage.layout import default_experiment_name


class Tuner:
    """Run `trainable` over `param_space` as a Prefect flow.

    Args:
        trainable: A function taking the trial's config dict; it calls `report()`.
        param_space: The search space: plain values, nested dicts, and domains.
        tune_config: How to search and rank.
        run_config: Where to store and what to keep.

    Example:
        >>> from prefect_tune.flows import Tuner, TuneConfig, grid_search
        >>> tuner = Tuner(train, param_space={"lr": grid_search([0.1, 0.01])},  # doctest: +SKIP
        ...               tune_config=TuneConfig(metric="loss", mode="min"))
        >>> best = tuner.fit().get_best_result()  # doctest: +SKIP
    """

    def __init__(
        self,
        trainable: Callable[[dict[str, Any]], Any],
        *,
        param_space: Mapping[str, Any] | None = None,
        tune_config: TuneConfig | None = None,
        run_config: RunConfig | None = None,
    ) -> None:
        if not callable(trainable):
            raise ConfigError(
                f"trainable {trainable!r} is not callable: pass a function that takes the "
                "trial's config dict"
            )
        param_space = dict(param_space or {})
        validate_space(param_space)
        if tune_config is not None and not isinstance(tune_config, TuneConfig):
            raise ConfigError(f"tune_config must be a TuneConfig, got {type(tune_config).__name__}")
        if run_config is not None and not isinstance(run_config, RunConfig):
            raise ConfigError(f"run_config must be a RunConfig, got {type(run_config).__name__}")
        self.trainable = trainable
        self.param_space = param_space
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()

    @property
    def trainable_name(self) -> str:
        return getattr(self.trainable, "__name__", type(self.trainable).__name__)

    def fit(self) -> ResultGrid:
        """Run the sweep in a new flow run and return every trial's result."""
        name = self.run_config.name or default_experiment_name(self.trainable_name, datetime.now())
        plan = SweepPlan(
            name=name,
            trainable=self.trainable,
            trainable_name=self.trainable_name,
            param_space=self.param_space,
            tune_config=self.tune_config,
            run_config=self.run_config,
        )
        return tune_flow(plan)()
