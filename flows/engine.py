"""What a sweep does inside its flow run: one task run per trial.

`run_sweep` is the single code path every entry point uses; it must run inside a flow.
A new sweep writes experiment.json before any trial starts; a restore runs only the
trials `plan_trials` selects, under their old ids. At most `concurrency` trials are
submitted at a time, whatever the flow's task runner.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, cast
from uuid import UUID

from prefect import State, get_client, get_run_logger, tags
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from rich.console import Console

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.curves import CurveBoard
from prefect_tune.flows.events import SweepEvents
from prefect_tune.flows.live import LiveTable, is_interactive
from prefect_tune.flows.pausing import Planner, planner_for
from prefect_tune.flows.plan import Resume, SweepPlan, new_record, plan_trials
from prefect_tune.flows.progress import ProgressReporter
from prefect_tune.flows.resources import dask_resources, on_dask
from prefect_tune.flows.results import Result, ResultGrid, describe, metric_column
from prefect_tune.flows.suggest import Suggestions, replay
from prefect_tune.flows.watch import Watcher
from prefect_tune.storage import (
    Callback,
    CLIReporter,
    ConfigError,
    ExperimentBusy,
    ExperimentStore,
    RunConfig,
    StorageError,
    TrialError,
    TrialOutcome,
    TrialStatus,
    TrialStopped,
    TuneStorage,
)
from prefect_tune.storage.layout import PREFECT_RESULTS, new_trial_prefix
from prefect_tune.storage.scratch import clean_scratch
from prefect_tune.storage.state import ExperimentRecord
from prefect_tune.tasks import bookkeeping
from prefect_tune.tasks.cards import posting
from prefect_tune.tasks.forkserver import close_workers
from prefect_tune.tasks.plan import SchedulerRule, TrialPlan
from prefect_tune.tasks.trial import TrialWork, run_trial

#: Task retries standing for FailureConfig(max_failures=-1).
UNLIMITED = 2**31 - 1


def _open(plan: SweepPlan, store: ExperimentStore) -> tuple[ExperimentRecord, Resume | None]:
    """Create the experiment, or take the stored one to continue it.

    A flow-run retry (run_count > 1) of the run that created the experiment continues it.
    """
    if plan.stored is not None:
        return plan.stored.record, plan.stored.resume
    if store.exists():
        record = store.read_experiment()
        if flow_run.run_count > 1 and record.run.get("flow_run_id") == flow_run.id:
            return record, Resume(errored=True, finished=True)
        raise ConfigError(
            f"experiment {plan.name!r} already exists at {store.path}; continue it with "
            f"Tuner.restore({store.path!r}, trainable=...), or give RunConfig(name=...) "
            "a new name"
        )
    record = new_record(plan, flow_run.id)
    store.create(record)
    return record, None


def run_sweep(plan: SweepPlan) -> ResultGrid:
    """Probe storage, take the experiment's lease, run the selected trials as tasks, then
    write results and artifacts.

    Raises:
        ExperimentBusy: another run holds the experiment, or took it over mid-run (the
            trials were then stopped and no results were written).
    """
    logger = get_run_logger()
    _tag_flow_run(plan.name)
    store = ExperimentStore(plan.storage, plan.name)
    store.probe()
    lease = store.lease(str(flow_run.id) if flow_run.id else None, logger)
    stop, lost = threading.Event(), []

    def on_lost(error: ExperimentBusy) -> None:
        logger.error("%s; stopping the trials", error)
        lost.append(error)
        stop.set()

    try:
        lease.keep(on_lost)
        store.remove_leftovers()
        clean_scratch()
        return _sweep(plan, store, stop, lost)
    finally:
        lease.release()


def _sweep(plan: SweepPlan, store: ExperimentStore, stop: threading.Event,
           lost: list[ExperimentBusy]) -> ResultGrid:
    logger = get_run_logger()
    run, tune = plan.run_config, plan.tune_config
    record, resume = _open(plan, store)
    stored = store.read_outcomes(record.trials, plan.ranking,
                                 run.checkpoint_config.num_to_keep) if resume else []
    trials = plan_trials(record.trials, stored, resume)
    for outcome in trials.stopped:
        store.write_trial_state(outcome)
    source = _suggestions(plan, record, store)
    if resume:
        replay(source.searcher, record.trials,
               dict(zip([s.trial_id for s in record.trials], stored, strict=True)),
               {w.spec.trial_id for w in trials.work})
    scheduler = tune.bound_scheduler()
    max_failures = run.failure_config.max_failures
    trial_plan = TrialPlan(
        plan.trainable, store, run.checkpoint_config, plan.ranking,
        max_failures=max_failures, isolation=tune.isolation, stop_condition=run.stop,
        tensorboard=run.tensorboard, sync_config=run.sync_config,
        local_dir=cast(str | None, run.local_dir),  # a str after RunConfig's checks
        marker=store.mark(), resources=plan.resources, stop=stop,
        scheduler=cast(SchedulerRule | None, scheduler), cards=tune.trial_cards,
    )
    planner = planner_for(scheduler, trials.work, store,
                          [spec.trial_id for spec in record.trials], source, trials.kept)
    logger.info(
        "sweep %s: %s%s from %s, %d at a time, storage %s", plan.name,
        f"{len(record.trials)} trials so far ({len(trials.work)} to run), "
        if record.trials else "",
        f"up to {source.budget} trials" if source.budget else "trials until the search ends",
        type(source.searcher).__name__, plan.concurrency, store.path,
    )
    progress = bookkeeping.Progress(plan.name, source.budget)
    deadline = _deadline(tune.time_budget_s, stop)
    trial_task = run_trial.with_options(retries=UNLIMITED if max_failures < 0 else max_failures)
    # Trial outcomes persist beside the experiment, so a retried flow run finds them
    # wherever it runs. Task() insists on a saved block (for readers other than the task);
    # only the sweep reads these, and saving one would copy credentials into Prefect.
    trial_task.result_storage = TuneStorage.over(
        store.storage, store.layout.join(PREFECT_RESULTS)
    )
    outcomes = {o.trial_id: o for o in trials.kept + trials.stopped}
    failed_fast = False
    with _watching(store, run, tune, source.budget) as watcher:
        try:
            for outcome in _run_window(plan, trial_task, trial_plan, planner, source, watcher):
                outcomes[outcome.trial_id] = outcome
                source.ended(outcome)
                watcher.ended(outcome)
                progress.advance(len(outcomes),
                                 lambda: _counts(outcomes.values(), watcher.running))
                if run.failure_config.fail_fast and outcome.status is TrialStatus.ERROR \
                        and not stop.is_set():
                    logger.error("fail_fast: trial %s failed; stopping the sweep",
                                 outcome.trial_name)
                    stop.set()
                    failed_fast = True
        finally:
            if deadline is not None:
                deadline.cancel()
            watcher.stop()
            close_workers(trial_plan.sweep)  # those of other hosts (Dask) exit when idle
    if lost:
        raise lost[0]
    if failed_fast:  # what grid search had yet to start ends STOPPED, never started
        for item in source.rest():
            outcomes[item.spec.trial_id] = _record(store, item, TrialStatus.STOPPED)
    specs = (*record.trials, *source.added)
    progress.finish(_counts(outcomes.values(), 0))
    grid = ResultGrid([Result(outcomes[spec.trial_id], store) for spec in specs],
                      store.path, tune.metric, tune.mode, plan.ranking)
    frame = grid.get_dataframe()
    bookkeeping.write_results(store, frame)
    best = grid.best_or_none()
    bookkeeping.publish_results(plan.name, store, frame, best.outcome if best else None,
                                tune.metric, tune.mode,
                                metric_column(tune.metric) if tune.metric else None)
    watcher.finish(grid)
    logger.info("sweep %s finished: %s; results in %s", plan.name, describe(grid), store.path)
    return grid


@contextlib.contextmanager
def _watching(store: ExperimentStore, run: RunConfig, tune: TuneConfig,
              budget: int | None) -> Iterator[Watcher]:
    """The sweep's watcher: it tells the sweep's own callbacks (events, progress, curves)
    and the user's; a live table shows the progress on an interactive terminal, and a
    background thread posts the trials' cards."""
    shown: list[Callback] = [SweepEvents(tune.metric, tune.mode)]
    table: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if run.progress is not None:
        settings, console = cast(CLIReporter, run.progress), Console(stderr=True)
        live = is_interactive(console) if settings.live is None else settings.live
        reporter = ProgressReporter(tune.metric, tune.mode, settings, budget, live=live)
        shown.append(reporter)
        if live:
            table = LiveTable(reporter, settings, console)
    if tune.metric and tune.mode:
        shown.append(CurveBoard(tune.metric, tune.mode))
    cards = posting(UUID(str(flow_run.id))) if tune.trial_cards else contextlib.nullcontext()
    with table, cards:
        yield Watcher(store, [*shown, *run.callbacks])


def _counts(outcomes: Iterable[TrialOutcome], running: int) -> str:
    """How many trials run, ended and paused: the progress artifact's description."""
    statuses = Counter(o.status for o in outcomes)
    return (f"{running} running, {statuses[TrialStatus.TERMINATED]} terminated, "
            f"{statuses[TrialStatus.ERROR]} errored, {statuses[TrialStatus.STOPPED]} stopped, "
            f"{statuses[TrialStatus.PAUSED]} paused")


def final_state(grid: ResultGrid, data: Any) -> State[Any]:
    """The sweep's flow-run state, holding `data`: Failed when no trial finished,
    "Completed with errors" when some errored, else Completed; its message counts them."""
    message = describe(grid)
    if grid.num_terminated == 0:
        return Failed(message=f"no trial finished ({message})", data=data)
    if grid.num_errors:
        return Completed(name="Completed with errors", message=message, data=data)
    return Completed(message=message, data=data)


def _tag_flow_run(experiment: str) -> None:
    """Tag the running flow run with the experiment name (one API call, if it lacks it)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or experiment in context.flow_run.tags:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id,
                               tags=[*context.flow_run.tags, experiment])


def _suggestions(plan: SweepPlan, record: ExperimentRecord, store: ExperimentStore
                 ) -> Suggestions:
    """The sweep's source of new trials, its searcher set up for this experiment."""
    tune = plan.tune_config
    searcher = tune.searcher()
    searcher.set_search_properties(tune.metric, tune.mode, plan.param_space, seed=record.seed)
    prefix = record.trial_prefix or (record.trials[0].trial_id.rpartition("_")[0]
                                     if record.trials else new_trial_prefix())
    return Suggestions(searcher, store, plan.trainable_name, prefix, len(record.trials),
                       searcher.budget(tune.num_samples))


def _deadline(seconds: float | None, stop: threading.Event) -> threading.Timer | None:
    """A timer that stops the sweep after `seconds` (TuneConfig.time_budget_s)."""
    if seconds is None:
        return None
    logger = get_run_logger()

    def expire() -> None:
        logger.warning("time_budget_s=%g has run out: no new trial starts, the running "
                       "ones stop", seconds)
        stop.set()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def _run_window(
    plan: SweepPlan, trial_task: Any, trial_plan: TrialPlan, planner: Planner,
    source: Suggestions, watcher: Watcher,
) -> Iterator[TrialOutcome]:
    """Submit what `planner` chooses, at most `plan.concurrency` at a time, and yield
    each outcome as its trial (or segment) ends, and those of the trials the planner
    ends (a trial is submitted only when a slot frees up, so the UI shows running
    trials, not thousands of pending ones). When nothing runs and nothing starts, the
    search is over (`source.close()`) and the planner ends what it holds. Once the
    sweep stops (fail_fast, the time budget), the trials not yet started are recorded
    STOPPED without starting."""
    finished: queue.SimpleQueue[PrefectFuture[Any]] = queue.SimpleQueue()
    running: dict[PrefectFuture[Any], TrialWork] = {}
    store, stop = trial_plan.store, trial_plan.stop

    def fill() -> None:
        while len(running) < plan.concurrency and not stop.is_set():
            item = planner.next()
            if item is None:
                return
            with tags(*([plan.name] if plan.tune_config.tag_trials else [])), \
                    _dask_placement(plan):
                future = trial_task.submit(trial_plan, item)
            running[future] = item
            future.add_done_callback(finished.put)
            watcher.started(item.spec)

    yield from (_store(store, ended) for ended in planner.restored())
    fill()
    while running or not stop.is_set():
        if not running:  # nothing runs and nothing could start
            if not source.exhausted:
                source.close()
                fill()
                continue
            yield from (_store(store, ended) for ended in planner.finish())
            fill()
            if not running:
                break
            continue
        future = finished.get()
        item = running.pop(future)
        outcome = _outcome(future, item, store)
        yield outcome
        yield from (_store(store, ended) for ended in planner.ended(outcome))
        fill()
    for item in planner.unstarted():  # the sweep stopped (fail_fast): these never start
        yield _record(store, item, TrialStatus.STOPPED)


def _store(store: ExperimentStore, outcome: TrialOutcome) -> TrialOutcome:
    """Record `outcome`, which the sweep decided; a storage fault is logged."""
    try:
        store.write_trial_state(outcome)
    except StorageError as exc:
        get_run_logger().error("could not record trial %s as %s: %s", outcome.trial_name,
                               outcome.status.value, exc)
    return outcome


def _dask_placement(plan: SweepPlan) -> contextlib.AbstractContextManager[Any]:
    """On Dask, trials asking for resources take them from the worker that runs them."""
    resources = plan.resources
    if resources is None or not on_dask(plan.tune_config.task_runner):
        return contextlib.nullcontext()
    from dask.base import annotate

    return annotate(resources=dask_resources(resources))


def _record(store: ExperimentStore, work: TrialWork, status: TrialStatus,
            error: str | None = None) -> TrialOutcome:
    """Record, for a trial that could not, that it ended `status`; what its stored
    record holds (attempts, metrics, checkpoints) is kept. A storage fault here is
    logged: it fails this trial's record, never the sweep."""
    spec = work.spec
    try:
        stored = store.read_trial_state(spec)
    except StorageError as exc:
        get_run_logger().error("%s", exc)
        stored = None
    base = stored or work.prior or \
        TrialOutcome(spec.trial_id, spec.trial_name, spec.config, status, attempts=0)
    return _store(store, replace(base, status=status, error=error or base.error))


def _outcome(future: PrefectFuture[Any], work: TrialWork, store: ExperimentStore
             ) -> TrialOutcome:
    try:
        return cast(TrialOutcome, future.result())
    except TrialError as exc:
        return exc.outcome
    except TrialStopped:  # the trial recorded itself as STOPPED
        spec = work.spec
        try:
            stored = store.read_trial_state(spec)
        except StorageError:
            stored = None
        return stored or TrialOutcome(spec.trial_id, spec.trial_name, spec.config,
                                      TrialStatus.STOPPED)
    except Exception as exc:  # noqa: BLE001 - a crashed trial must not end the sweep
        # The task failed before it could record itself (its host cannot see the
        # storage, or its worker died): the sweep records it.
        return _record(store, work, TrialStatus.ERROR, f"{type(exc).__name__}: {exc}")
