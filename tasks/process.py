"""How a trial's processes talk to the process that started them; one framing for all.

A worker process (a trial attempt's child, or a rank of a distributed training run) is
`python -m <module> <fd>`. Parent to worker, on the worker's stdin: frames. Worker to
parent, on the pipe `<fd>`: frames. A frame is an 8-byte big-endian length and a
cloudpickle. The first frame on stdin is the parent's `sys.path`; stdin then stays open,
and a worker exits as soon as it closes (its parent is gone). Its stdout and stderr are
forwarded to the trial's log line by line (stdout as INFO, stderr as WARNING, and the
worker's own log records, marked on stderr, at their level).
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any, NoReturn

import cloudpickle

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

#: Exit status of a worker whose parent went away.
ORPHANED = 70
#: Starts a stderr line that carries a log record: marker, level number, space, message.
LOG_RECORD = "\x1e"


def frame(message: Any) -> bytes:
    """`message` as one frame (cloudpickle: functions and classes of `__main__` too)."""
    data: bytes = cloudpickle.dumps(message)
    return len(data).to_bytes(8, "big") + data


def write_frame(fd: int, data: bytes) -> None:
    """Write the frame `data` (from `frame`) whole to `fd`."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int) -> Any:
    """The next message on `fd`.

    Raises:
        EOFError: the writer closed `fd` (or died) before a whole frame arrived.
    """
    size = int.from_bytes(_read_exactly(fd, 8), "big")
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def spawn(module: str, logger: Logger, *, prefix: str = "",
          env: Mapping[str, str] | None = None, new_session: bool = False,
          pass_fds: tuple[int, ...] = (),
          ) -> tuple[subprocess.Popen[bytes], int, list[threading.Thread]]:
    """Start `python -m module <fd> [<pass_fds>...]` with this process's sys.path,
    forwarding its output.

    Returns the process, the read end of its message pipe (the caller closes it) and
    the threads forwarding its stdout and stderr.
    """
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(write_end), *map(str, pass_fds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=None if env is None else dict(env), pass_fds=(write_end, *pass_fds),
            start_new_session=new_session,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    assert process.stdin and process.stdout and process.stderr
    forwarders = [forward_output(process.stdout, logger, logging.INFO, prefix),
                  forward_output(process.stderr, logger, logging.WARNING, prefix)]
    send(process.stdin, frame(sys.path))
    return process, read_end, forwarders


def send(stdin: IO[bytes] | None, data: bytes) -> None:
    """Write frame `data` to a worker's `stdin`; a worker that died is left to its exit
    status to explain."""
    assert stdin is not None
    try:
        write_frame(stdin.fileno(), data)
    except BrokenPipeError:
        pass


def forward_output(
    stream: IO[bytes], logger: Logger, level: int, prefix: str = ""
) -> threading.Thread:
    """Log each line of a worker's `stream` (its own log records at their level)."""
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


def describe_exit(returncode: int | None) -> str:
    """A worker's exit status in words: "killed by SIGKILL ...", "exit status 3"."""
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    if returncode is None:
        return "exit status unknown (the warm worker that forked it died first)"
    return f"exit status {returncode}"


def take_path() -> None:
    """In a new interpreter: put the parent's sys.path (its first frame on stdin) first."""
    sys.path[:0] = [p for p in read_frame(0) if p not in sys.path]


def start_worker(on_message: Callable[[Any], None] = lambda message: None,
                 out: int | None = None) -> tuple[int, Any]:
    """In the worker: take the parent's sys.path (unless `out`, the message pipe, is
    given: a forked worker has it), log records to stderr, and watch stdin for further
    frames (each passed to `on_message`) until it closes, then exit.

    Returns the fd of the message pipe to the parent and the parent's next frame.
    """
    if out is None:
        out = int(sys.argv[1])
        take_path()
    job = read_frame(0)
    # force: importing the trainable's module may have configured logging (prefect does)
    logging.basicConfig(level=logging.INFO, format=f"{LOG_RECORD}%(levelno)d %(message)s",
                        stream=sys.stderr, force=True)

    def watch() -> None:
        try:
            while True:
                on_message(read_frame(0))
        except EOFError:
            os._exit(ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return out, job


def finish(code: int) -> NoReturn:
    """End the worker now: run its exit handlers, flush its logs and output, and exit
    without waiting for threads its trial left running."""
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
