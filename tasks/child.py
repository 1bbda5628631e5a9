"""Process isolation: each trial attempt runs in a process of its own.

With `isolation="process"` the child is forked from the sweep's warm worker, which has
imported the trainable's module once (`prefect_tune.tasks.forkserver`); with "spawn" it
is a new interpreter. A trial that dies hard (SIGKILL, the out-of-memory killer,
`os._exit`, a segfault) takes only its child with it; the task turns the death into
`TrialCrashed`, an ordinary retried failure. The child gets (plan, spec, attempt, the
milestone to pause at, the time the attempt began) as a frame on its stdin (see `prefect_tune.tasks.process`) and
answers with one frame: ("ok", outcome) or ("error", outcome, cause).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import threading
import time
from typing import Any

import cloudpickle

from prefect_tune.storage import (
    ConfigError,
    TrialCrashed,
    TrialError,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TrialStopped,
)
from prefect_tune.tasks.execute import execute
from prefect_tune.tasks.forkserver import ForkedProcess, WorkerGone, warm_worker
from prefect_tune.tasks.plan import TrialPlan
from prefect_tune.tasks.process import (
    Logger,
    describe_exit,
    finish,
    frame,
    read_frame,
    send,
    spawn,
    start_worker,
    write_frame,
)

#: How long a stopped child gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 5.0


def run_in_child(plan: TrialPlan, spec: TrialSpec, attempt: int, logger: Logger,
                 devices: tuple[str, ...] = (), until: float | None = None) -> TrialOutcome:
    """Run `execute(plan, spec, attempt, until=until)` in a process of its own (given
    `devices`, its GPUs, and the CPU threads of `plan.resources`); return its outcome.

    Raises:
        TrialError: the trial failed; for a hard death its cause is TrialCrashed.
        TrialStopped: the sweep stopped it (`plan.stop`); the child was terminated.
    """
    begun = time.time()
    try:
        job = frame((plan, spec, attempt, until, begun))
    except Exception as exc:  # noqa: BLE001 - whatever pickling raises is the cause
        error = ConfigError(
            f"trainable {plan.trainable!r} cannot be sent to the trial's process: "
            f"{type(exc).__name__}: {exc}. Keep locks, open files and clients out of it "
            "(create them inside the trainable), or run trials in threads with "
            'TuneConfig(isolation="thread")'
        )
        raise _failure(plan, spec, attempt, error, logger) from error
    process, replies, forwarders = _start(plan, devices, logger)
    reply: list[Any] = []
    reader = threading.Thread(target=_read_reply, args=(replies, reply), daemon=True)
    reader.start()
    with process:
        send(process.stdin, job)
        stopped = _wait(process, plan.stop)
        for thread in (reader, *forwarders):
            thread.join(STOP_GRACE_SECONDS)  # a grandchild may hold the pipes open
    os.close(replies)
    if stopped:
        raise TrialStopped(f"trial {spec.trial_name} was stopped by the sweep")
    if not reply:
        crash = TrialCrashed(
            f"the process running trial {spec.trial_name} died without reporting "
            f"back: {describe_exit(process.returncode)}"
        )
        raise _failure(plan, spec, attempt, crash, logger) from crash
    if reply[0][0] == "ok":
        return reply[0][1]  # type: ignore[no-any-return]
    _, outcome, cause = reply[0]
    raise TrialError(outcome) from cause


def _start(plan: TrialPlan, devices: tuple[str, ...], logger: Logger
           ) -> tuple[subprocess.Popen[bytes] | ForkedProcess, int, list[threading.Thread]]:
    """The attempt's process: forked from the sweep's warm worker (replaced once if it
    died), or a new interpreter."""
    env = plan.resources.environment(devices) if plan.resources else {}
    if plan.isolation == "process":
        for _ in range(2):
            worker = warm_worker(plan, logger)
            if worker is None:
                break
            try:
                return worker.start(env, logger)
            except WorkerGone:
                continue
    return spawn("prefect_tune.tasks.child", logger, env={**os.environ, **env} if env else None)


def _read_reply(fd: int, reply: list[Any]) -> None:
    try:
        reply.append(read_frame(fd))
    except (EOFError, OSError):
        pass  # the child died without answering


def _wait(process: subprocess.Popen[bytes] | ForkedProcess, stop: threading.Event) -> bool:
    """Wait for the child to exit; terminate it once `stop` is set. True if stopped."""
    while True:
        try:
            process.wait(0.5)
            return False
        except subprocess.TimeoutExpired:
            if stop.is_set():
                break
    process.terminate()
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return True


def _failure(plan: TrialPlan, spec: TrialSpec, attempt: int, cause: Exception,
             logger: Logger) -> TrialError:
    """Record a failure the child could not report (it died, or never started) like any
    other: in error.txt and an ERROR outcome. Returns the error to raise; what the dead
    child left half-written stays for the next attempt to account for and remove."""
    trial = plan.store.trial(spec.trial_name)
    error = f"{type(cause).__name__}: {cause}\n"
    logger.error("%s", cause)
    try:
        trial.append_error(error)
    except Exception as exc:  # noqa: BLE001 - the trial's failure is what counts
        logger.warning("could not record the failure of %s: %s", spec.trial_name, exc)
    rows = trial.read_rows()
    return TrialError(TrialOutcome(
        spec.trial_id, spec.trial_name, spec.config, TrialStatus.ERROR,
        last_metrics=rows[-1] if rows else {}, num_reports=len(rows),
        checkpoints=trial.resume_point(clean=False).records, error=error, attempts=attempt,
    ))


def serve(out: int | None = None) -> int:
    """In the child: run the attempt on stdin, send the reply to the message pipe (`out`
    if given: a forked child has it), return 0."""
    how = "a new interpreter" if out is None else "forked from the sweep's warm worker"
    out, (plan, spec, attempt, until, begun) = start_worker(out=out)
    logger = logging.getLogger("prefect_tune.trial")
    logger.info("trial %s attempt %d: its process started in %.0f ms (%s)", spec.trial_name,
                attempt, (time.time() - begun) * 1000, how)
    reply: tuple[Any, ...]
    try:
        reply = ("ok", execute(plan, spec, attempt, logger, until, own_process=True))
    except TrialError as exc:
        reply = ("error", exc.outcome, _portable(exc.__cause__))
    write_frame(out, frame(reply))
    return 0


def _portable(error: BaseException | None) -> BaseException | None:
    """`error` if it survives pickling, else a RuntimeError with its text."""
    try:
        return pickle.loads(cloudpickle.dumps(error))  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    finish(serve())
