"""One attempt of one trial, run in the current process.

This is the body both isolation modes share: the trial task calls it in its own thread
(`isolation="thread"`), or a child process calls it (`isolation="process"`). Nothing here
imports Prefect, so a child process starts in a fraction of a second.
"""

from __future__ import annotations

import copy
import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from prefect_tune.storage import (
    CheckpointConfig,
    ExperimentStore,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TrialStopped,
)
from prefect_tune.storage.config import StopCondition
from prefect_tune.tasks.session import _SESSION, TrialDone, TrialSession
from prefect_tune.tasks.trainable import Trainable, drive, is_class_trainable

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class TrialJob:
    """One attempt of one trial; picklable, so a child process can run it."""

    trainable: Callable[[dict[str, Any]], Any]
    store: ExperimentStore
    spec: TrialSpec
    checkpoint_config: CheckpointConfig
    score_attribute: str | None
    score_order: str
    attempt: int
    stop_condition: StopCondition = None


def execute(job: TrialJob, logger: Logger, stop: threading.Event | None = None) -> TrialOutcome:
    """Run `job.trainable(config)` (or drive a class trainable) as this attempt of the
    trial, until it returns or meets the stop condition.

    The attempt resumes from what the trial's directory holds: its latest committed and
    recorded checkpoint, with the result history cut back to it; a new trial starts fresh.

    Raises:
        TrialError: the trainable or the trial's storage failed; the traceback was
            appended to the trial's error.txt, and `__cause__` is the original error.
        TrialStopped: `stop` was set while the trial ran.
    """
    spec, store = job.spec, job.store
    session: TrialSession | None = None
    try:
        session = TrialSession(
            store,
            spec,
            checkpoint_config=job.checkpoint_config,
            score_attribute=job.score_attribute,
            score_order=job.score_order,
            attempt=job.attempt,
            logger=logger,
            resume=store.resume_point(spec.trial_name),
            stop=stop,
            stop_condition=job.stop_condition,
        )
        restored = session.restored
        logger.info(
            "trial %s attempt %d %s: %s", spec.trial_name, job.attempt,
            f"resumed from {restored.path.rsplit('/', 1)[-1]}" if restored else "started fresh",
            session.context.trial_path,
        )
        store.write_params(spec.trial_name, spec.config)
        token = _SESSION.set(session)
        config = copy.deepcopy(dict(spec.config))
        try:
            if is_class_trainable(job.trainable):
                drive(cast(type[Trainable], job.trainable), config, session,
                      job.checkpoint_config)
            else:
                returned = job.trainable(config)
                if isinstance(returned, Mapping):
                    session.report(returned, None)
        except TrialDone:
            pass  # the stop condition ended the trial
        finally:
            _SESSION.reset(token)
        session.close()
    except TrialStopped:
        if session is not None:
            _quietly(session.close, logger)
        raise
    except Exception as exc:
        error = traceback.format_exc()
        if session is not None:
            _quietly(session.close, logger)
        _quietly(lambda: store.append_error(spec.trial_name, error), logger)
        logger.error("trial %s failed: %s: %s", spec.trial_name, type(exc).__name__, exc)
        outcome = session.outcome(TrialStatus.ERROR, error) if session is not None else \
            TrialOutcome(spec.trial_id, spec.trial_name, spec.config, TrialStatus.ERROR,
                         error=error, attempts=job.attempt)
        raise TrialError(outcome) from exc
    outcome = session.outcome(TrialStatus.TERMINATED)
    logger.info(
        "trial %s finished after %d reports%s", spec.trial_name, outcome.num_reports,
        f"; best {job.score_attribute}={outcome.best_score}"
        if outcome.best_score is not None else "",
    )
    return outcome


def _quietly(action: Callable[[], None], logger: Logger) -> None:
    """Run a clean-up step of a failed trial; its own error is logged, never raised,
    because the trial's failure is what counts."""
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - must not hide the trial's own error
        logger.warning("clean-up after a failed trial also failed: %s: %s",
                       type(exc).__name__, exc)
