"""`sweep`: the sweep as a deployable Prefect flow.

It runs `engine.run_sweep`, as `Tuner.fit()` does. Its parameters are all JSON, and their
types and bounds are in its signature, so the server refuses a bad `--param` naming the
field.

    prefect deployment run 'sweep/on-demand' --param trainable=pkg.mod:train \\
        --param 'param_space={"lr": {"loguniform": [1e-4, 0.1]}}' --param num_samples=8 \\
        --param search_alg=optuna --param 'search_settings={"seed": 0}'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from prefect import State, flow
from prefect.runtime import deployment, flow_run
from pydantic import AfterValidator, Field

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.engine import final_state, run_sweep
from prefect_tune.flows.plan import Resume, resolve_run_storage
from prefect_tune.flows.search import searcher_from_json
from prefect_tune.flows.search_space import space_from_json
from prefect_tune.flows.tuner import Tuner
from prefect_tune.storage import (
    CheckpointConfig,
    ConfigError,
    ExperimentStore,
    FailureConfig,
    RunConfig,
)
from prefect_tune.storage.layout import default_experiment_name

TrainablePath = Annotated[str, Field(
    pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
    description='Import path of the trainable: "package.module:function"',
)]
Order = Literal["min", "max"]
SearcherName = Literal["variants", "optuna"]


def _trials(value: int) -> int:
    if value == 0:
        raise ValueError("0 trials: use 1 or more, or -1 to run until time_budget_s")
    return value


#: 1 or more, or -1; one integer field in the UI's run form, and 0 refused by the
#: server's schema check as by pydantic.
NumSamples = Annotated[int, Field(ge=-1, json_schema_extra={"not": {"const": 0}}),
                       AfterValidator(_trials)]


def load_trainable(path: str) -> Callable[[dict[str, Any]], Any]:
    """Import "package.module:function" (or a `Trainable` class).

    Raises:
        ConfigError: the module or the attribute is missing, or it is not callable.
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"trainable={path!r}: module {module_name!r} cannot be imported ({exc}); install "
            "it where the flow runs (the worker's environment)"
        ) from exc
    found = getattr(module, attribute, None)
    if not callable(found):
        raise ConfigError(
            f"trainable={path!r}: {module_name} has no function {attribute!r}; use "
            '"package.module:function"'
        )
    return cast(Callable[[dict[str, Any]], Any], found)


def experiment_name(trainable: str) -> str:
    """The name of a run's experiment when none is given: the deployment's name (or the
    trainable's) and the run's scheduled time, so that each scheduled run has its own."""
    base = deployment.name or trainable.rpartition(":")[2]
    when = flow_run.scheduled_start_time
    return default_experiment_name(base, when if isinstance(when, datetime) else datetime.now())


def _run_name() -> str:
    parameters = flow_run.parameters
    return str(parameters.get("name") or experiment_name(str(parameters["trainable"])))


@flow(name="sweep", flow_run_name=_run_name, persist_result=False, validate_parameters=True)
def sweep(
    trainable: TrainablePath,
    param_space: dict[str, Any] | None = None,
    num_samples: NumSamples = 1,
    metric: str | None = None,
    mode: Order | None = None,
    max_concurrent_trials: Annotated[int, Field(ge=1)] | None = None,
    seed: int | None = None,
    name: Annotated[str, Field(pattern=r"^[\w.-]+$")] | None = None,
    storage_path: str | None = None,
    storage_block: str | None = None,
    num_to_keep: Annotated[int, Field(ge=0)] | None = None,
    checkpoint_score_attribute: str | None = None,
    checkpoint_score_order: Order = "max",
    checkpoint_frequency: Annotated[int, Field(ge=0)] = 0,
    checkpoint_at_end: bool = False,
    stop: dict[str, float] | None = None,
    max_failures: Annotated[int, Field(ge=-1)] = 0,
    resume: bool = False,
    search_alg: SearcherName = "variants",
    search_settings: dict[str, Any] | None = None,
    time_budget_s: Annotated[float, Field(gt=0)] | None = None,
) -> State[Any]:
    """Run a sweep of `trainable` over `param_space`, one Prefect task run per trial.

    Args:
        trainable: Import path of the function or `Trainable` class to tune,
            "package.module:name"; it must be importable where the flow runs.
        param_space: The search space as JSON: {"lr": {"loguniform": [1e-4, 0.1]},
            "layers": {"grid_search": [1, 2]}, "act": {"choice": ["relu", "tanh"]},
            "epochs": 3}; domains: uniform, loguniform, randint ([lower, upper]),
            choice, grid_search (lists); anything else is passed as it is.
        num_samples: The trial budget: with "variants", passes over the grid; else
            trials. -1: until time_budget_s runs out.
        metric: The metric that ranks trials (and that searchers learn from).
        mode: "min" or "max" for metric.
        max_concurrent_trials: Trials running at once (default: the CPU count).
        seed: Makes sampling reproducible.
        name: The experiment's name (default: the deployment's or trainable's and the
            scheduled time).
        storage_path: Where experiments are stored: a path, file://, s3:// or gs://.
        storage_block: A saved block to store the experiment in instead, such as
            "tune-storage/NAME", "s3-bucket/NAME" or "gcs-bucket/NAME".
        num_to_keep: Checkpoints kept per trial, the best by the score (default: all).
        checkpoint_score_attribute: The metric that ranks a trial's checkpoints.
        checkpoint_score_order: "min" or "max" for the checkpoint score.
        checkpoint_frequency: A class trainable saves every this many iterations.
        checkpoint_at_end: A class trainable saves when it ends.
        stop: Thresholds that end a trial: {"training_iteration": 10}.
        max_failures: Retries of a failing trial, from its latest checkpoint (-1: no
            limit).
        resume: Continue an existing experiment of this name (its own settings win)
            instead of refusing it.
        search_alg: "variants": grid and random sampling; "optuna": Optuna's TPE.
        search_settings: The searcher's settings, such as {"sampler": "random",
            "seed": 0} for optuna.
        time_budget_s: After this many seconds no new trial starts and running ones
            stop.

    Returns:
        The experiment path, trial counts by status, and the best trial with its
        checkpoint URI (when `metric` and `mode` are set). The run ends Failed when no
        trial finished, and "Completed with errors" when some errored.
    """
    run_config = RunConfig(
        name=name or experiment_name(trainable),
        storage_path=storage_path,
        storage_block=storage_block,
        checkpoint_config=CheckpointConfig(
            num_to_keep=num_to_keep,
            checkpoint_score_attribute=checkpoint_score_attribute,
            checkpoint_score_order=checkpoint_score_order,
            checkpoint_frequency=checkpoint_frequency,
            checkpoint_at_end=checkpoint_at_end,
        ),
        failure_config=FailureConfig(max_failures=max_failures),
        stop=stop,
    )
    tuner = Tuner(
        load_trainable(trainable),
        param_space=space_from_json(param_space or {}),
        tune_config=TuneConfig(metric=metric, mode=mode, num_samples=num_samples,
                               max_concurrent_trials=max_concurrent_trials, seed=seed,
                               search_alg=searcher_from_json(
                                   {**(search_settings or {}), "name": search_alg}),
                               time_budget_s=time_budget_s),
        run_config=run_config,
    )
    storage = resolve_run_storage(run_config)
    store = ExperimentStore(storage, run_config.name or "")
    if resume and store.exists():
        tuner = Tuner.continuing(tuner.trainable, store, store.read_experiment(), Resume(),
                                 run_config)
    grid = run_sweep(tuner.plan(storage))
    return final_state(grid, grid.summary())
