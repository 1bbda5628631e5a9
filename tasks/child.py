"""Process isolation: each trial attempt runs in a child process of the trial task.

A trial that dies hard (SIGKILL, the out-of-memory killer, `os._exit`, a segfault) takes
only its child with it; the task turns the death into `TrialCrashed`, an ordinary
retried failure. Protocol, parent to child on stdin: the parent's `sys.path` and the
cloudpickled `TrialJob`, each length-prefixed; stdin then stays open, and the child exits
as soon as it closes (its parent is gone). The child pickles its reply into a file the
parent names: ("ok", outcome) or ("error", outcome, cause). Its output is forwarded to
the trial's log line by line: stdout as INFO, stderr as WARNING, and the child's own log
records (marked on stderr) at their level.
"""

from __future__ import annotations

import contextvars
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from typing import IO, Any, BinaryIO

import cloudpickle

from prefect_tune.storage import (
    ConfigError,
    TrialCrashed,
    TrialError,
    TrialOutcome,
    TrialStatus,
    TrialStopped,
)
from prefect_tune.storage.filesystem import write_local_atomic
from prefect_tune.tasks.execute import Logger, TrialJob, execute

#: How long a stopped child gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 5.0
#: Exit status of a child whose parent went away.
ORPHANED = 70
#: Starts a stderr line that carries a log record: marker, level number, space, message.
LOG_RECORD = "\x1e"


def run_in_child(job: TrialJob, logger: Logger, stop: threading.Event) -> TrialOutcome:
    """Run `execute(job)` in a fresh Python process and return its outcome.

    Raises:
        TrialError: the trial failed; for a hard death its cause is TrialCrashed.
        TrialStopped: `stop` was set; the child was terminated.
    """
    try:
        payload = _dumps_job(job)
    except ConfigError as exc:
        raise _failure(job, exc, logger) from exc
    with tempfile.TemporaryDirectory(prefix="prefect-tune-trial-") as scratch:
        reply_path = os.path.join(scratch, "reply.pickle")
        with subprocess.Popen(
            [sys.executable, "-m", "prefect_tune.tasks.child", reply_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as process:
            assert process.stdin and process.stdout and process.stderr
            forwarders = [
                forward_output(process.stdout, logger, logging.INFO),
                forward_output(process.stderr, logger, logging.WARNING),
            ]
            try:
                send_frame(process.stdin, pickle.dumps(sys.path))
                send_frame(process.stdin, payload)
            except BrokenPipeError:
                pass  # the child died at start-up; its exit status tells why
            stopped = _wait(process, stop)
            for thread in forwarders:
                thread.join(STOP_GRACE_SECONDS)  # a grandchild may hold the pipes open
        if stopped:
            raise TrialStopped(f"trial {job.spec.trial_name} was stopped by the sweep")
        try:
            with open(reply_path, "rb") as handle:
                reply = pickle.load(handle)
        except FileNotFoundError:
            cause = TrialCrashed(
                f"the process running trial {job.spec.trial_name} died without reporting "
                f"back: {describe_exit(process.returncode)}"
            )
            raise _failure(job, cause, logger) from cause
    if reply[0] == "ok":
        return reply[1]  # type: ignore[no-any-return]
    _, outcome, cause = reply
    raise TrialError(outcome) from cause


def _dumps_job(job: TrialJob) -> bytes:
    try:
        return bytes(cloudpickle.dumps(job))
    except Exception as exc:
        raise ConfigError(
            f"trainable {job.trainable!r} cannot be sent to the trial's process: "
            f"{type(exc).__name__}: {exc}. Keep locks, open files and clients out of it "
            "(create them inside the trainable), or run trials in threads with "
            'TuneConfig(isolation="thread")'
        ) from exc


def send_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "big") + data)
    stream.flush()


def receive_frame(stream: BinaryIO) -> bytes:
    size = int.from_bytes(stream.read(8), "big")
    return stream.read(size)


def forward_output(
    stream: IO[bytes], logger: Logger, level: int, prefix: str = ""
) -> threading.Thread:
    """Log each line of a child's `stream` (its own log records at their level)."""
    def pump() -> None:
        for line in stream:
            text = line.decode(errors="replace").rstrip()
            if text.startswith(LOG_RECORD):
                number, _, text = text[1:].partition(" ")
                logger.log(int(number), "%s%s", prefix, text)
            elif text:
                logger.log(level, "%s%s", prefix, text)

    context = contextvars.copy_context()  # the task's run context: its logger, its API
    thread = threading.Thread(target=context.run, args=(pump,), name="trial-output",
                              daemon=True)
    thread.start()
    return thread


def _wait(process: subprocess.Popen[bytes], stop: threading.Event) -> bool:
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


def _failure(job: TrialJob, cause: Exception, logger: Logger) -> TrialError:
    """Record a failure the child could not report (it died, or never started) like any
    other: in error.txt and an ERROR outcome. Returns the error to raise; what the dead
    child left half-written stays for the next attempt to account for and remove."""
    store, spec = job.store, job.spec
    error = f"{type(cause).__name__}: {cause}\n"
    logger.error("%s", cause)
    try:
        store.append_error(spec.trial_name, error)
    except Exception as exc:  # noqa: BLE001 - the trial's failure is what counts
        logger.warning("could not record the failure of %s: %s", spec.trial_name, exc)
    rows = store.read_rows(spec.trial_name)
    records = store.resume_point(spec.trial_name, clean=False).records
    return TrialError(TrialOutcome(
        spec.trial_id, spec.trial_name, spec.config, TrialStatus.ERROR,
        last_metrics=rows[-1] if rows else {}, num_reports=len(rows),
        checkpoints=records, error=error, attempts=job.attempt,
    ))


def describe_exit(returncode: int | None) -> str:
    """A child's exit status in words: "killed by SIGKILL ...", "exit status 3"."""
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit status {returncode}"


def exit_when_orphaned(fd: int) -> None:
    while os.read(fd, 4096):  # raw reads: the buffered stdin's lock stays free at exit
        pass
    os._exit(ORPHANED)


def main() -> int:
    """The child: run one trial attempt, write the reply, exit 0."""
    reply_path = sys.argv[1]
    stdin = sys.stdin.buffer
    sys.path[:0] = [p for p in pickle.loads(receive_frame(stdin)) if p not in sys.path]
    job: TrialJob = cloudpickle.loads(receive_frame(stdin))
    threading.Thread(target=exit_when_orphaned, args=(stdin.fileno(),), daemon=True).start()
    logging.basicConfig(
        level=logging.INFO, format=f"{LOG_RECORD}%(levelno)d %(message)s", stream=sys.stderr
    )
    logger = logging.getLogger("prefect_tune.trial")
    reply: tuple[Any, ...]
    try:
        reply = ("ok", execute(job, logger))
    except TrialError as exc:
        reply = ("error", exc.outcome, _portable(exc.__cause__))
    write_local_atomic(reply_path, cloudpickle.dumps(reply), durable=False)
    return 0


def _portable(error: BaseException | None) -> BaseException | None:
    """`error` if it survives pickling, else a RuntimeError with its text."""
    try:
        return pickle.loads(cloudpickle.dumps(error))  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    sys.exit(main())
