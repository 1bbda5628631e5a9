"""Each trial's working directory (Ray's chdir to the trial directory) and
`SyncConfig(sync_artifacts=True)`, which copies it to `<trial>/artifacts/` in storage, as
Ray's test_trial_dir / sync_artifacts tests expect: never mixing two trials' files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    ConfigError,
    FailureConfig,
    RunConfig,
    SyncConfig,
    TrialStatus,
)
from prefect_tune.tasks import get_context, report

from ..conftest import make_backend

pytestmark = pytest.mark.usefixtures("prefect_server")


def writer(config: dict[str, Any]) -> None:
    """Writes out.txt and logs/trial.txt into the cwd, naming its trial; reports where it
    ran."""
    context = get_context()
    os.makedirs("logs", exist_ok=True)
    for name in ("out.txt", "logs/trial.txt"):
        with open(name, "w", encoding="utf-8") as handle:
            handle.write(f"{context.trial_id}:{config['i']}")
    report({"cwd_is_working_dir": os.getcwd() == context.working_dir,
            "working_dir": context.working_dir})


def test_trials_in_processes_run_in_their_own_working_dirs_and_sync_them_to_s3(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    s3 = make_backend("s3", request, tmp_path)
    grid = Tuner(writer, param_space={"i": grid_search([0, 1, 2])},
                 tune_config=TuneConfig(max_concurrent_trials=3),
                 run_config=RunConfig(name="workdirs", storage_path=s3.url,
                                      storage_options=s3.options,
                                      sync_config=SyncConfig(sync_artifacts=True))).fit()

    assert all(r.metrics["cwd_is_working_dir"] for r in grid)
    assert len({r.metrics["working_dir"] for r in grid}) == 3
    for result in grid:
        trial = result.path.split("://", 1)[1]
        expected = f"{result.trial_id}:{result.config['i']}"
        assert s3.fs.cat_file(f"{trial}/artifacts/out.txt").decode() == expected
        assert s3.fs.cat_file(f"{trial}/artifacts/logs/trial.txt").decode() == expected


def test_a_trial_in_a_thread_keeps_the_sweeps_cwd_and_syncs_its_working_dir(
    tmp_path: Path
) -> None:
    def in_thread(config: dict[str, Any]) -> None:
        context = get_context()
        Path(context.working_dir, "note.txt").write_text(context.trial_id)
        report({"cwd": os.getcwd()})

    (result,) = Tuner(in_thread, tune_config=TuneConfig(isolation="thread"),
                      run_config=RunConfig(name="thread", storage_path=str(tmp_path),
                                           sync_config=SyncConfig(sync_artifacts=True))).fit()

    assert result.metrics["cwd"] == os.getcwd()
    assert Path(result.path, "artifacts", "note.txt").read_text() == result.trial_id


def test_files_are_copied_at_each_checkpoint_and_when_a_failed_attempt_ends(
    tmp_path: Path
) -> None:
    def checkpointed(config: dict[str, Any]) -> None:
        context = get_context()
        artifact = f"{context.trial_path}/artifacts/step.txt"
        fs, path = fsspec.core.url_to_fs(artifact)
        before = fs.cat_file(path).decode() if fs.exists(path) else None
        Path("step.txt").write_text(f"attempt {context.attempt} step 1")
        report({"step": 1, "before": before}, checkpoint=Checkpoint.from_dict({"step": 1}))
        report({"step": 2, "seen": fs.cat_file(path).decode()})  # copied at the checkpoint
        Path("step.txt").write_text(f"attempt {context.attempt} after step 2")
        if context.attempt == 1:
            raise RuntimeError("fails after step 2")

    (result,) = Tuner(checkpointed, run_config=RunConfig(
        name="on-checkpoint", storage_path=str(tmp_path),
        failure_config=FailureConfig(max_failures=1),
        sync_config=SyncConfig(sync_artifacts=True))).fit()

    assert result.status is TrialStatus.TERMINATED
    # attempt 1's first row, then attempt 2's (its row after the checkpoint was cut)
    rows = result.trial.read_rows()
    assert [(r["step"], r.get("before"), r.get("seen")) for r in rows] == [
        (1, None, None),  # nothing in storage before the first checkpoint
        (1, "attempt 1 after step 2", None),  # copied when the failed attempt ended
        (2, None, "attempt 2 step 1"),  # copied at the checkpoint
    ]
    assert Path(result.path, "artifacts", "step.txt").read_text() == "attempt 2 after step 2"


def test_without_sync_artifacts_nothing_is_copied(tmp_path: Path) -> None:
    (result,) = Tuner(writer, param_space={"i": 0}, run_config=RunConfig(
        name="unsynced", storage_path=str(tmp_path))).fit()

    assert result.metrics["cwd_is_working_dir"]
    assert Path(result.metrics["working_dir"], "out.txt").read_text() == \
        f"{result.trial_id}:0"
    assert not Path(result.path, "artifacts").exists()
    with pytest.raises(ConfigError, match="sync_artifacts='yes' must be True or False"):
        SyncConfig(sync_artifacts="yes")  # type: ignore[arg-type]


def test_a_trial_that_writes_no_files_leaves_no_working_dir(tmp_path: Path) -> None:
    def quiet(config: dict[str, Any]) -> None:
        report({"working_dir": get_context().working_dir})

    (result,) = Tuner(quiet, run_config=RunConfig(name="quiet",
                                                  storage_path=str(tmp_path))).fit()

    assert result.metrics["working_dir"].endswith(f"/quiet/{result.outcome.trial_name}")
    assert not Path(result.metrics["working_dir"]).exists()
