"""`Tuner`: the Python entry point of a sweep."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from prefect import Flow, State, flow
from prefect.settings import (
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.engine import final_state, run_sweep
from prefect_tune.flows.experiments import experiment_store, read_experiment, read_record
from prefect_tune.flows.plan import (
    Resume,
    StoredExperiment,
    SweepPlan,
    continued_settings,
    resolve_run_storage,
)
from prefect_tune.flows.resources import on_dask
from prefect_tune.flows.results import ResultGrid
from prefect_tune.flows.schedulers import check_scheduler
from prefect_tune.flows.search import Searcher, check_search
from prefect_tune.flows.search_space import space_from_json, space_to_json, validate_space
from prefect_tune.storage import (
    Callback,
    CheckpointConfig,
    ConfigError,
    ExperimentStore,
    RunConfig,
    Storage,
    StorageError,
)
from prefect_tune.storage.config import StopCondition
from prefect_tune.storage.layout import default_experiment_name
from prefect_tune.storage.state import ExperimentRecord
from prefect_tune.tasks.forkserver import prestarted
from prefect_tune.tasks.trainable import is_class_trainable


class Tuner:
    """Run `trainable` over `param_space` as a Prefect flow.

    Args:
        trainable: A function taking the trial's config dict; it calls `report()`.
        param_space: The search space: plain values, nested dicts, and domains.
        tune_config: How to search and rank.
        run_config: Where to store and what to keep; default: the trainable's own
            `run_config` (a `Trainer`'s), else RunConfig().

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
        if run_config is None:  # a Trainer brings its own
            own = getattr(trainable, "run_config", None)
            run_config = own if isinstance(own, RunConfig) else RunConfig()
        if run_config.name is None:
            run_config = replace(run_config, name=default_experiment_name(
                trainable_name(trainable), datetime.now()))
        self.run_config = run_config
        check_trainable(trainable, run_config.checkpoint_config)
        check_scheduler(self.tune_config.scheduler, param_space, run_config.checkpoint_config)
        check_search(self.tune_config.searcher(), param_space, self.tune_config.num_samples,
                     self.tune_config.time_budget_s)
        self._stored: tuple[Storage, StoredExperiment] | None = None

    @property
    def trainable_name(self) -> str:
        return trainable_name(self.trainable)

    def fit(self) -> ResultGrid:
        """Run the sweep in a new flow run and return every trial's result.

        The flow run ends Failed when no trial finished, and "Completed with errors"
        when some errored; either way the grid is returned, errors in `grid.errors`.

        Raises:
            ConfigError: RunConfig(name=...) names an experiment that already exists
                (continue it with `Tuner.restore`).
        """
        tune = self.tune_config
        # the trials' warm worker loads while Prefect starts the flow run
        with prestarted() if tune.isolation == "process" and not on_dask(tune.task_runner) \
                else nullcontext(), prefect_api():
            state = tune_flow(self.plan())(return_state=True)
        result = state.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            raise result
        return cast(ResultGrid, result)

    def plan(self, storage: Storage | None = None) -> SweepPlan:
        """The sweep `fit()` runs, in `storage` (default: the RunConfig's, resolved now);
        the deployable `sweep` flow runs it in its own run."""
        stored = None
        if self._stored is not None:
            storage, stored = self._stored
        return SweepPlan(
            name=cast(str, self.run_config.name),
            trainable=self.trainable,
            trainable_name=self.trainable_name,
            param_space=self.param_space,
            tune_config=self.tune_config,
            run_config=self.run_config,
            storage=storage or resolve_run_storage(self.run_config),
            stored=stored,
        )

    @classmethod
    def continuing(
        cls, trainable: Callable[[dict[str, Any]], Any], store: ExperimentStore,
        record: ExperimentRecord, resume: Resume, run_config: RunConfig,
        task_runner: TaskRunner[Any] | None = None, search_alg: Searcher | None = None,
    ) -> Tuner:
        """A Tuner whose `fit()` continues the stored experiment `record` in `store` with
        its own settings (search space, sampling, checkpoints, failures, stop thresholds)
        and the `resume` policy; `run_config` gives a stop function, `task_runner` where
        trials run.

        Raises:
            ConfigError: the experiment was created with another trainable, or with a
                stop function `run_config` lacks.
        """
        tune_config, run_config = continued_settings(
            record, trainable_name(trainable), run_config, task_runner, search_alg
        )
        tuner = cls(trainable, param_space=space_from_json(dict(record.param_space)),
                    tune_config=tune_config, run_config=run_config)
        tuner._stored = (store.storage, StoredExperiment(record, resume))
        return tuner

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str],
        trainable: Callable[[dict[str, Any]], Any],
        *,
        resume_unfinished: bool = True,
        resume_errored: bool = False,
        restart_errored: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        stop: StopCondition = None,
        task_runner: TaskRunner[Any] | None = None,
        search_alg: Searcher | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> Tuner:
        """A Tuner that continues the experiment stored at `path` when `fit()` runs.

        Finished trials are kept, never re-run. Unfinished ones (running, pending or
        stopped when the sweep ended) resume under their ids from their latest checkpoint
        unless `resume_unfinished=False`, which marks them STOPPED. Errored ones stay
        errored unless `resume_errored` (from their latest checkpoint) or
        `restart_errored` (from scratch). The experiment's own settings are used.

        Args:
            path: The experiment directory: `<storage_path>/<name>`, a path or URL.
            trainable: The trainable the experiment was created with (same name).
            storage_options: fsspec options for `path` (credentials, endpoint).
            stop: The stop function the experiment was created with, if it had one
                (stop thresholds are stored with the experiment).
            task_runner: Where the trials run (see `TuneConfig.task_runner`).
            search_alg: The custom searcher the experiment was created with, if it had
                one (built-in searchers are stored with the experiment). The stored
                trials are replayed into it before it suggests more.
            callbacks: Tracking callbacks (see `RunConfig.callbacks`); not stored.

        Raises:
            ConfigError: no experiment at `path`, another trainable, or both
                `resume_errored` and `restart_errored`.
        """
        if resume_errored and restart_errored:
            raise ConfigError(
                "resume_errored and restart_errored are both set: choose one (resume from "
                "the latest checkpoint, or restart from scratch)"
            )
        store = experiment_store(path, storage_options)
        return cls.continuing(
            trainable, store, read_record(store, path),
            Resume(resume_unfinished, resume_errored, restart_errored),
            RunConfig(name=store.name, storage_path=store.storage.uri(store.storage.root),
                      storage_options=storage_options, stop=stop, callbacks=callbacks),
            task_runner, search_alg,
        )

    @staticmethod
    def can_restore(path: str | os.PathLike[str],
                    storage_options: Mapping[str, Any] | None = None) -> bool:
        """Whether `path` holds an experiment that `Tuner.restore` can read."""
        try:
            read_record(experiment_store(path, storage_options), path)
        except (ConfigError, StorageError):
            return False
        return True

    def get_results(self) -> ResultGrid:
        """Every trial's result as stored now, without running anything.

        Raises:
            ConfigError: the experiment does not exist (yet).
        """
        store = ExperimentStore(self.plan().storage, cast(str, self.run_config.name))
        return read_experiment(store).grid()


#: How long Prefect's ephemeral API server may take to start unless the user set a limit:
#: creating its database on a 2-core machine can take longer than Prefect's 20 s.
EPHEMERAL_STARTUP_SECONDS = 120


@contextmanager
def prefect_api() -> Iterator[None]:
    """Without a Prefect server of the user's (no PREFECT_API_URL), give Prefect's
    ephemeral one EPHEMERAL_STARTUP_SECONDS to start unless the user set a limit, and
    turn its failure to start into one ConfigError naming the setting."""
    if get_current_settings().api.url:
        yield
        return
    with temporary_settings(set_defaults={
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_SECONDS}):
        try:
            yield
        except RuntimeError as exc:
            if "ephemeral Prefect API server" not in str(exc):
                raise
            limit = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
            raise ConfigError(
                f"Prefect's ephemeral API server did not start within {limit:g} s "
                "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS): raise that setting, or "
                "start a server (prefect server start) and set PREFECT_API_URL"
            ) from None


def trainable_name(trainable: object) -> str:
    """The name experiments and trials of `trainable` are named after."""
    return str(getattr(trainable, "__name__", type(trainable).__name__))


def check_trainable(trainable: object, checkpoints: CheckpointConfig) -> None:
    """Refuse class-only checkpoint triggers for a function trainable.

    Raises:
        ConfigError: naming the setting and what a function does instead.
    """
    if inspect.isasyncgenfunction(trainable) or inspect.isasyncgenfunction(
        type(trainable).__call__  # a callable object's own method
    ):
        raise ConfigError(
            f"trainable {trainable_name(trainable)!r} is an async generator: use a function "
            "(or `async def`) that calls report() for each result, or a generator that "
            "yields them"
        )
    if is_class_trainable(trainable):
        return
    for name, value in (("checkpoint_frequency", checkpoints.checkpoint_frequency),
                        ("checkpoint_at_end", checkpoints.checkpoint_at_end)):
        if value:
            raise ConfigError(
                f"CheckpointConfig({name}={value!r}) applies to class trainables only: a "
                "function trainable decides itself when to checkpoint, by passing "
                "checkpoint=... to report(); remove the setting, or subclass Trainable"
            )


def tune_flow(plan: SweepPlan) -> Flow[[], State[Any]]:
    """The flow `Tuner.fit()` runs: named after the experiment, secrets kept out of its
    parameters (they show only the experiment, trainable and search space).

    Raises:
        ConfigError: trials ask for more resources than the machine (any Dask worker) has.
    """
    concurrency = plan.concurrency  # checked before anything runs

    @flow(
        name="sweep",
        flow_run_name=plan.name,
        task_runner=plan.tune_config.task_runner
        or cast(TaskRunner[Any], ThreadPoolTaskRunner(max_workers=concurrency)),
        persist_result=False,
    )
    def sweep(
        experiment: str = plan.name,
        trainable: str = plan.trainable_name,
        param_space: dict[str, Any] = space_to_json(plan.param_space),  # noqa: B008
        num_samples: int = plan.tune_config.num_samples,
    ) -> State[Any]:
        grid = run_sweep(plan)
        return final_state(grid, grid)

    return sweep
