"""The sweep: one Prefect flow run per experiment, one task run per trial.

`run_sweep` is the single code path every entry point uses; it must run inside a flow.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from prefect import Flow, flow, get_run_logger, tags
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.results import Result, ResultGrid
from prefect_tune.flows.search_space import generate_configs, space_to_json
from prefect_tune.storage import (
    ExperimentStore,
    RunConfig,
    Storage,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    resolve_storage,
    storage_from_block,
)
from prefect_tune.storage.config import DEFAULT_STORAGE_PATH
from prefect_tune.storage.layout import new_trial_prefix, trial_id, trial_name
from prefect_tune.tasks import bookkeeping
from prefect_tune.tasks.trial import TrialSettings, run_trial

#: Task retries standing for FailureConfig(max_failures=-1).
UNLIMITED = 2**31 - 1


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep, ready to run."""

    name: str
    trainable: Callable[[dict[str, Any]], Any]
    trainable_name: str
    param_space: Mapping[str, Any]
    tune_config: TuneConfig
    run_config: RunConfig

    @property
    def concurrency(self) -> int:
        return self.tune_config.max_concurrent_trials or os.cpu_count() or 1


def resolve_run_storage(run_config: RunConfig) -> Storage:
    """The storage a RunConfig names: its block, its path, or the default path."""
    if run_config.storage_block is not None:
        return storage_from_block(run_config.storage_block)
    return resolve_storage(
        run_config.storage_path or DEFAULT_STORAGE_PATH, run_config.storage_options
    )


def plan_trials(plan: SweepPlan) -> list[TrialSpec]:
    """The trials of a sweep: sampled configs under fresh, id-based names."""
    seed = plan.tune_config.seed
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    configs = generate_configs(plan.param_space, plan.tune_config.num_samples, random.Random(seed))
    prefix = new_trial_prefix()
    ids = [trial_id(prefix, i) for i in range(len(configs))]
    return [
        TrialSpec(tid, trial_name(plan.trainable_name, tid), config)
        for tid, config in zip(ids, configs, strict=True)
    ]


def run_sweep(plan: SweepPlan) -> ResultGrid:
    """Probe storage, run every trial as a task, then write results and artifacts."""
    logger = get_run_logger()
    store = ExperimentStore(resolve_run_storage(plan.run_config), plan.name)
    store.probe()
    specs = plan_trials(plan)
    tune, checkpoints = plan.tune_config, plan.run_config.checkpoint_config
    score_attribute = checkpoints.checkpoint_score_attribute or tune.metric
    score_order = checkpoints.checkpoint_score_order if checkpoints.checkpoint_score_attribute \
        else (tune.mode or "max")
    settings = TrialSettings(plan.trainable, store, checkpoints, score_attribute, score_order)
    logger.info(
        "sweep %s: %d trials, %d at a time, storage %s",
        plan.name, len(specs), plan.concurrency, store.path,
    )
    progress = bookkeeping.start_progress(plan.name)
    max_failures = plan.run_config.failure_config.max_failures
    trial_task = run_trial.with_options(retries=UNLIMITED if max_failures < 0 else max_failures)
    with tags(plan.name):
        futures = {trial_task.submit(settings, spec): spec for spec in specs}
    outcomes: dict[str, TrialOutcome] = {}
    for done, future in enumerate(as_completed(list(futures)), 1):
        outcome = _outcome(future, futures[future])
        outcomes[outcome.trial_id] = outcome
        bookkeeping.advance_progress(progress, done, len(specs))
    ordered = [outcomes[spec.trial_id] for spec in specs]
    frame = bookkeeping.results_frame(ordered, store, score_attribute, score_order)
    bookkeeping.write_results(store, frame)
    best = bookkeeping.best_outcome(ordered, tune.metric, tune.mode)
    bookkeeping.publish_results(plan.name, store, frame, best, tune.metric, tune.mode)
    logger.info(
        "sweep %s finished: %d terminated, %d errored; results in %s",
        plan.name, sum(o.status is TrialStatus.TERMINATED for o in ordered),
        sum(o.status is TrialStatus.ERROR for o in ordered), store.path,
    )
    return ResultGrid(
        [Result(o, store) for o in ordered], store.path, tune.metric, tune.mode
    )


def _outcome(future: PrefectFuture[TrialOutcome], spec: TrialSpec) -> TrialOutcome:
    try:
        return future.result()
    except TrialError as exc:
        return exc.outcome
    except Exception as exc:  # noqa: BLE001 - a crashed trial must not end the sweep
        return TrialOutcome(
            spec.trial_id, spec.trial_name, spec.config, TrialStatus.ERROR,
            error=f"{type(exc).__name__}: {exc}",
        )


def tune_flow(plan: SweepPlan) -> Flow[[], ResultGrid]:
    """The flow `Tuner.fit()` runs: named after the experiment, secrets kept out of its
    parameters (they show only the experiment, trainable and search space)."""

    @flow(
        name="sweep",
        flow_run_name=plan.name,
        task_runner=cast(TaskRunner[Any], ThreadPoolTaskRunner(max_workers=plan.concurrency)),
        persist_result=False,
    )
    def sweep(
        experiment: str = plan.name,
        trainable: str = plan.trainable_name,
        param_space: dict[str, Any] = space_to_json(plan.param_space),  # noqa: B008
        num_samples: int = plan.tune_config.num_samples,
    ) -> ResultGrid:
        return run_sweep(plan)

    return sweep
