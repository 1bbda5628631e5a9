"""Distributed training runs: a Trainer's ranks are real processes that report together;
rank 0's metrics and every rank's checkpoint files make one step; a failing or killed rank
restarts the group from the latest committed checkpoint; no rank outlives its run. The
seed documents' two examples run as tests, and a real DDP model (torch, gloo) trained by
two ranks survives a SIGKILL with the same final weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import Trainer, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrialStatus,
)
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import CallLog, wait_for

pytestmark = pytest.mark.usefixtures("prefect_server")
TWO = ScalingConfig(num_workers=2)


def run_config(tmp_path: Path, **kwargs: Any) -> RunConfig:
    return RunConfig(name="run", storage_path=str(tmp_path / "runs"), **kwargs)


def seed_no_checkpoints(config: dict[str, Any]) -> None:
    """The first seed example, as written: every rank passes a checkpoint each epoch."""
    for epoch in range(3):
        checkpoint = Checkpoint.from_dict({"epoch": epoch})
        report({}, checkpoint=checkpoint)


def test_seed_num_to_keep_0_writes_no_checkpoint(tmp_path: Path) -> None:
    result = Trainer(seed_no_checkpoints, scaling_config=TWO,
                     run_config=run_config(tmp_path, checkpoint_config=CheckpointConfig(
                         num_to_keep=0))).fit()
    assert result.status is TrialStatus.TERMINATED
    assert result.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3]
    assert result.checkpoint is None
    assert not list(Path(result.path).glob("checkpoint_*"))


def seed_keep_two(config: dict[str, Any]) -> None:
    """The second seed example, adapted: rank 0 passes the checkpoint (two ranks writing
    the same file would be an error), and the metric matches the checkpoint."""
    for loss in (2, 4, 1, 3):
        checkpoint = Checkpoint.from_dict({"loss": loss})
        report({"loss": loss}, checkpoint=checkpoint if get_context().world_rank == 0 else None)


def test_seed_keep_the_two_smallest_losses(tmp_path: Path) -> None:
    result = Trainer(seed_keep_two, scaling_config=TWO, run_config=run_config(
        tmp_path, checkpoint_config=CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"),
    )).fit()
    names = [c.path.rsplit("/", 1)[-1] for c, _ in result.best_checkpoints]
    assert names == ["checkpoint_000000", "checkpoint_000002"]
    assert [c.to_dict() for c, _ in result.best_checkpoints] == [{"loss": 2}, {"loss": 1}]
    assert result.checkpoint.to_dict() == {"loss": 3}  # the latest is kept too


def ranked(config: dict[str, Any]) -> None:
    """Each rank logs who it is and its pid, writes a file of its own per step, and
    reports a metric of its own; rank 1 raises at step 2 of the first attempt if told."""
    log = CallLog(config["log"])
    context = get_context()
    start = _start(get_checkpoint())
    log.record(context.world_rank, context.world_size, context.local_rank, os.environ["RANK"],
               os.environ["WORLD_SIZE"], os.getpid(), context.attempt, start)
    for step in range(start, config["steps"] + 1):
        if config.get("fail") and context.world_rank == 1 and step == 2 \
                and context.attempt == 1:
            raise ValueError("rank 1 diverged")
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, f"rank{context.world_rank}.json").write_text(json.dumps(step))
            report({"rank": context.world_rank, "step": step},
                   checkpoint=Checkpoint.from_directory(directory))


def _start(restored: Checkpoint | None) -> int:
    if restored is None:
        return 1
    with restored.as_directory() as directory:
        return int(json.loads(Path(directory, "rank1.json").read_text())) + 1


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ranks_report_together_and_their_files_merge(tmp_path: Path) -> None:
    log = CallLog(str(tmp_path / "calls"))
    result = Trainer(ranked, train_loop_config={"log": log.path, "steps": 3},
                     scaling_config=TWO, run_config=run_config(tmp_path)).fit()
    assert result.status is TrialStatus.TERMINATED
    frame = result.metrics_dataframe
    assert frame["rank"].tolist() == [0, 0, 0] and frame["step"].tolist() == [1, 2, 3]
    with result.checkpoint.as_directory() as directory:
        assert sorted(os.listdir(directory)) == ["rank0.json", "rank1.json"]
    calls = sorted(log.calls())
    assert [c[:5] for c in calls] == [[0, 2, 0, "0", "2"], [1, 2, 1, "1", "2"]]
    assert not any(alive(c[5]) for c in calls)


def test_rows_carry_rank_0s_pid_and_the_run_fields(tmp_path: Path) -> None:
    """As a trial's rows: pid and hostname of the process running the training loop
    (rank 0's), time and iteration counters, done False in rows and True at the end."""
    log = CallLog(str(tmp_path / "calls"))
    result = Trainer(ranked, train_loop_config={"log": log.path, "steps": 3},
                     scaling_config=TWO, run_config=run_config(tmp_path)).fit()
    rank_pids = {c[0]: c[5] for c in log.calls()}
    rows = [json.loads(line) for line in (Path(result.path) / "result.json").open()]
    assert [r["pid"] for r in rows] == [rank_pids[0]] * 3 and rank_pids[0] != os.getpid()
    assert {r["hostname"] for r in rows} == {socket.gethostname()}
    assert [r["iterations_since_restore"] for r in rows] == [1, 2, 3]
    assert [r["done"] for r in rows] == [False] * 3 and result.metrics["done"] is True
    totals = [r["time_total_s"] for r in rows]
    assert totals == sorted(totals) and all(r["time_this_iter_s"] > 0 for r in rows)


def test_a_failing_rank_restarts_the_group_from_the_latest_checkpoint(tmp_path: Path) -> None:
    log = CallLog(str(tmp_path / "calls"))
    result = Trainer(ranked, train_loop_config={"log": log.path, "steps": 4, "fail": True},
                     scaling_config=TWO,
                     run_config=run_config(tmp_path, failure_config=FailureConfig(
                         max_failures=1))).fit()
    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    assert result.metrics_dataframe["step"].tolist() == [1, 2, 3, 4]
    starts = sorted((c[6], c[0], c[7]) for c in log.calls())  # (attempt, rank, first step)
    assert starts == [(1, 0, 1), (1, 1, 1), (2, 0, 2), (2, 1, 2)]
    assert not any(alive(c[5]) for c in log.calls())
    error = (Path(result.path) / "error.txt").read_text()
    assert "RankFailed: rank 1 failed:" in error and "ValueError: rank 1 diverged" in error


def same_file(config: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "model.pt").write_text(str(get_context().world_rank))
        report({"x": 1}, checkpoint=Checkpoint.from_directory(directory))


def test_two_ranks_writing_one_file_is_an_error_naming_it(tmp_path: Path) -> None:
    result = Trainer(same_file, scaling_config=TWO, run_config=run_config(
        tmp_path, failure_config=FailureConfig(max_failures=2))).fit()
    assert result.status is TrialStatus.ERROR and result.outcome.attempts == 1
    assert ("checkpoint file 'model.pt' was written by rank 0 and rank 1 at step 1"
            in (result.outcome.error or ""))


def test_a_stop_condition_ends_the_run_and_its_ranks(tmp_path: Path) -> None:
    log = CallLog(str(tmp_path / "calls"))
    result = Trainer(ranked, train_loop_config={"log": log.path, "steps": 50},
                     scaling_config=TWO,
                     run_config=run_config(tmp_path, stop={"training_iteration": 2})).fit()
    assert result.status is TrialStatus.TERMINATED
    assert result.metrics_dataframe["step"].tolist() == [1, 2]
    assert not any(alive(c[5]) for c in log.calls())


def test_a_tuner_sweeps_trainers_through_train_loop_config(tmp_path: Path) -> None:
    log = CallLog(str(tmp_path / "calls"))
    trainer = Trainer(ranked, train_loop_config={"log": log.path, "steps": 1},
                      scaling_config=TWO)
    grid = Tuner(trainer, param_space={"train_loop_config": {"steps": grid_search([1, 2])}},
                 run_config=run_config(tmp_path)).fit()
    assert [r.metrics["step"] for r in grid] == [1, 2]
    assert [r.config for r in grid] == [{"train_loop_config": {"steps": s}} for s in (1, 2)]
    assert len(log.calls()) == 4  # two ranks per trial
    assert grid[0].outcome.trial_name.startswith("Trainer_")


def ddp_loop(config: dict[str, Any]) -> None:
    """A linear model trained by DistributedDataParallel over gloo, each rank on its half
    of the data; rank 0 checkpoints the weights each epoch, every rank its shard's loss."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    start = 0
    restored = get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state = torch.load(os.path.join(directory, "model.pt"))
        model.load_state_dict(state["model"])
        start = state["epoch"] + 1
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [2.0], [-1.0], [0.5]]) + 0.3
    mine_x, mine_y = x[rank * 32:(rank + 1) * 32], y[rank * 32:(rank + 1) * 32]
    for epoch in range(start, config["epochs"]):
        if epoch == config["kill_at"] and rank == 1 and not os.path.exists(config["flag"]):
            Path(config["flag"]).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        for batch in range(4):
            optimizer.zero_grad()
            part = slice(batch * 8, (batch + 1) * 8)
            loss = torch.nn.functional.mse_loss(ddp(mine_x[part]), mine_y[part])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            full = torch.nn.functional.mse_loss(model(x), y).item()
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                torch.save({"model": model.state_dict(), "epoch": epoch},
                           os.path.join(directory, "model.pt"))
            Path(directory, f"shard{rank}.json").write_text(json.dumps(loss.item()))
            report({"loss": full, "epoch": epoch},
                   checkpoint=Checkpoint.from_directory(directory))
    dist.destroy_process_group()


def final_weights(result: Any) -> Any:
    import torch

    with result.checkpoint.as_directory() as directory:
        assert sorted(os.listdir(directory)) == ["model.pt", "shard0.json", "shard1.json"]
        return torch.load(os.path.join(directory, "model.pt"))["model"]


def test_ddp_survives_a_killed_rank_with_the_same_final_weights(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    config = {"epochs": 6, "kill_at": -1, "flag": str(tmp_path / "rank1-was-killed")}
    clean = Trainer(ddp_loop, train_loop_config=config, scaling_config=TWO,
                    run_config=RunConfig(name="clean", storage_path=str(tmp_path))).fit()
    killed = Trainer(ddp_loop, train_loop_config={**config, "kill_at": 3}, scaling_config=TWO,
                     run_config=RunConfig(name="killed", storage_path=str(tmp_path),
                                          failure_config=FailureConfig(max_failures=1))).fit()
    assert Path(config["flag"]).exists()  # rank 1 really was killed
    assert clean.status is killed.status is TrialStatus.TERMINATED
    assert killed.outcome.attempts == 2
    assert "rank 1 of the training run died: killed by SIGKILL" in (
        Path(killed.path) / "error.txt").read_text()
    assert killed.metrics_dataframe["epoch"].tolist() == list(range(6))
    assert clean.metrics["loss"] < clean.metrics_dataframe["loss"].iloc[0]  # it learned
    expected, found = final_weights(clean), final_weights(killed)
    for name in expected:
        assert torch.allclose(expected[name], found[name], rtol=0, atol=1e-6)


def forever(config: dict[str, Any]) -> None:
    """Logs its pid, then reports until it is killed."""
    CallLog(config["log"]).record(os.getpid())
    while True:
        report({"alive": 1})


def test_no_rank_outlives_a_killed_run(tmp_path: Path) -> None:
    """The whole driver (flow run and trial process) is killed, as a worker cancelling the
    run does; the ranks, in sessions of their own, notice and exit."""
    log = CallLog(str(tmp_path / "calls"))
    script = (
        "from prefect_tune.flows import Trainer\n"
        "from prefect_tune.storage import RunConfig, ScalingConfig\n"
        "from tests.flows.test_trainer import forever\n"
        f"Trainer(forever, train_loop_config={{'log': {log.path!r}}},\n"
        "        scaling_config=ScalingConfig(num_workers=2),\n"
        f"        run_config=RunConfig(storage_path={str(tmp_path)!r}, tensorboard=False)).fit()\n"
    )
    root = Path(__file__).resolve().parents[2]
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=root,
                              start_new_session=True)
    try:
        ranks = wait_for(log.calls, lambda calls: len(calls) == 2 or driver.poll() is not None)
        assert len(ranks) == 2, "the ranks never started"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    gone = wait_for(lambda: [alive(pid) for (pid,) in ranks], lambda states: not any(states))
    assert gone == [False, False]
