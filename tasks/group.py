"""Distributed training inside one trial: a group of worker processes, one per rank.

The trial's trainable (a `Trainer`) calls `run_group`, which starts `num_workers`
processes (`python -m prefect_tune.tasks.group`) with RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, so `torch.distributed` initialises
unchanged, and runs the training loop in each. Every rank calls `report()` at the same
steps; a step is recorded once every rank has reported it: rank 0's metrics, and one
checkpoint merging the files of every rank that passed one. Only then do the ranks'
`report()` calls return.

A rank that raises or dies fails the whole group: the others are killed at once and the
trial fails, to be retried from its latest committed checkpoint. Ranks also exit as soon
as the process that started them is gone, so none outlives its run.

Protocol: parent to rank on stdin, each length-prefixed: the parent's `sys.path`, the
cloudpickled `RankJob`, then one acknowledgement per step. Rank to parent, on a pipe
whose fd is the argument: ("report", metrics, local checkpoint dir or None), ("done",)
or ("error", traceback).
"""

from __future__ import annotations

import logging
import os
import pickle
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from queue import SimpleQueue
from typing import Any

import cloudpickle

from prefect_tune.storage import (
    Checkpoint,
    CheckpointError,
    OutsideTrialError,
    ScalingConfig,
    TrialCrashed,
)
from prefect_tune.storage.filesystem import local_files
from prefect_tune.tasks.child import (
    LOG_RECORD,
    ORPHANED,
    describe_exit,
    forward_output,
    receive_frame,
    send_frame,
)
from prefect_tune.tasks.session import _SESSION, TrialContext, TrialSession, _session

TrainLoop = Callable[[dict[str, Any]], Any]
#: How long a rank that finished its loop may take to exit before it is killed.
EXIT_GRACE_SECONDS = 30.0


class RankFailed(RuntimeError):
    """A rank of a distributed training run raised; its traceback is the message."""


@dataclass(frozen=True)
class RankJob:
    """What one rank runs; sent to it cloudpickled."""

    train_loop: TrainLoop
    config: dict[str, Any]
    restored: Checkpoint | None
    context: TrialContext


@dataclass
class _Rank:
    number: int
    process: subprocess.Popen[bytes]
    messages: int  # the read end of its message pipe
    buffer: bytearray


def run_group(train_loop: TrainLoop, config: dict[str, Any], scaling: ScalingConfig) -> None:
    """Run `train_loop(config)` on `scaling.num_workers` ranks as the current trial.

    Raises:
        RankFailed: a rank raised (its traceback is in the message).
        TrialCrashed: a rank died (killed, out of memory, exit without returning).
        CheckpointError: two ranks wrote the same checkpoint file at one step.
        MetricError: rank 0's metrics cannot be recorded.
    """
    session = _session("run_group")
    if not isinstance(session, TrialSession):
        raise OutsideTrialError("a Trainer cannot run inside a worker of another Trainer")
    world = scaling.num_workers
    port = _free_port()
    with ExitStack() as stack:
        ranks: list[_Rank] = []
        stack.callback(_kill, ranks)
        for number in range(world):
            context = replace(session.context, world_rank=number, world_size=world,
                              local_rank=number)
            job = RankJob(train_loop, config, session.restored, context)
            ranks.append(_start(number, job, _environment(number, world, port, scaling)))
            for stream, level in ((ranks[-1].process.stdout, logging.INFO),
                                  (ranks[-1].process.stderr, logging.WARNING)):
                assert stream is not None
                forward_output(stream, session.logger, level, f"[rank {number}] ")
        step = 0
        while True:
            step += 1
            messages = _collect(ranks)
            kinds = {m[0] for m in messages}
            if kinds == {"done"}:
                _reap(ranks)
                return
            if kinds != {"report"}:
                done = [r.number for r, m in zip(ranks, messages, strict=True) if m[0] == "done"]
                raise RankFailed(
                    f"rank {done[0]} returned while other ranks called report() for step "
                    f"{step}: every rank must call report() at the same steps"
                )
            with tempfile.TemporaryDirectory(prefix="prefect-tune-merge-") as merged:
                keep = session.config.num_to_keep != 0  # 0: no checkpoint is persisted
                has_checkpoint = keep and _merge([m[2] for m in messages], merged, step)
                # Raises TrialDone once the stop condition holds: the ranks are killed.
                session.report(messages[0][1],
                               Checkpoint.from_directory(merged) if has_checkpoint else None)
            for rank in ranks:
                assert rank.process.stdin is not None
                send_frame(rank.process.stdin, b"ack")


def _environment(rank: int, world: int, port: int, scaling: ScalingConfig) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONUNBUFFERED="1")
    cpus = (scaling.resources_per_worker or {}).get("CPU")
    if cpus is not None:
        env["OMP_NUM_THREADS"] = str(max(int(cpus), 1))
    if scaling.use_gpu:
        env["CUDA_VISIBLE_DEVICES"] = str(rank)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(number: int, job: RankJob, env: dict[str, str]) -> _Rank:
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect_tune.tasks.group", str(write_end)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, pass_fds=(write_end,), start_new_session=True,
        )
    finally:
        os.close(write_end)
    assert process.stdin is not None
    try:
        send_frame(process.stdin, pickle.dumps(sys.path))
        send_frame(process.stdin, cloudpickle.dumps(job))
    except BrokenPipeError:
        pass  # it died at start-up; its exit status tells why
    return _Rank(number, process, read_end, bytearray())


def _collect(ranks: list[_Rank]) -> list[tuple[Any, ...]]:
    """The next message of every rank; a rank that died or raised fails the group."""
    found: dict[int, tuple[Any, ...]] = {}
    with selectors.DefaultSelector() as selector:
        for rank in ranks:
            selector.register(rank.messages, selectors.EVENT_READ, rank)
        while len(found) < len(ranks):
            for key, _ in selector.select():
                rank = key.data
                chunk = os.read(rank.messages, 1 << 16)
                if not chunk:
                    rank.process.wait()
                    raise TrialCrashed(
                        f"rank {rank.number} of the training run died: "
                        f"{describe_exit(rank.process.returncode)}"
                    )
                rank.buffer += chunk
                message = _take_frame(rank.buffer)
                if message is None:
                    continue
                if message[0] == "error":
                    raise RankFailed(f"rank {rank.number} failed:\n{message[1]}")
                found[rank.number] = message
                selector.unregister(rank.messages)
    return [found[rank.number] for rank in ranks]


def _take_frame(buffer: bytearray) -> tuple[Any, ...] | None:
    if len(buffer) < 8:
        return None
    size = int.from_bytes(buffer[:8], "big")
    if len(buffer) < 8 + size:
        return None
    message = pickle.loads(bytes(buffer[8:8 + size]))
    del buffer[:8 + size]
    return message  # type: ignore[no-any-return]


def _merge(directories: list[str | None], merged: str, step: int) -> bool:
    """Copy every rank's checkpoint files into `merged`; False if no rank passed one.

    Raises:
        CheckpointError: two ranks wrote a file of the same name.
    """
    owner: dict[str, int] = {}
    for rank, directory in enumerate(directories):
        if directory is None:
            continue
        for relative in local_files(directory):
            if relative in owner:
                raise CheckpointError(
                    f"checkpoint file {relative!r} was written by rank {owner[relative]} and "
                    f"rank {rank} at step {step}: give each rank's files their own names "
                    "(e.g. with get_context().world_rank), or pass the checkpoint from one "
                    "rank only"
                )
            owner[relative] = rank
            target = os.path.join(merged, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(directory, relative), target)
    return any(d is not None for d in directories)


def _reap(ranks: list[_Rank]) -> None:
    """Give ranks that finished time to exit (DDP tears down its process group)."""
    for rank in ranks:
        try:
            rank.process.wait(EXIT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass  # killed by _kill


def _kill(ranks: list[_Rank]) -> None:
    """Kill every rank that is still running (and whatever it started), and reap it."""
    for rank in ranks:
        if rank.process.poll() is None:
            try:
                os.killpg(rank.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        rank.process.wait()
        if rank.process.stdin is not None:
            rank.process.stdin.close()  # its output pipes end with it: their readers see EOF
        os.close(rank.messages)


# The rank's side.


class RankSession:
    """A rank's link to its trial: `report()` sends to the group and waits for the step
    to be recorded."""

    def __init__(self, job: RankJob, out: int, acks: SimpleQueue[bytes]) -> None:
        self.restored = job.restored
        self.context = job.context
        self._out = out
        self._acks = acks

    def report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise CheckpointError(
                f"report(checkpoint=...) got {type(checkpoint).__name__}; pass a Checkpoint"
            )
        if checkpoint is None:
            self.send(("report", dict(metrics), None))
            self._acks.get()
            return
        with checkpoint.as_directory() as local:  # kept until the group has copied it
            self.send(("report", dict(metrics), local))
            self._acks.get()

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message)
        os.write(self._out, len(data).to_bytes(8, "big") + data)


def _read_acks(fd: int, acks: SimpleQueue[bytes]) -> None:
    """Queue the group's acknowledgements; exit once the group is gone (stdin closed).
    Raw reads: the buffered stdin's lock stays free for the interpreter's exit."""
    while True:
        size = _read_exactly(fd, 8)
        acks.put(_read_exactly(fd, int.from_bytes(size, "big")))


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            os._exit(ORPHANED)
        data += chunk
    return data


def main() -> int:
    """A rank: run the training loop, report each step to the group, exit 0 or 1."""
    out = int(sys.argv[1])
    stdin = sys.stdin.buffer
    sys.path[:0] = [p for p in pickle.loads(receive_frame(stdin)) if p not in sys.path]
    job: RankJob = cloudpickle.loads(receive_frame(stdin))
    acks: SimpleQueue[bytes] = SimpleQueue()
    threading.Thread(target=_read_acks, args=(stdin.fileno(), acks), daemon=True).start()
    logging.basicConfig(level=logging.INFO, format=f"{LOG_RECORD}%(levelno)d %(message)s",
                        stream=sys.stderr)
    session = RankSession(job, out, acks)
    _SESSION.set(session)
    try:
        job.train_loop(dict(job.config))
    except BaseException:  # noqa: BLE001 - reported to the group, which fails the run
        session.send(("error", traceback.format_exc()))
        return 1
    session.send(("done",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
