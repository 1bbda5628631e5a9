"""The trial task: one Prefect task run per trial."""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect import State, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from prefect_tune.storage import (
    CheckpointConfig,
    CheckpointError,
    ConfigError,
    ExperimentStore,
    MetricError,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
)
from prefect_tune.tasks.session import _SESSION, TrialSession


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one sweep shares."""

    trainable: Callable[[dict[str, Any]], Any]
    store: ExperimentStore
    checkpoint_config: CheckpointConfig
    score_attribute: str | None
    score_order: str


def should_retry(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry a failed trial unless its error is deterministic (bad metric or checkpoint)."""
    error = state.result(raise_on_failure=False)
    cause = error.__cause__ if isinstance(error, TrialError) else error
    return not isinstance(cause, (MetricError, CheckpointError, ConfigError))


@task(
    name="trial",
    task_run_name="{spec.trial_name}",
    persist_result=False,
    cache_policy=NO_CACHE,
    retry_condition_fn=should_retry,
)
def run_trial(settings: TrialSettings, spec: TrialSpec) -> TrialOutcome:
    """Run `settings.trainable(config)` as trial `spec` and return its outcome.

    A retry (attempt > 1) resumes from the trial's latest committed checkpoint, and
    its result history is cut back to that checkpoint.

    Raises:
        TrialError: the trainable (or the trial's storage) failed; carries the outcome,
            and the failure is appended to the trial's error.txt.
    """
    logger = get_run_logger()
    store = settings.store
    attempt = max(int(task_run.run_count), 1)
    session = TrialSession(
        store,
        spec,
        checkpoint_config=settings.checkpoint_config,
        score_attribute=settings.score_attribute,
        score_order=settings.score_order,
        attempt=attempt,
        logger=logger,
        resume=store.resume_point(spec.trial_name) if attempt > 1 else None,
    )
    restored = session.restored
    logger.info(
        "trial %s attempt %d %s: %s", spec.trial_name, attempt,
        f"resumed from {restored.path.rsplit('/', 1)[-1]}" if restored else "started fresh",
        session.context.trial_path,
    )
    token = _SESSION.set(session)
    try:
        store.write_params(spec.trial_name, spec.config)
        returned = settings.trainable(copy.deepcopy(dict(spec.config)))
        if isinstance(returned, Mapping):
            session.report(returned, None)
        session.close()
    except Exception as exc:
        error = traceback.format_exc()
        _record_failure(session, error, logger)
        logger.error("trial %s failed: %s: %s", spec.trial_name, type(exc).__name__, exc)
        raise TrialError(session.outcome(TrialStatus.ERROR, error)) from exc
    finally:
        _SESSION.reset(token)
    outcome = session.outcome(TrialStatus.TERMINATED)
    logger.info(
        "trial %s finished after %d reports%s", spec.trial_name, outcome.num_reports,
        f"; best {settings.score_attribute}={outcome.best_score}"
        if outcome.best_score is not None else "",
    )
    return outcome


def _record_failure(session: TrialSession, error: str, logger: Any) -> None:
    """Flush what the failed trial reported and append `error` to its error.txt.

    A second (storage) error is logged, not raised: the trial's own failure is what counts.
    """
    try:
        session.close()
        session.store.append_error(session.spec.trial_name, error)
    except Exception as exc:  # noqa: BLE001 - must not hide the trial's own error
        logger.warning("could not record the failure of %s: %s", session.spec.trial_name, exc)
