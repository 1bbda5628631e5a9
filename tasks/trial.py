"""The trial task: one Prefect task run per trial, its attempts run isolated.

The task keeps the trial's state file (`trial.json`) current: RUNNING when an attempt
resumes a trial, then TERMINATED, ERROR (after its last attempt) or STOPPED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from prefect import State, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.runtime import task_run

from prefect_tune.storage import (
    CheckpointError,
    ConfigError,
    ExperimentStore,
    MetricError,
    StorageNotShared,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TrialStopped,
)
from prefect_tune.tasks.cards import post_card
from prefect_tune.tasks.child import run_in_child
from prefect_tune.tasks.devices import claim
from prefect_tune.tasks.execute import execute
from prefect_tune.tasks.plan import TrialPlan


@dataclass(frozen=True)
class TrialWork:
    """One trial to run: its spec, its outcome stored by an earlier run or segment (None
    for a new trial), whether to start it from scratch, and for a pausing scheduler the
    milestone of its scheduler's time_attr to pause at and which segment this is."""

    spec: TrialSpec
    prior: TrialOutcome | None = None
    restart: bool = False
    until: float | None = None
    segment: int = 0

    @property
    def label(self) -> str:
        """The task run's name: the trial's, and the segment after the first."""
        name = self.spec.trial_name
        return name if not self.segment else f"{name} (segment {self.segment + 1})"

    @property
    def prior_attempts(self) -> int:
        return 0 if self.restart or self.prior is None else self.prior.attempts


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
    """"<experiment>-<trial id>[-<segment>]": a finished trial's (or segment's) persisted
    outcome is found again by a retried flow run, which then shows it as Cached instead
    of running it; a resumed segment never finds the one before."""
    work = parameters["work"]
    segment = f"-{work.segment}" if work.segment else ""
    return f"{parameters['plan'].store.name}-{work.spec.trial_id}{segment}"


@task(
    name="trial",
    task_run_name="{work.label}",
    retry_condition_fn=should_retry,
    cache_key_fn=trial_cache_key,
    cache_result_in_memory=False,
)
def run_trial(plan: TrialPlan, work: TrialWork) -> TrialOutcome:
    """Run one attempt of the trial; Prefect retries run the next ones.

    Every attempt resumes from the trial's latest committed checkpoint; a finished trial
    (`work.prior` TERMINATED) is returned as it is, never run again.

    Raises:
        TrialError: the attempt failed (state file: ERROR after the last attempt).
        TrialStopped: the sweep stopped the trial (state file: STOPPED); raised, not
            returned, so that no cached outcome would skip it in a later run.
    """
    logger = get_run_logger()
    spec, store = work.spec, plan.store
    run_count = max(int(task_run.run_count), 1)
    attempt = work.prior_attempts + run_count
    if plan.marker is not None:
        store.check_marker(plan.marker, spec.trial_name)
    if work.prior is not None and work.prior.status is TrialStatus.TERMINATED \
            and not work.restart:
        return work.prior
    if plan.stop.is_set():
        _stopped(store, work.prior or _state(spec, TrialStatus.STOPPED, attempt - 1))
    if work.restart and run_count == 1:
        store.trial(spec.trial_name).clear_history()
    if work.prior is not None or attempt > 1:
        # A retry, or a trial an earlier run began: record that it runs again. A first
        # attempt needs no record (without trial.json a trial is unfinished; params.json
        # shows that it started).
        store.write_trial_state(_state(spec, TrialStatus.RUNNING, attempt))
    try:
        if plan.isolation != "thread" and not store.storage.is_in_memory:
            with claim(plan.resources.gpu if plan.resources else 0) as devices:
                outcome = run_in_child(plan, spec, attempt, logger, devices, work.until)
        else:
            outcome = execute(plan, spec, attempt, logger, work.until)
    except TrialStopped:
        logger.warning("trial %s stopped: the sweep is stopping", spec.trial_name)
        reached = _reached(plan, spec, attempt)
        post_card(plan, spec, attempt, replace(reached, status=TrialStatus.STOPPED))
        _stopped(store, reached)
    except TrialError as exc:
        limit = plan.max_failures
        last = not is_retryable(exc) or (limit >= 0 and run_count > limit)
        status = TrialStatus.ERROR if last else TrialStatus.RUNNING
        store.write_trial_state(replace(exc.outcome, status=status))
        post_card(plan, spec, attempt, exc.outcome, retried=not last)
        raise
    store.write_trial_state(outcome)
    post_card(plan, spec, attempt, outcome)
    return outcome


def _state(spec: TrialSpec, status: TrialStatus, attempts: int) -> TrialOutcome:
    return TrialOutcome(spec.trial_id, spec.trial_name, spec.config, status,
                        attempts=max(attempts, 0))


def _reached(plan: TrialPlan, spec: TrialSpec, attempt: int) -> TrialOutcome:
    """What a trial the sweep stopped had reached: its result rows and the checkpoints
    they record (a restore resumes it from the latest)."""
    trial = plan.store.trial(spec.trial_name)
    rows = trial.read_rows()
    if not rows:
        return _state(spec, TrialStatus.STOPPED, attempt)
    reached = trial.recover(spec, rows, plan.ranking, plan.checkpoint_config.num_to_keep)
    return replace(reached, attempts=attempt)


def _stopped(store: ExperimentStore, outcome: TrialOutcome) -> NoReturn:
    """Record the trial as STOPPED and end its task run."""
    store.write_trial_state(replace(outcome, status=TrialStatus.STOPPED))
    raise TrialStopped(f"trial {outcome.trial_name} was stopped by the sweep")
