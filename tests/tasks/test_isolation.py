"""Process isolation: a trial that dies hard (os._exit, SIGKILL, a segfault, even in the
middle of a checkpoint write) takes only its own process down; the death is recorded
and retried from the last committed checkpoint, and the other trials go on."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import Checkpoint, FailureConfig, RunConfig, TrialStatus
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import CallLog

pytestmark = pytest.mark.usefixtures("prefect_server")

DEATHS = {
    "exit": (lambda: os._exit(3), "exit status 3"),
    "sigkill": (lambda: os.kill(os.getpid(), signal.SIGKILL), "killed by SIGKILL"),
    "segfault": (lambda: ctypes.string_at(0), "killed by SIGSEGV"),
}


@pytest.mark.parametrize("death", sorted(DEATHS))
def test_hard_death_is_a_retried_failure(tmp_path: Path, death: str) -> None:
    log = CallLog(str(tmp_path / "calls"))
    die, described = DEATHS[death]

    def trainer(config: dict[str, Any]) -> None:
        checkpoint = get_checkpoint()
        start = checkpoint.to_dict()["step"] + 1 if checkpoint else 1
        log.record(config["victim"], get_context().attempt, start)
        for step in range(start, 4):
            if config["victim"] and step == 2 and get_context().attempt == 1:
                die()
            report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))

    grid = Tuner(
        trainer, param_space={"victim": grid_search([True, False])},
        tune_config=TuneConfig(max_concurrent_trials=2),
        run_config=RunConfig(name="deaths", storage_path=str(tmp_path / "runs"),
                             failure_config=FailureConfig(max_failures=1)),
    ).fit()

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 2
    assert sorted(log.calls()) == [[False, 1, 1], [True, 1, 1], [True, 2, 2]]
    victim = grid[0]
    assert victim.outcome.attempts == 2
    assert victim.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3]
    error = (Path(victim.path) / "error.txt").read_text()
    assert error.count("Failure # ") == 1
    assert f"TrialCrashed: the process running trial {victim.outcome.trial_name} died" in error
    assert described in error


def kill_mid_commit(config: dict[str, Any]) -> None:
    """Attempt 1: SIGKILLs its own process once checkpoint 2 is fully staged, just before
    the rename that would commit it."""
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint else 1
    CallLog(config["log"]).record(get_context().attempt, start)
    if get_context().attempt == 1:
        rename = os.rename

        def rename_then_die(src: Any, dst: Any) -> None:
            if ".tmp-" in str(src) and str(dst).endswith("checkpoint_000001"):
                os.kill(os.getpid(), signal.SIGKILL)
            rename(src, dst)

        os.rename = rename_then_die
    for step in range(start, 4):
        report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))


def test_sigkill_mid_checkpoint_write_resumes_from_the_previous_one(tmp_path: Path) -> None:
    log = str(tmp_path / "calls")

    grid = Tuner(
        kill_mid_commit, param_space={"log": log},
        run_config=RunConfig(name="midwrite", storage_path=str(tmp_path / "runs"),
                             failure_config=FailureConfig(max_failures=1)),
    ).fit()

    (result,) = grid
    assert result.status is TrialStatus.TERMINATED
    assert CallLog(log).calls() == [[1, 1], [2, 2]]  # resumed after step 1, not step 2
    frame = result.metrics_dataframe
    assert frame["step"].tolist() == [1, 2, 3]
    # index 1 was claimed by the killed write and is never reused
    assert frame["checkpoint_dir_name"].tolist() == [
        "checkpoint_000000", "checkpoint_000002", "checkpoint_000003",
    ]
    names = sorted(p.name for p in Path(result.path).iterdir())
    assert not [n for n in names if n.startswith(".checkpoint_")]
    assert "killed by SIGKILL" in (Path(result.path) / "error.txt").read_text()


def test_unpicklable_trainable_fails_clearly_without_retries(tmp_path: Path) -> None:
    lock = threading.Lock()

    def trainer(config: dict[str, Any]) -> None:
        with lock:
            report({"x": 1})

    grid = Tuner(trainer, run_config=RunConfig(
        name="unpicklable", storage_path=str(tmp_path / "runs"),
        failure_config=FailureConfig(max_failures=3),
    )).fit()

    (result,) = grid
    assert result.status is TrialStatus.ERROR and result.outcome.attempts == 1
    assert "cannot be sent to the trial's process" in str(result.error)
    assert 'TuneConfig(isolation="thread")' in str(result.error)
