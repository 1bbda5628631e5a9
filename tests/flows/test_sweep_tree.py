"""End-to-end sweeps against the session's real Prefect server: the exact storage tree,
retention, results tables, ResultGrid, and what Prefect records."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterName,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.results import ResultRecord

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    RunConfig,
    TrialError,
    TrialOutcome,
    TrialStatus,
)
from prefect_tune.tasks import TrialContext, get_checkpoint, get_context, report

from ..conftest import Backend, CallLog, wait_for

pytestmark = pytest.mark.usefixtures("prefect_server")


def seed_example(config: dict[str, Any]) -> None:
    """The seed document's example: four checkpoints reported with losses 2, 4, 1, 3."""
    for loss in (2, 4, 1, 3):
        report({"loss": loss}, checkpoint=Checkpoint.from_dict({"loss": loss}))


def keep_two_smallest(backend: Backend, name: str) -> RunConfig:
    return RunConfig(
        name=name,
        storage_path=backend.url,
        storage_options=backend.options or None,
        checkpoint_config=CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"
        ),
    )


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def test_keep_two_best_on_every_backend(backend: Backend) -> None:
    grid = Tuner(seed_example, run_config=keep_two_smallest(backend, "seed")).fit()

    (result,) = grid
    names = [c.path.rsplit("/", 1)[-1] for c, _ in result.best_checkpoints]
    assert names == ["checkpoint_000000", "checkpoint_000002"]
    assert [m["loss"] for _, m in result.best_checkpoints] == [2, 1]
    assert result.checkpoint is not None
    assert result.checkpoint.path.endswith("/checkpoint_000003")
    assert result.checkpoint.to_dict() == {"loss": 3}
    assert result.best_checkpoints[1][0].to_dict() == {"loss": 1}
    trial_dir = result.path.split("://", 1)[-1]
    fs = backend.fs
    listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(trial_dir, detail=False, refresh=True))
    assert [n for n in listed if n.startswith("checkpoint_")] == [
        "checkpoint_000000", "checkpoint_000002", "checkpoint_000003",
    ]
    assert not [n for n in listed if n.startswith(".")]  # no staging or probe leftovers


def test_experiment_tree_is_exactly_the_documented_layout(tmp_path: Path) -> None:
    """
    <storage>/tree/
        experiment.json  results.csv  results.json  .storage-marker.json
        .lease/                  empty: the run released its lease
        .trials/                 00000000.json 00000001.json: each trial as the search
                                 added it
        .prefect-results/        exactly 2 records of Prefect's: tree-<trial id> (the
                                 finished trial's outcome, under its cache key) and
                                 <32 hex> (the failed trial's TrialError: one failed
                                 task run, not retried, and Prefect names a failure's
                                 record with a fresh uuid4)
        trainer_<5 hex>_00000/   trial.json params.json result.json progress.csv
                                 events.out.tfevents.<time>.<host>.<ns> (TensorBoard)
                                 checkpoint_000000/ (.checkpoint.json, checkpoint.json)
                                 checkpoint_000002/ (...)
        trainer_<5 hex>_00001/   same, plus error.txt (it fails after two reports)
    """

    def trainer(config: dict[str, Any]) -> None:
        for step in range(3):
            if config["fail"] and step == 2:
                raise RuntimeError("diverged")
            report({"score": step}, checkpoint=Checkpoint.from_dict({"step": step}))

    Tuner(
        trainer,
        param_space={"fail": grid_search([False, True])},
        run_config=RunConfig(
            name="tree", storage_path=str(tmp_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="min"
            ),
        ),
    ).fit()

    root = tmp_path / "tree"
    ok, failed = sorted(p.name for p in root.glob("trainer_*"))
    assert ok.startswith("trainer_") and ok.endswith("_00000") and len(ok) == len("trainer_") + 11
    checkpoint_files = [".checkpoint.json", "checkpoint.json"]
    ok_id = ok.removeprefix("trainer_")
    expected = ["experiment.json", "results.csv", "results.json", ".storage-marker.json",
                ".lease/", ".trials/", ".trials/00000000.json", ".trials/00000001.json",
                ".prefect-results/", f".prefect-results/tree-{ok_id}"]
    # best (score 0) plus the protected latest
    for trial, kept, extra in ((ok, (0, 2), []), (failed, (0, 1), ["error.txt"])):
        expected += [f"{trial}/", f"{trial}/params.json", f"{trial}/progress.csv",
                     f"{trial}/result.json", f"{trial}/trial.json", f"{trial}/events",
                     *[f"{trial}/{e}" for e in extra]]
        for index in kept:
            directory = f"{trial}/checkpoint_{index:06d}"
            expected += [f"{directory}/", *[f"{directory}/{f}" for f in checkpoint_files]]
    expected.append(".prefect-results/<uuid4 hex>")
    found = [re.sub(r"/events\.out\.tfevents\.\d+\.[^/]+$", "/events", p) for p in tree(root)]
    found = [re.sub(r"^\.prefect-results/[0-9a-f]{32}$", ".prefect-results/<uuid4 hex>", p)
             for p in found]
    assert sorted(found) == sorted(expected)
    records = {p.name: ResultRecord.deserialize(p.read_bytes()).result
               for p in (root / ".prefect-results").iterdir()}
    outcome = records.pop(f"tree-{ok_id}")
    assert isinstance(outcome, TrialOutcome)
    assert (outcome.trial_name, outcome.status) == (ok, TrialStatus.TERMINATED)
    ((_, failure),) = records.items()
    assert isinstance(failure, TrialError)
    assert (failure.outcome.trial_name, failure.outcome.status) == (failed, TrialStatus.ERROR)
    assert json.loads((root / ok / "params.json").read_text()) == {"fail": False}
    error = (root / failed / "error.txt").read_text()
    assert error.startswith("Failure # 1 (occurred at ")
    assert "RuntimeError: diverged" in error


def test_result_files_hold_every_report(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        report({"loss": 1.0})
        report({"loss": 0.5, "val": {"acc": 0.9}}, checkpoint=Checkpoint.from_dict({"a": 1}))
        report({"loss": 0.25, "late_key": "x"})

    grid = Tuner(trainer, run_config=RunConfig(name="rows", storage_path=str(tmp_path))).fit()

    trial = Path(grid[0].path)
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert [r["training_iteration"] for r in rows] == [1, 2, 3]
    assert [r["checkpoint_dir_name"] for r in rows] == [None, "checkpoint_000000", None]
    assert {r["trial_id"] for r in rows} == {grid[0].trial_id}
    assert all(isinstance(r["timestamp"], float) for r in rows)
    assert rows[1]["val"] == {"acc": 0.9}
    progress = pd.read_csv(trial / "progress.csv")
    assert list(progress["loss"]) == [1.0, 0.5, 0.25]
    assert list(progress["late_key"].fillna("")) == ["", "", "x"]  # a late key is not dropped
    assert list(progress["val/acc"].isna()) == [True, False, True]
    assert grid[0].metrics_dataframe["loss"].tolist() == [1.0, 0.5, 0.25]


def test_num_to_keep_zero_persists_no_checkpoint_but_records_metrics(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        for epoch in range(3):
            report({"epoch": epoch}, checkpoint=Checkpoint.from_dict({"epoch": epoch}))

    grid = Tuner(trainer, run_config=RunConfig(
        name="zero", storage_path=str(tmp_path),
        checkpoint_config=CheckpointConfig(num_to_keep=0),
    )).fit()

    (result,) = grid
    assert result.checkpoint is None and result.best_checkpoints == []
    assert result.metrics["epoch"] == 2
    assert not list(Path(result.path).glob("*checkpoint_*"))
    assert result.metrics_dataframe["checkpoint_dir_name"].isna().all()


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_context_and_fresh_start(tmp_path: Path, isolation: str) -> None:
    log = CallLog(str(tmp_path / "calls"))

    def trainer(config: dict[str, Any]) -> None:
        log.record(dataclasses.asdict(get_context()), get_checkpoint() is None, os.getpid())
        report({"x": 1})

    grid = Tuner(trainer, tune_config=TuneConfig(isolation=isolation),  # type: ignore[arg-type]
                 run_config=RunConfig(name="ctx", storage_path=str(tmp_path))).fit()

    ((fields, fresh, pid),) = log.calls()
    context = TrialContext(**fields)
    assert fresh
    assert (pid == os.getpid()) is (isolation == "thread")
    assert context.attempt == 1
    assert context.trial_id == grid[0].trial_id
    assert context.trial_name == f"trainer_{context.trial_id}"
    assert context.trial_path == grid[0].path == str(tmp_path / "ctx" / context.trial_name)
    assert (context.experiment_name, context.experiment_path) == ("ctx", str(tmp_path / "ctx"))


def test_results_tables_and_result_grid(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        if config["lr"] == 0.3:
            raise ValueError("lr too high")
        for step in range(1, 4):
            loss = config["lr"] * 10 / step
            report({"loss": loss}, checkpoint=Checkpoint.from_dict({"step": step}))

    grid = Tuner(
        trainer,
        param_space={"lr": grid_search([0.1, 0.01, 0.3]), "model": {"depth": 2}},
        tune_config=TuneConfig(metric="loss", mode="min", max_concurrent_trials=2),
        run_config=RunConfig(name="tables", storage_path=str(tmp_path)),
    ).fit()

    assert len(grid) == 3 and grid.num_terminated == 2 and grid.num_errors == 1
    assert "lr too high" in str(grid.errors[0])
    assert grid[2].status is TrialStatus.ERROR and grid[2].error is not None
    best = grid.get_best_result()
    assert best.config == {"lr": 0.01, "model": {"depth": 2}}
    assert grid.get_best_result(scope="all").config["lr"] == 0.01
    assert grid.get_best_result(metric="loss", mode="max", scope="avg").config["lr"] == 0.1
    frame = grid.get_dataframe()
    assert list(frame["config/lr"]) == [0.1, 0.01, 0.3]
    assert list(frame["config/model/depth"]) == [2, 2, 2]

    root = tmp_path / "tables"
    table = pd.read_csv(root / "results.csv")
    assert list(table["status"]) == ["TERMINATED", "TERMINATED", "ERROR"]
    assert table.loc[1, "best_score"] == pytest.approx(0.1 / 3)
    assert list(table["num_checkpoints"]) == [3, 3, 0]
    assert table.loc[0, "best_checkpoint"] == str(root / grid[0].outcome.trial_name
                                                  / "checkpoint_000002")
    assert "lr too high" in table.loc[2, "error"]
    records = json.loads((root / "results.json").read_text())
    assert [r["trial_id"] for r in records] == [r.trial_id for r in grid]


def test_prefect_records_flow_run_task_runs_and_artifacts(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        report({"loss": config["x"]})

    grid = Tuner(
        trainer,
        param_space={"x": grid_search([3.0, 1.0])},
        tune_config=TuneConfig(metric="loss", mode="min"),
        run_config=RunConfig(name="Prefect-Side 1", storage_path=str(tmp_path)),
    ).fit()

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["Prefect-Side 1"]))
        )
        assert run.state is not None and run.state.is_completed()
        assert "Prefect-Side 1" in run.tags
        trial_names = {r.outcome.trial_name for r in grid}
        task_runs = wait_for(
            lambda: client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]))),
            lambda runs: {t.name for t in runs} == trial_names
            and all(t.state is not None and t.state.is_completed() for t in runs),
        )
        mine = {t.name: t for t in task_runs}
        assert set(mine) == trial_names
        assert all("Prefect-Side 1" in t.tags for t in mine.values())
        # Filtered by the server: an unfiltered read returns only its first page.
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        artifacts = {a.key: a for a in found if a.key}
    assert set(artifacts) == {
        "prefect-side-1-progress", "prefect-side-1-results", "prefect-side-1-summary",
        "prefect-side-1-curves",
    }
    assert artifacts["prefect-side-1-progress"].data == 100.0
    assert "data:image/svg+xml;base64," in str(artifacts["prefect-side-1-curves"].data)
    table = artifacts["prefect-side-1-results"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["loss"] for row in table] == [1.0, 3.0]  # best first
    summary = artifacts["prefect-side-1-summary"].data
    best = grid.get_best_result()
    assert f"`{best.outcome.trial_name}` with loss = 1.0" in summary


def test_max_concurrent_trials_bounds_running_trials(tmp_path: Path) -> None:
    """Pairs of trials meet at a barrier (so two do run at once); never more than two run.
    (In threads, so that the trials can share the barrier.)"""
    import threading

    barrier = threading.Barrier(2)
    lock = threading.Lock()
    running, peak = [0], [0]

    def trainer(config: dict[str, Any]) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        barrier.wait(timeout=60)
        report({"i": config["i"]})
        with lock:
            running[0] -= 1

    grid = Tuner(
        trainer, param_space={"i": grid_search(list(range(6)))},
        tune_config=TuneConfig(max_concurrent_trials=2, isolation="thread"),
        run_config=RunConfig(name="bounded", storage_path=str(tmp_path)),
    ).fit()
    assert grid.num_terminated == 6
    assert peak[0] == 2
