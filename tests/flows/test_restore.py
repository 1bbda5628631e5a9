"""Experiment state and Tuner.restore: what each status does on restore, fail_fast's
STOPPED trials, the clear errors, and a moved experiment."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    ConfigError,
    FailureConfig,
    RunConfig,
    TrialStatus,
)
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import CallLog

pytestmark = pytest.mark.usefixtures("prefect_server")


class Stepper:
    """Steps 1..4 with a checkpoint each. While `gate` is missing, trial "fail" raises at
    step 3 and trial "later" keeps reporting until the sweep stops it. Logs (trial id,
    attempt, first step) per call."""

    __name__ = "stepper"

    def __init__(self, directory: Path) -> None:
        self.log = CallLog(str(directory / "calls"))
        self.gate = str(directory / "gate")

    def __call__(self, config: dict[str, Any]) -> None:
        checkpoint = get_checkpoint()
        start = checkpoint.to_dict()["step"] + 1 if checkpoint else 1
        context = get_context()
        self.log.record(context.trial_id, context.attempt, start)
        while config["kind"] == "later" and not os.path.exists(self.gate):
            report({"waiting": True})  # raises once the sweep stops (or is terminated)
            time.sleep(0.01)
        for step in range(start, 5):
            if config["kind"] == "fail" and step == 3 and not os.path.exists(self.gate):
                raise RuntimeError("fails until the gate opens")
            report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))


def fail_fast_sweep(tmp_path: Path, isolation: str = "process") -> tuple[Stepper, str]:
    """ok finishes, fail errors, then fail_fast stops "later" (before it starts, or while
    it waits for the gate). The gate is open afterwards."""
    stepper = Stepper(tmp_path)
    grid = Tuner(
        stepper,
        param_space={"kind": grid_search(["ok", "fail", "later"])},
        tune_config=TuneConfig(max_concurrent_trials=1, isolation=isolation),  # type: ignore[arg-type]
        run_config=RunConfig(name="exp", storage_path=str(tmp_path / "runs"),
                             failure_config=FailureConfig(fail_fast=True)),
    ).fit()
    assert [r.status for r in grid] == [
        TrialStatus.TERMINATED, TrialStatus.ERROR, TrialStatus.STOPPED,
    ]
    Path(stepper.gate).touch()
    return stepper, str(tmp_path / "runs" / "exp")


def ids(grid: Any) -> list[str]:
    return [r.trial_id for r in grid]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_fail_fast_stops_the_rest_and_restore_resumes_them(
    tmp_path: Path, isolation: str
) -> None:
    stepper, path = fail_fast_sweep(tmp_path, isolation)
    stored = Tuner.restore(path, stepper).get_results()
    ok, fail, later = ids(stored)
    started = stored[2].outcome.attempts  # 0, or 1 if it had started when stopped
    before = stepper.log.calls()
    assert [c[0] for c in before][:2] == [ok, fail]

    grid = Tuner.restore(path, stepper).fit()

    assert [r.status for r in grid] == [
        TrialStatus.TERMINATED, TrialStatus.ERROR, TrialStatus.TERMINATED,
    ]
    after = stepper.log.calls()[len(before):]
    assert after == [[later, started + 1, 1]]  # only the stopped trial ran, from scratch
    assert grid[2].metrics_dataframe["step"].tolist() == [1, 2, 3, 4]


def test_resume_errored_continues_from_the_latest_checkpoint(tmp_path: Path) -> None:
    stepper, path = fail_fast_sweep(tmp_path)

    grid = Tuner.restore(path, stepper, resume_errored=True).fit()

    fail = grid[1]
    assert fail.status is TrialStatus.TERMINATED
    # attempts continue; resumed after the checkpoint of step 2
    assert [c for c in stepper.log.calls() if c[0] == fail.trial_id] == [
        [fail.trial_id, 1, 1], [fail.trial_id, 2, 3],
    ]
    frame = fail.metrics_dataframe
    assert frame["training_iteration"].tolist() == [1, 2, 3, 4]
    assert frame["checkpoint_dir_name"].tolist()[-1] == "checkpoint_000003"  # numbering goes on
    assert "Failure # 1" in (Path(fail.path) / "error.txt").read_text()


def test_restart_errored_starts_from_scratch(tmp_path: Path) -> None:
    stepper, path = fail_fast_sweep(tmp_path)

    grid = Tuner.restore(path, stepper, restart_errored=True).fit()

    fail = grid[1]
    assert fail.status is TrialStatus.TERMINATED
    assert [fail.trial_id, 1, 1] in stepper.log.calls()[2:]
    assert fail.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3, 4]
    assert not (Path(fail.path) / "error.txt").exists()
    kept = sorted(p.name for p in Path(fail.path).glob("checkpoint_*"))
    assert kept and kept[0] > "checkpoint_000001"  # the old checkpoints are gone


def test_resume_unfinished_false_keeps_them_stopped(tmp_path: Path) -> None:
    """Nothing runs: the trainable was called once each by "ok" and "fail" (and at most
    once by "later", stopped before or while it waited), and the restore calls it for no
    trial; "later" stays STOPPED with its attempts."""
    stepper, path = fail_fast_sweep(tmp_path)
    stored = Tuner.restore(path, stepper).get_results()
    ok, fail, later = ids(stored)
    before = stepper.log.calls()
    assert [c[:2] for c in before if c[0] != later] == [[ok, 1], [fail, 1]]
    assert len([c for c in before if c[0] == later]) <= 1

    grid = Tuner.restore(path, stepper, resume_unfinished=False).fit()

    assert [r.status for r in grid] == [
        TrialStatus.TERMINATED, TrialStatus.ERROR, TrialStatus.STOPPED,
    ]
    assert grid[2].outcome.attempts == stored[2].outcome.attempts
    assert stepper.log.calls() == before  # no call at all, for any of the 3 trials


def test_moved_experiment_restores(tmp_path: Path) -> None:
    stepper, path = fail_fast_sweep(tmp_path)
    moved = tmp_path / "elsewhere" / "exp"
    shutil.copytree(path, moved)
    shutil.rmtree(path)

    grid = Tuner.restore(str(moved), stepper).fit()

    assert grid.experiment_path == str(moved)
    assert grid[2].status is TrialStatus.TERMINATED
    assert grid[0].checkpoint is not None and grid[0].checkpoint.to_dict() == {"step": 4}
    state = (moved / "experiment.json").read_text() + "".join(
        p.read_text() for p in moved.glob("*/trial.json")
    )
    assert str(tmp_path) not in state  # every stored path is relative


def test_fit_refuses_an_existing_experiment(tmp_path: Path) -> None:
    stepper, path = fail_fast_sweep(tmp_path)
    before = (Path(path) / "experiment.json").read_bytes()

    with pytest.raises(ConfigError, match=r"already exists at .*Tuner\.restore"):
        Tuner(stepper, param_space={"kind": "ok"},
              run_config=RunConfig(name="exp", storage_path=str(tmp_path / "runs"))).fit()

    assert (Path(path) / "experiment.json").read_bytes() == before


def test_restore_errors_are_clear(tmp_path: Path) -> None:
    stepper, path = fail_fast_sweep(tmp_path)

    def other(config: dict[str, Any]) -> None:
        pass

    with pytest.raises(ConfigError, match="created with trainable 'stepper', not 'other'"):
        Tuner.restore(path, other)
    nowhere = str(tmp_path / "runs" / "nothing")
    with pytest.raises(ConfigError, match=f"no experiment at '{nowhere}'"):
        Tuner.restore(nowhere, stepper)
    with pytest.raises(ConfigError, match="choose one"):
        Tuner.restore(path, stepper, resume_errored=True, restart_errored=True)
    assert Tuner.can_restore(path) and not Tuner.can_restore(nowhere)
    (Path(path) / "experiment.json").write_text("{")
    assert not Tuner.can_restore(path)


def test_state_files_hold_statuses_attempts_and_search_state(tmp_path: Path) -> None:
    _, path = fail_fast_sweep(tmp_path)
    root = Path(path)

    experiment = json.loads((root / "experiment.json").read_text())
    assert experiment["trainable"] == "stepper"
    assert isinstance(experiment["search"]["seed"], int)
    assert experiment["trials"] == []  # the search records each trial as it adds it
    trials = [json.loads(p.read_text()) for p in sorted((root / ".trials").iterdir())]
    assert [t["config"] for t in trials] == [{"kind": "ok"}, {"kind": "fail"}, {"kind": "later"}]
    states = [json.loads((root / t["trial_name"] / "trial.json").read_text()) for t in trials]
    assert [(s["status"], s["attempts"]) for s in states][:2] == [
        ("TERMINATED", 1), ("ERROR", 1),
    ]
    assert states[2]["status"] == "STOPPED" and states[2]["attempts"] in (0, 1)
    assert [c["index"] for c in states[0]["checkpoints"]] == [0, 1, 2, 3]  # keeps all
