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

Protocol (frames, see `prefect_tune.tasks.process`): parent to rank on stdin, the
`RankJob`, then one acknowledgement per step. Rank to parent: ("report", metrics, local
checkpoint dir or None, (hostname, pid)), ("done",) or ("error", traceback).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from queue import SimpleQueue
from typing import Any

from prefect_tune.storage import (
    Checkpoint,
    CheckpointError,
    ConfigError,
    OutsideTrialError,
    RankFailed,
    ScalingConfig,
    TrialCrashed,
)
from prefect_tune.storage.filesystem import local_files
from prefect_tune.storage.scratch import scratch_dir
from prefect_tune.tasks.process import (
    describe_exit,
    frame,
    read_frame,
    send,
    spawn,
    start_worker,
    write_frame,
)
from prefect_tune.tasks.session import _SESSION, TrialContext, TrialSession, _session

TrainLoop = Callable[[dict[str, Any]], Any]
#: How long a rank that finished its loop may take to exit before it is killed.
EXIT_GRACE_SECONDS = 30.0
Message = tuple[Any, ...]


@dataclass(frozen=True)
class RankJob:
    """What one rank runs."""

    train_loop: TrainLoop
    config: dict[str, Any]
    restored: Checkpoint | None
    context: TrialContext


@dataclass(frozen=True)
class _Rank:
    number: int
    process: subprocess.Popen[bytes]
    messages: int  # the read end of its message pipe


def run_group(train_loop: TrainLoop, config: dict[str, Any], scaling: ScalingConfig,
              start: Checkpoint | None = None) -> None:
    """Run `train_loop(config)` on `scaling.num_workers` ranks as the current trial.

    Every rank's `get_checkpoint()` is the trial's latest committed checkpoint, else
    `start` (read only: never recorded, kept or deleted as one of the trial's). Each
    step's row is rank 0's metrics, with its pid and hostname.

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
    restored = session.restored or start
    if session.restored is None and start is not None:
        session.logger.info("trial %s: the ranks start from the given checkpoint %s",
                            session.spec.trial_name, start.path)
    inbox: SimpleQueue[tuple[int, Message | None]] = SimpleQueue()
    with ExitStack() as stack:
        ranks: list[_Rank] = []
        stack.callback(_kill, ranks)
        for number in range(world):
            context = replace(session.context, world_rank=number, world_size=world,
                              local_rank=number)
            process, pipe, _ = spawn(
                "prefect_tune.tasks.group", session.logger, prefix=f"[rank {number}] ",
                env=rank_environment(number, world, port, scaling, os.environ),
                new_session=True,
            )
            ranks.append(_Rank(number, process, pipe))
            send(process.stdin, frame(RankJob(train_loop, config, restored, context)))
            threading.Thread(target=_receive, args=(ranks[-1], inbox), name="rank-messages",
                             daemon=True).start()
        ack = frame("ack")
        step = 0
        while True:
            step += 1
            messages = _collect(ranks, inbox)
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
            merged = scratch_dir("merge-")
            try:
                keep = session.plan.checkpoint_config.num_to_keep != 0  # 0: none persisted
                has_checkpoint = keep and _merge([m[2] for m in messages], merged, step)
                # Raises TrialDone once the stop condition holds: the ranks are killed.
                session.report(messages[0][1],
                               Checkpoint.from_directory(merged) if has_checkpoint else None,
                               origin=messages[0][3])
            finally:
                shutil.rmtree(merged, ignore_errors=True)
            for rank in ranks:
                send(rank.process.stdin, ack)


def rank_environment(rank: int, world: int, port: int, scaling: ScalingConfig,
                     inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment of rank `rank`: `inherited` plus torch.distributed's variables,
    OMP_NUM_THREADS for `{"CPU": n}`, and with `use_gpu` the rank's own GPU of those the
    process was given (CUDA_VISIBLE_DEVICES, if set, else all).

    Raises:
        ConfigError: fewer GPUs are visible than there are ranks.
    """
    env = dict(inherited, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONUNBUFFERED="1")
    cpus = (scaling.resources_per_worker or {}).get("CPU")
    if cpus is not None:
        env["OMP_NUM_THREADS"] = str(max(int(cpus), 1))
    if scaling.use_gpu:
        mask = inherited.get("CUDA_VISIBLE_DEVICES")
        if mask is None:
            env["CUDA_VISIBLE_DEVICES"] = str(rank)
        else:
            devices = [d.strip() for d in mask.split(",") if d.strip()]
            if len(devices) < world:
                raise ConfigError(
                    f"ScalingConfig(num_workers={world}, use_gpu=True) needs {world} GPUs, "
                    f"but CUDA_VISIBLE_DEVICES={mask!r} makes {len(devices)} visible: lower "
                    "num_workers or make more GPUs visible"
                )
            env["CUDA_VISIBLE_DEVICES"] = devices[rank]
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _receive(rank: _Rank, inbox: SimpleQueue[tuple[int, Message | None]]) -> None:
    """Queue a rank's messages until its last ("done" or "error"); None once it died."""
    try:
        while True:
            message = read_frame(rank.messages)
            inbox.put((rank.number, message))
            if message[0] != "report":
                return
    except (EOFError, OSError):
        inbox.put((rank.number, None))


def _collect(ranks: list[_Rank], inbox: SimpleQueue[tuple[int, Message | None]]
             ) -> list[Message]:
    """The next message of every rank; a rank that died or raised fails the group."""
    found: dict[int, Message] = {}
    while len(found) < len(ranks):
        number, message = inbox.get()
        rank = ranks[number]
        if message is None:
            rank.process.wait()
            raise TrialCrashed(
                f"rank {number} of the training run died: "
                f"{describe_exit(rank.process.returncode)}"
            )
        if message[0] == "error":
            raise RankFailed(f"rank {number} failed:\n{message[1]}")
        found[number] = message
    return [found[rank.number] for rank in ranks]


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

    def __init__(self, job: RankJob, out: int, acks: SimpleQueue[Any]) -> None:
        self.restored = job.restored
        self.context = job.context
        self._out = out
        self._acks = acks
        self._origin = (socket.gethostname(), os.getpid())

    def report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise CheckpointError(
                f"report(checkpoint=...) got {type(checkpoint).__name__}; pass a Checkpoint"
            )
        if checkpoint is None:
            self.send(("report", dict(metrics), None, self._origin))
            self._acks.get()
            return
        with checkpoint.as_directory() as local:  # kept until the group has copied it
            self.send(("report", dict(metrics), local, self._origin))
            self._acks.get()

    def send(self, message: Message) -> None:
        write_frame(self._out, frame(message))


def main() -> int:
    """A rank: run the training loop, report each step to the group, exit 0 or 1."""
    acks: SimpleQueue[Any] = SimpleQueue()
    out, job = start_worker(acks.put)
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
