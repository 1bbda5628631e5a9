"""What a sweep does inside its flow run: one task run per trial.

`run_sweep` is the single code path every entry point uses; it must run inside a flow.
A new sweep writes experiment.json before any trial starts; a restore reads it back and
runs only the trials its `Resume` policy selects, under their old ids. At most
`concurrency` trials are submitted at a time, whatever the flow's task runner.
"""

from __future__ import annotations

import os
import queue
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from prefect import get_client, get_run_logger, tags
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.results import Result, ResultGrid
from prefect_tune.flows.search_space import generate_configs, space_to_json
from prefect_tune.storage import (
    CheckpointConfig,
    ConfigError,
    ExperimentStore,
    FailureConfig,
    RunConfig,
    Storage,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TrialStopped,
    TuneStorage,
    resolve_storage,
    storage_from_block,
)
from prefect_tune.storage.config import DEFAULT_STORAGE_PATH, StopCondition
from prefect_tune.storage.layout import PREFECT_RESULTS, new_trial_prefix, trial_id, trial_name
from prefect_tune.storage.state import ExperimentRecord
from prefect_tune.tasks import bookkeeping
from prefect_tune.tasks.trial import TrialSettings, run_trial

#: Task retries standing for FailureConfig(max_failures=-1).
UNLIMITED = 2**31 - 1


@dataclass(frozen=True)
class Resume:
    """Which trials a restore runs again, by their stored status.

    Finished (TERMINATED) trials are kept unless `finished`, which resubmits them so that
    Prefect returns their cached outcome (a flow-run retry shows them as Cached).
    """

    unfinished: bool = True
    errored: bool = False
    restart_errored: bool = False
    finished: bool = False


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep, ready to run; `resume` set means: continue the stored one."""

    name: str
    trainable: Callable[[dict[str, Any]], Any]
    trainable_name: str
    param_space: Mapping[str, Any]
    tune_config: TuneConfig
    run_config: RunConfig
    resume: Resume | None = None

    @property
    def concurrency(self) -> int:
        return self.tune_config.max_concurrent_trials or os.cpu_count() or 1


def resolve_run_storage(run_config: RunConfig) -> Storage:
    """The storage a RunConfig names: its block, its path, or the default path."""
    if run_config.storage_block is not None:
        return storage_from_block(run_config.storage_block)
    return resolve_storage(run_config.target or DEFAULT_STORAGE_PATH,
                           run_config.storage_options)


def checkpoint_ranking(tune: TuneConfig, checkpoints: CheckpointConfig) -> tuple[str | None, str]:
    """What ranks a trial's checkpoints: the checkpoint score attribute and order, else
    the sweep's metric and mode (None: recency)."""
    if checkpoints.checkpoint_score_attribute:
        return checkpoints.checkpoint_score_attribute, checkpoints.checkpoint_score_order
    return tune.metric, tune.mode or "max"


def new_record(plan: SweepPlan) -> ExperimentRecord:
    """The state of a new experiment: sampled configs under fresh, id-based names."""
    tune = plan.tune_config
    seed = tune.seed if tune.seed is not None else random.SystemRandom().randrange(2**32)
    configs = generate_configs(plan.param_space, tune.num_samples, random.Random(seed))
    prefix = new_trial_prefix()
    ids = [trial_id(prefix, i) for i in range(len(configs))]
    return ExperimentRecord(
        trainable=plan.trainable_name,
        seed=seed,
        param_space=space_to_json(plan.param_space),
        trials=tuple(
            TrialSpec(tid, trial_name(plan.trainable_name, tid), config)
            for tid, config in zip(ids, configs, strict=True)
        ),
        tune=tune.stored(),
        run={
            "checkpoint_config": asdict(plan.run_config.checkpoint_config),
            "failure_config": asdict(plan.run_config.failure_config),
            "stop": stop_to_json(plan.run_config.stop),
            "flow_run_id": flow_run.id,
        },
    )


def stop_to_json(stop: StopCondition) -> dict[str, Any] | None:
    """How experiment.json records a stop condition: its thresholds, or the name of its
    function (which a restore must be given again)."""
    if stop is None or isinstance(stop, Mapping):
        return None if stop is None else {"thresholds": dict(stop)}
    return {"function": getattr(stop, "__qualname__", repr(stop))}


def stored_configs(record: ExperimentRecord) -> tuple[TuneConfig, CheckpointConfig, FailureConfig]:
    """The settings a stored experiment was created with."""
    return (
        TuneConfig(**record.tune),
        CheckpointConfig(**record.run["checkpoint_config"]),
        FailureConfig(**record.run["failure_config"]),
    )


def _open(plan: SweepPlan, store: ExperimentStore) -> tuple[ExperimentRecord, Resume | None]:
    """Create the experiment, or read it back to continue it.

    A flow-run retry (run_count > 1) of the run that created the experiment continues it.
    """
    resume = plan.resume
    if resume is None and store.exists():
        record = store.read_experiment()
        if flow_run.run_count > 1 and record.run.get("flow_run_id") == flow_run.id:
            return record, Resume(errored=True, finished=True)
        raise ConfigError(
            f"experiment {plan.name!r} already exists at {store.path}; continue it with "
            f"Tuner.restore({store.path!r}, trainable=...), or give RunConfig(name=...) "
            "a new name"
        )
    if resume is None:
        record = new_record(plan)
        store.create(record)
        return record, None
    return store.read_experiment(), resume


def run_sweep(plan: SweepPlan) -> ResultGrid:
    """Probe storage, run the selected trials as tasks, then write results and artifacts."""
    logger = get_run_logger()
    _tag_flow_run(plan.name)
    run = plan.run_config
    store = ExperimentStore(resolve_run_storage(run), plan.name, tensorboard=run.tensorboard,
                            sync_config=run.sync_config, local_dir=run.local_dir)
    store.probe()
    record, resume = _open(plan, store)
    marker = store.mark()
    tune, checkpoints = plan.tune_config, plan.run_config.checkpoint_config
    score_attribute, score_order = checkpoint_ranking(tune, checkpoints)
    max_failures = plan.run_config.failure_config.max_failures
    settings = TrialSettings(
        plan.trainable, store, checkpoints, score_attribute, score_order,
        max_failures=max_failures, isolation=tune.isolation,
        stop_condition=plan.run_config.stop, marker=marker,
    )
    kept, work = _select(store, record, resume)
    logger.info(
        "sweep %s: %d trials (%d to run), %d at a time, storage %s",
        plan.name, len(record.trials), len(work), plan.concurrency, store.path,
    )
    progress = bookkeeping.Progress(plan.name, len(record.trials))
    trial_task = run_trial.with_options(retries=UNLIMITED if max_failures < 0 else max_failures)
    # Trial outcomes persist beside the experiment, so a retried flow run finds them
    # wherever it runs. Task() insists on a saved block (for readers other than the task);
    # only the sweep reads these, and saving one would copy credentials into Prefect.
    trial_task.result_storage = TuneStorage.over(
        store.storage, store.layout.join(PREFECT_RESULTS)
    )
    outcomes = dict(kept)
    fail_fast = plan.run_config.failure_config.fail_fast
    for outcome in _run_window(plan, trial_task, settings, work):
        outcomes[outcome.trial_id] = outcome
        progress.advance(len(outcomes))
        if fail_fast and outcome.status is TrialStatus.ERROR and not settings.stop.is_set():
            logger.error("fail_fast: trial %s failed; stopping the sweep", outcome.trial_name)
            settings.stop.set()
    ordered = [outcomes[spec.trial_id] for spec in record.trials]
    frame = bookkeeping.results_frame(ordered, store, score_attribute, score_order)
    bookkeeping.write_results(store, frame)
    best = bookkeeping.best_outcome(ordered, tune.metric, tune.mode)
    bookkeeping.publish_results(plan.name, store, frame, best, tune.metric, tune.mode)
    counts = {s: sum(o.status is s for o in ordered) for s in TrialStatus}
    logger.info(
        "sweep %s finished: %d terminated, %d errored, %d stopped; results in %s",
        plan.name, counts[TrialStatus.TERMINATED], counts[TrialStatus.ERROR],
        counts[TrialStatus.STOPPED], store.path,
    )
    return ResultGrid([Result(o, store) for o in ordered], store.path, tune.metric, tune.mode,
                      (score_attribute, score_order))


Work = tuple[TrialSpec, int, bool]


def _tag_flow_run(experiment: str) -> None:
    """Tag the running flow run with the experiment name (one API call, if it lacks it)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or experiment in context.flow_run.tags:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id,
                               tags=[*context.flow_run.tags, experiment])


def _run_window(
    plan: SweepPlan, trial_task: Any, settings: TrialSettings, work: list[Work]
) -> Iterator[TrialOutcome]:
    """Submit the trials, at most `plan.concurrency` at a time, and yield each outcome as
    its trial ends (a trial is submitted only when a slot frees up, so the UI shows
    running trials, not thousands of pending ones). Once the sweep stops (fail_fast), the
    trials not yet submitted are recorded STOPPED without starting."""
    finished: queue.SimpleQueue[PrefectFuture[Any]] = queue.SimpleQueue()
    running: dict[PrefectFuture[Any], TrialSpec] = {}
    queued = iter(work)

    def submit_next() -> None:
        item = next(queued, None)
        if item is None:
            return
        spec, prior, restart = item
        with tags(*([plan.name] if plan.tune_config.tag_trials else [])):
            future = trial_task.submit(settings, spec, prior, restart)
        running[future] = spec
        future.add_done_callback(finished.put)

    for _ in range(plan.concurrency):
        submit_next()
    while running:
        future = finished.get()
        yield _outcome(future, running.pop(future), settings.store)
        if not settings.stop.is_set():
            submit_next()
    for spec, _, _ in queued:  # the sweep stopped (fail_fast): these never start
        store = settings.store
        yield _record(store, spec, store.read_trial_state(spec), TrialStatus.STOPPED)


def _select(
    store: ExperimentStore, record: ExperimentRecord, resume: Resume | None
) -> tuple[dict[str, TrialOutcome], list[Work]]:
    """Split the trials into kept outcomes and work: (spec, prior attempts, restart)."""
    if resume is None:
        return {}, [(spec, 0, False) for spec in record.trials]
    kept: dict[str, TrialOutcome] = {}
    work: list[Work] = []
    for spec, stored in zip(record.trials, store.read_trial_states(record.trials), strict=True):
        status = stored.status if stored is not None else TrialStatus.PENDING
        prior = stored.attempts if stored is not None else 0
        if status is TrialStatus.TERMINATED:
            if resume.finished:
                work.append((spec, prior, False))
            else:
                kept[spec.trial_id] = cast(TrialOutcome, stored)
        elif status is TrialStatus.ERROR:
            if resume.restart_errored:
                work.append((spec, 0, True))
            elif resume.errored:
                work.append((spec, prior, False))
            else:
                kept[spec.trial_id] = cast(TrialOutcome, stored)
        elif resume.unfinished:
            work.append((spec, prior, False))
        else:
            kept[spec.trial_id] = _record(store, spec, stored, TrialStatus.STOPPED)
    return kept, work


def _record(
    store: ExperimentStore, spec: TrialSpec, stored: TrialOutcome | None,
    status: TrialStatus, error: str | None = None,
) -> TrialOutcome:
    """Record, for a trial that could not, that it ended `status`; what its stored
    record holds (attempts, metrics, checkpoints) is kept."""
    base = stored or TrialOutcome(spec.trial_id, spec.trial_name, spec.config, status)
    outcome = replace(base, status=status, error=error or base.error)
    store.write_trial_state(outcome)
    return outcome


def _outcome(
    future: PrefectFuture[Any], spec: TrialSpec, store: ExperimentStore
) -> TrialOutcome:
    try:
        return cast(TrialOutcome, future.result())
    except TrialError as exc:
        return exc.outcome
    except TrialStopped:  # the trial recorded itself as STOPPED
        return store.read_trial_state(spec) or TrialOutcome(
            spec.trial_id, spec.trial_name, spec.config, TrialStatus.STOPPED
        )
    except Exception as exc:  # noqa: BLE001 - a crashed trial must not end the sweep
        # The task failed before it could record itself (its host cannot see the
        # storage, or its worker died): the sweep records it.
        return _record(store, spec, store.read_trial_state(spec), TrialStatus.ERROR,
                       f"{type(exc).__name__}: {exc}")
