"""The trial task: one Prefect task run per trial, its attempts run isolated.

The task keeps the trial's state file (`trial.json`) current: RUNNING when an attempt
starts, then TERMINATED, ERROR (after its last attempt) or STOPPED. A trial already
TERMINATED in storage is returned as it is and never run again, whoever submits it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NoReturn

from prefect import State, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.runtime import task_run

from prefect_tune.storage import (
    CheckpointConfig,
    CheckpointError,
    ConfigError,
    ExperimentStore,
    MetricError,
    StorageMarker,
    StorageNotShared,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TrialStopped,
)
from prefect_tune.storage.config import StopCondition
from prefect_tune.tasks.child import run_in_child
from prefect_tune.tasks.execute import TrialJob, execute

Isolation = Literal["process", "thread"]


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one sweep shares.

    `isolation="process"` runs each attempt in a child process (a hard death is a retried
    failure); "thread" runs it in the task's thread, for trials too small to pay for a
    process start. `stop_condition` ends a trial as finished (RunConfig.stop); `stop`,
    once set, stops the sweep's trials (fail_fast).
    """

    trainable: Callable[[dict[str, Any]], Any]
    store: ExperimentStore
    checkpoint_config: CheckpointConfig
    score_attribute: str | None
    score_order: str
    max_failures: int = 0
    isolation: Isolation = "process"
    stop_condition: StopCondition = None
    marker: StorageMarker | None = None
    stop: threading.Event = field(default_factory=threading.Event, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the stop event, which cannot leave this process: trials sent to
        other processes (a Dask worker) get an event of their own, never set."""
        return {k: v for k, v in self.__dict__.items() if k != "stop"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, stop=threading.Event())


def is_retryable(error: BaseException) -> bool:
    """Deterministic errors (bad metric, checkpoint or config; storage this host cannot
    see) fail the same way again, and a stopped trial is not to run again in this sweep."""
    if isinstance(error, (TrialStopped, StorageNotShared)):
        return False
    cause = error.__cause__ if isinstance(error, TrialError) else error
    return not isinstance(cause, (MetricError, CheckpointError, ConfigError))


def should_retry(task: Any, task_run: Any, state: State[Any]) -> bool:
    return is_retryable(state.result(raise_on_failure=False))


def trial_cache_key(context: TaskRunContext, parameters: Mapping[str, Any]) -> str:
    """"<experiment>-<trial id>": a finished trial's persisted outcome is found again by
    a retried flow run, which then shows it as Cached instead of running it."""
    return f"{parameters['settings'].store.name}-{parameters['spec'].trial_id}"


@task(
    name="trial",
    task_run_name="{spec.trial_name}",
    retry_condition_fn=should_retry,
    cache_key_fn=trial_cache_key,
    cache_result_in_memory=False,
)
def run_trial(
    settings: TrialSettings, spec: TrialSpec, prior_attempts: int = 0, restart: bool = False
) -> TrialOutcome:
    """Run one attempt of trial `spec`; Prefect retries run the next ones.

    Every attempt resumes from the trial's latest committed checkpoint. `prior_attempts`
    counts attempts of earlier runs (a restore); `restart` starts the trial from scratch.

    Raises:
        TrialError: the attempt failed (state file: ERROR after the last attempt).
        TrialStopped: the sweep stopped the trial (state file: STOPPED); raised, not
            returned, so that no cached outcome would skip it in a later run.
    """
    logger = get_run_logger()
    store = settings.store
    run_count = max(int(task_run.run_count), 1)
    attempt = prior_attempts + run_count
    if settings.marker is not None:
        store.check_marker(settings.marker, spec.trial_name)
    stored = store.read_trial_state(spec)
    if stored is not None and stored.status is TrialStatus.TERMINATED and not restart:
        return stored
    if settings.stop.is_set():
        _stopped(store, stored or _state(spec, TrialStatus.STOPPED, attempt - 1))
    if restart and run_count == 1:
        store.clear_history(spec.trial_name)
    if stored is not None or attempt > 1:
        # A retry, or a trial an earlier run began: record that it runs again. A first
        # attempt needs no record (without trial.json a trial is unfinished; params.json
        # shows that it started).
        store.write_trial_state(_state(spec, TrialStatus.RUNNING, attempt))
    job = TrialJob(
        settings.trainable, store, spec, settings.checkpoint_config,
        settings.score_attribute, settings.score_order, attempt, settings.stop_condition,
    )
    try:
        if settings.isolation == "process" and not store.storage.is_in_memory:
            outcome = run_in_child(job, logger, settings.stop)
        else:
            outcome = execute(job, logger, settings.stop)
    except TrialStopped:
        logger.warning("trial %s stopped: the sweep is stopping (fail_fast)", spec.trial_name)
        _stopped(store, _state(spec, TrialStatus.STOPPED, attempt))
    except TrialError as exc:
        limit = settings.max_failures
        last = not is_retryable(exc) or (limit >= 0 and run_count > limit)
        status = TrialStatus.ERROR if last else TrialStatus.RUNNING
        store.write_trial_state(replace(exc.outcome, status=status))
        raise
    store.write_trial_state(outcome)
    return outcome


def _state(spec: TrialSpec, status: TrialStatus, attempts: int) -> TrialOutcome:
    return TrialOutcome(spec.trial_id, spec.trial_name, spec.config, status,
                        attempts=max(attempts, 0))


def _stopped(store: ExperimentStore, outcome: TrialOutcome) -> NoReturn:
    """Record the trial as STOPPED and end its task run."""
    store.write_trial_state(replace(outcome, status=TrialStatus.STOPPED))
    raise TrialStopped(f"trial {outcome.trial_name} was stopped by the sweep (fail_fast)")
