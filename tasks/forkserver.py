"""Warm workers: one process per sweep imports the trainable's module once, then forks a
child for every trial attempt.

A fresh interpreter per attempt pays Python's start-up and the trainable's imports
(prefect, pandas, torch: seconds) every time. A warm worker pays them once; forking a
child from it takes milliseconds. Every attempt still gets a process of its own that
starts from the module's state right after import: what an attempt changes (globals,
environment, open files, threads, its trial context) dies with its child and never
reaches the next, and a hard death (SIGKILL, the out-of-memory killer, a segfault) takes
only that child. A warm worker that dies is replaced by the next attempt.

The worker is `python -m prefect_tune.tasks.forkserver <fd> <control fd>`, started like
any worker (`prefect_tune.tasks.process`); its job frame is the pickled plan without its
storage, and the module of the storage's filesystem. It
answers ("ready",) or ("cold", reason) on its message pipe: cold when the trainable does
not load, or its import leaves threads running or CUDA initialised, which a fork would
break; trials then start in fresh processes. Afterwards the control socket (Unix,
SOCK_SEQPACKET) carries requests, each a pickle: ("fork", environment) with the child's
stdin, stdout, stderr, message pipe and a status socket attached. On the status socket
the worker sends ("pid", pid), then, once the child has exited and been reaped, ("exit",
returncode). A worker exits when the control socket closes (its parent closed it, or
died) or after `IDLE_SECONDS` without children; its running children run on.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from types import TracebackType
from typing import IO, Any, NoReturn, Self

import cloudpickle

from prefect_tune.tasks.plan import TrialPlan
from prefect_tune.tasks.process import (
    Logger,
    describe_exit,
    finish,
    forward_output,
    frame,
    read_frame,
    send,
    spawn,
    take_path,
    write_frame,
)

#: A worker without children exits after this long; the next attempt starts another.
IDLE_SECONDS = 300.0
_LOG = logging.getLogger("prefect_tune.workers")


class WorkerGone(Exception):
    """The warm worker died before it forked the child asked for (nothing ran)."""


class ForkedProcess:
    """A child forked by a warm worker, driven like the `subprocess.Popen` of a child:
    `stdin`, `wait`, `terminate`, `kill`, `returncode`, and `with`. Signals go to it
    through a pidfd, which cannot reach another process that reused its pid."""

    def __init__(self, pid: int, status: socket.socket, stdin: IO[bytes],
                 streams: tuple[IO[bytes], IO[bytes]]) -> None:
        self.pid = pid
        self.stdin = stdin
        self.returncode: int | None = None
        self._status, self._streams, self._exited = status, streams, False
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None  # it has exited already; its status is on the way

    def wait(self, timeout: float | None = None) -> int | None:
        """The child's exit status once it has exited; None if its warm worker died
        before reporting it (the child itself ran on, unharmed).

        Raises:
            subprocess.TimeoutExpired: it still runs after `timeout` seconds.
        """
        if not self._exited:
            self._status.settimeout(timeout)
            try:
                data = self._status.recv(256)
            except TimeoutError:
                raise subprocess.TimeoutExpired(f"trial process {self.pid}", timeout or 0)\
                    from None
            if data:
                self.returncode = int(pickle.loads(data)[1])
            elif self._pidfd is not None and \
                    not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"trial process {self.pid}", timeout or 0)
            self._exited = True
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, number: int) -> None:
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, number)
            except ProcessLookupError:
                pass  # it has exited

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for stream in (self.stdin, *self._streams):
            stream.close()
        self.wait()
        self._status.close()
        if self._pidfd is not None:
            os.close(self._pidfd)


class WarmWorker:
    """The parent's handle on one warm worker process."""

    def __init__(self) -> None:
        """Start a worker: it imports Python's and prefect_tune's modules, then waits for
        `load`."""
        self._control, remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process, self._messages, _ = spawn(
                "prefect_tune.tasks.forkserver", _LOG, pass_fds=(remote.fileno(),))
        finally:
            remote.close()
        self.cold: str | None = None

    def load(self, trainable: bytes) -> None:
        """Have the worker load the pickled `trainable`; `cold` then holds the reason if
        it cannot fork trials (it has then exited)."""
        try:
            send(self.process.stdin, frame(trainable))
            answer = read_frame(self._messages)
        except (EOFError, OSError):
            died = describe_exit(self.process.wait())
            answer = ("cold", f"the warm worker died while loading the trainable ({died})")
        finally:
            os.close(self._messages)
        self.cold = None if answer[0] == "ready" else answer[1]
        if self.cold:
            self.close()

    @property
    def alive(self) -> bool:
        return self.cold is None and self.process.poll() is None

    def start(self, env: Mapping[str, str], logger: Logger
              ) -> tuple[ForkedProcess, int, list[threading.Thread]]:
        """Fork a child with `env` added to its environment, its output logged to
        `logger`; like `spawn`, returns it, its message pipe and the output forwarders.

        Raises:
            WorkerGone: the worker is dead; no child was started.
        """
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        reply_r, reply_w = os.pipe()
        status, remote = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        lent = (stdin_r, out_w, err_w, reply_w, remote.fileno())
        try:
            socket.send_fds(self._control, [pickle.dumps(("fork", dict(env)))], lent)
            answer = status.recv(256)
        except OSError:
            answer = b""
        finally:
            for fd in lent[:-1]:
                os.close(fd)
            remote.close()
        if not answer:
            for fd in (stdin_w, out_r, err_r, reply_r):
                os.close(fd)
            status.close()
            raise WorkerGone(f"the warm worker (pid {self.process.pid}) is gone")
        streams = (os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"))
        child = ForkedProcess(int(pickle.loads(answer)[1]), status,
                              os.fdopen(stdin_w, "wb"), streams)
        forwarders = [forward_output(streams[0], logger, logging.INFO),
                      forward_output(streams[1], logger, logging.WARNING)]
        return child, reply_r, forwarders

    def close(self) -> None:
        """Let the worker exit and reap it (children it forked run on)."""
        self._control.close()
        if self.process.stdin:
            self.process.stdin.close()  # a worker still waiting for `load` exits
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_WORKERS: dict[str, WarmWorker] = {}
_SPARE: list[WarmWorker] = []  # started by `prestarted`, taken by the next sweep
_REGISTRY = threading.Lock()


@contextmanager
def prestarted() -> Iterator[None]:
    """Start a warm worker's interpreter now, for the sweep run inside to take: its
    imports then overlap the sweep's own start (Prefect's API, the flow run) instead of
    delaying the first trials. A worker no sweep took is closed on the way out. Does
    nothing where trials cannot be forked."""
    if sys.platform != "linux":
        yield
        return
    with _REGISTRY:
        spare = WarmWorker()
        _SPARE.append(spare)
    try:
        yield
    finally:
        with _REGISTRY:
            untaken = spare in _SPARE
            if untaken:
                _SPARE.remove(spare)
        if untaken:
            spare.close()


def warm_worker(plan: TrialPlan, logger: Logger) -> WarmWorker | None:
    """This process's warm worker of `plan`'s sweep (started, or replaced when it died,
    on first use); None when trials must start in fresh processes (no `fork` on this
    platform, or the worker said the trainable cannot be forked: the reason is logged
    once)."""
    if sys.platform != "linux":
        return None
    sweep = plan.sweep
    with _REGISTRY:
        worker = _WORKERS.get(sweep)
        if worker is not None and (worker.cold or worker.alive):
            return None if worker.cold else worker
        if worker is not None:
            if worker.process.returncode != 0:  # 0: it exited when idle
                logger.warning("the sweep's warm worker (pid %d) died, %s; starting another",
                               worker.process.pid, describe_exit(worker.process.returncode))
            worker.close()
        # What a trial's process unpickles, but the storage: opening it can start threads
        warming = (replace(plan, store=None),  # type: ignore[arg-type]
                   type(plan.store.storage.fs).__module__)
        spare = _SPARE.pop() if _SPARE else None
        if spare is not None and spare.process.poll() is not None:
            spare.close()
            spare = None
        worker = _WORKERS[sweep] = spare or WarmWorker()
        worker.load(cloudpickle.dumps(warming))
        if worker.cold:
            logger.warning("trials start in fresh processes: %s", worker.cold)
            return None
        return worker


def close_workers(sweep: str) -> None:
    """Close this process's warm worker of sweep `sweep`, if it has one."""
    with _REGISTRY:
        worker = _WORKERS.pop(sweep, None)
    if worker is not None:
        worker.close()


# The worker side.

def main() -> int:
    """The warm worker: load the trainable, answer, then fork children on request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C ends its parent, and so it
    take_path()
    try:
        data = read_frame(0)
    except EOFError:
        return 0  # closed before a sweep took it
    out, control = int(sys.argv[1]), socket.socket(fileno=int(sys.argv[2]))
    cold = _load(data)
    write_frame(out, frame(("cold", cold) if cold else ("ready",)))
    os.close(out)
    if cold:
        return 0
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda number, trace: None)
    children: dict[int, socket.socket] = {}
    watched: list[Any] = [control, wake_r]
    while True:
        ready = select.select(watched, [], [], None if children else IDLE_SECONDS)[0]
        if not ready:
            return 0  # idle
        if wake_r in ready:
            os.read(wake_r, 4096)
        if control in ready:
            message, fds, _, _ = socket.recv_fds(control, 4096, 5)
            if not message:
                return 0  # the parent closed the control socket, or died
            _fork(pickle.loads(message)[1], fds, children, [control], (wake_r, wake_w))
        _reap(children)


def _fork(env: dict[str, str], fds: list[int], children: dict[int, socket.socket],
          sockets: list[socket.socket], pipes: tuple[int, int]) -> None:
    """Fork the child asked for; it gets `fds` (stdin, stdout, stderr, message pipe) and
    none of this worker's own descriptors."""
    *streams, status_fd = fds
    status = socket.socket(fileno=status_fd)
    try:
        pid = os.fork()
    except OSError:
        pid = -1  # the parent sees the status socket close: the attempt is retried
    if pid == 0:
        for held in (*sockets, status, *children.values()):
            os.close(held.detach())
        for fd in pipes:
            os.close(fd)
        _child(env, *streams)
    for fd in streams:
        os.close(fd)
    if pid < 0:
        status.close()
        return
    children[pid] = status
    _send(status, ("pid", pid))


def _child(env: dict[str, str], stdin: int, stdout: int, stderr: int, reply: int) -> NoReturn:
    """In the forked child: take the given streams and environment, run the attempt."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.update(env)
        numpy = sys.modules.get("numpy")
        if numpy is not None:  # its global generator, unlike `random`'s, survives a fork
            numpy.random.seed()
        atexit._clear()  # the worker's exit handlers are not the trial's
        from prefect_tune.tasks.child import serve

        code = serve(reply)
    except BaseException:  # noqa: BLE001 - reported on stderr, the attempt crashed
        traceback.print_exc()
    finish(code)


def _reap(children: dict[int, socket.socket]) -> None:
    """Send every exited child's exit status, like `Popen.returncode`, to its parent."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock = children.pop(pid, None)
        if sock is not None:
            _send(sock, ("exit", os.waitstatus_to_exitcode(status)))
            sock.close()


def _send(sock: socket.socket, message: tuple[Any, ...]) -> None:
    try:
        sock.send(pickle.dumps(message))
    except OSError:
        pass  # the parent stopped listening: it is gone


def _load(data: bytes) -> str | None:
    """Import what a trial's process needs (the plan but its storage, and the storage's
    filesystem module); None if children can be forked from here, else the reason they
    cannot."""
    import prefect_tune.tasks.child  # noqa: F401 - every child needs it: import it once

    try:
        _, filesystem = pickle.loads(data)
        importlib.import_module(filesystem)
    except Exception as exc:  # noqa: BLE001 - a fresh process will report it properly
        return f"the trainable does not load in a new process ({type(exc).__name__}: {exc})"
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        return (f"importing the trainable's module starts threads ({', '.join(threads)}), "
                "which a forked process would not have")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "importing the trainable's module initialises CUDA, which a fork cannot share"
    sys.stdout.flush()
    sys.stderr.flush()
    return None


if __name__ == "__main__":
    sys.exit(main())
