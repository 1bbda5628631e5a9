"""One attempt of one trial, run in the current process.

This is the body both isolation modes share: the trial task calls it in its own thread
(`isolation="thread"`), or a child process calls it (`isolation="process"`). Nothing here
imports Prefect, so a child process starts in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import numbers
import os
import traceback
from collections.abc import Callable, Mapping
from typing import Any, cast

from prefect_tune.storage import (
    ConfigError,
    MetricError,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TrialStopped,
)
from prefect_tune.storage.records import checkpoint_dir_name
from prefect_tune.tasks.plan import TrialPlan
from prefect_tune.tasks.session import _SESSION, TrialDone, TrialPaused, TrialSession
from prefect_tune.tasks.trainable import Trainable, drive, is_class_trainable

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def execute(plan: TrialPlan, spec: TrialSpec, attempt: int, logger: Logger,
            until: float | None = None, *, own_process: bool = False) -> TrialOutcome:
    """Run attempt `attempt` of trial `spec`: `plan.trainable(config)` (or drive a class
    trainable) until it returns, meets the stop condition, or (PAUSED) reaches `until` of
    its scheduler's time_attr.

    The attempt resumes from what the trial's directory holds: its latest committed and
    recorded checkpoint, with the result history cut back to it; a new trial starts fresh.
    With `own_process` (the attempt's process is its own) it runs in the trial's working
    directory.

    Raises:
        TrialError: the trainable or the trial's storage failed; the traceback was
            appended to the trial's error.txt, and `__cause__` is the original error.
        TrialStopped: the sweep stopped the trial while it ran.
    """
    trial = plan.store.trial(spec.trial_name)
    session: TrialSession | None = None
    try:
        session = TrialSession(plan, spec, attempt, logger, trial.resume_point(), until)
        if own_process:
            os.chdir(session.workdir.path)
        restored = session.restored
        logger.info(
            "trial %s attempt %d %s: %s", spec.trial_name, attempt,
            f"resumed from {restored.path.rsplit('/', 1)[-1]}" if restored else "started fresh",
            trial.uri,
        )
        trial.write_params(spec.config)
        token = _SESSION.set(session)
        config = copy.deepcopy(dict(spec.config))
        status = TrialStatus.TERMINATED
        try:
            if is_class_trainable(plan.trainable):
                drive(cast(type[Trainable], plan.trainable), config, session)
            else:
                _run_function(plan.trainable, config, session)
        except TrialDone:
            pass  # the stop condition or the scheduler ended the trial
        except TrialPaused:
            status = TrialStatus.PAUSED
        finally:
            _SESSION.reset(token)
        session.close()
    except TrialStopped:
        if session is not None:
            _quietly(session.close, logger)
        raise
    except (Exception, SystemExit) as exc:  # sys.exit() in a trainable fails its trial only
        error = traceback.format_exc()
        if session is not None:
            _quietly(session.close, logger)
        _quietly(lambda: trial.append_error(error), logger)
        logger.error("trial %s failed: %s: %s", spec.trial_name, type(exc).__name__, exc)
        outcome = session.outcome(TrialStatus.ERROR, error) if session is not None else \
            TrialOutcome(spec.trial_id, spec.trial_name, spec.config, TrialStatus.ERROR,
                         error=error, attempts=attempt)
        raise TrialError(outcome) from exc
    outcome = session.outcome(status)
    if status is TrialStatus.PAUSED:
        latest = outcome.latest_checkpoint
        assert session is not None and plan.scheduler is not None
        where = f"{plan.scheduler.time_attr}={session.history[-1][0]:g}"
        if latest is None:
            logger.warning("trial %s paused at %s without a checkpoint: it will start from "
                           "scratch when resumed; report a checkpoint at each milestone to "
                           "keep its progress", spec.trial_name, where)
        else:
            logger.info("trial %s paused at %s; it resumes from %s", spec.trial_name, where,
                        checkpoint_dir_name(latest.index))
        return outcome
    logger.info(
        "trial %s finished after %d reports%s", spec.trial_name, outcome.num_reports,
        f"; best {plan.ranking.attribute}={outcome.best_score}"
        if outcome.best_score is not None else "",
    )
    return outcome


def _run_function(trainable: Callable[[dict[str, Any]], Any], config: dict[str, Any],
                  session: TrialSession) -> None:
    """Call a function trainable: what it returns is its last row, and a generator's
    yielded values are rows (Ray's older API); an `async def` runs in an event loop.

    A dict is a row; a number (not a bool) is the row {"_metric": number}, as in Ray;
    None is no row.

    Raises:
        MetricError: it returned or yielded anything else.
    """
    returned = trainable(config)
    if inspect.isasyncgen(returned):
        raise ConfigError("the trainable returned an async generator: use a generator, or "
                          "call report() from an async def")
    if inspect.iscoroutine(returned):
        returned = asyncio.run(returned)
    if inspect.isgenerator(returned):
        for item in returned:
            _report_output(item, "yielded", session)
    else:
        _report_output(returned, "returned", session)


#: The metric a function trainable's returned or yielded number is recorded as (Ray's).
DEFAULT_METRIC = "_metric"


def _report_output(value: Any, how: str, session: TrialSession) -> None:
    """Record what a function trainable returned or yielded (see `_run_function`)."""
    if value is None:
        return
    if isinstance(value, Mapping):
        session.report(value, None)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        session.report({DEFAULT_METRIC: value}, None)
    else:
        raise MetricError(
            f"the trainable {how} {type(value).__name__} {_short(value)}: return or yield "
            f"a dict of metrics (one row), a number (recorded as {DEFAULT_METRIC!r}; a "
            "tensor's with .item()) or None; put other values in a dict of metrics"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _quietly(action: Callable[[], None], logger: Logger) -> None:
    """Run a clean-up step of a failed trial; its own error is logged, never raised,
    because the trial's failure is what counts."""
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - must not hide the trial's own error
        logger.warning("clean-up after a failed trial also failed: %s: %s",
                       type(exc).__name__, exc)
