"""Experiments written by earlier versions stay readable and restorable.

tests/assets/experiment_v1 was written by state format 1: a sweep of `train_v1` over
{"lr": grid_search([0.1, 0.2]), "fail": grid_search([False, True])}, metric loss/min,
CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss",
checkpoint_score_order="min"). At steps 0..2 the trainable reported
{"loss": lr * (3 - step), "nested": {"acc": step / 3}} with Checkpoint.from_dict({"step":
step}); the "fail" trials raised RuntimeError("planned failure") at step 2, so trials 0
and 2 are TERMINATED (checkpoints 1 and 2 kept), 1 and 3 ERROR (checkpoints 0 and 1).
Every test works on a copy; the asset itself is never written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from prefect_tune.flows import Tuner
from prefect_tune.storage import Checkpoint, TrialStatus
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import CallLog

ASSET = Path(__file__).resolve().parents[1] / "assets" / "experiment_v1"
CLI = str(Path(sys.executable).with_name("prefect-tune"))
#: Where `train_v1` logs its calls (an environment variable, so that a trial's child
#: process finds it too).
CALLS = "PREFECT_TUNE_COMPAT_CALLS"
NAMES = [f"train_v1_bc07a_{i:05d}" for i in range(4)]
CONFIGS = [{"fail": False, "lr": 0.1}, {"fail": True, "lr": 0.1},
           {"fail": False, "lr": 0.2}, {"fail": True, "lr": 0.2}]
STATUSES = [TrialStatus.TERMINATED, TrialStatus.ERROR] * 2
#: Kept checkpoints per trial: the best 2 by loss (the latest among them).
KEPT = [(1, 2), (0, 1), (1, 2), (0, 1)]


def metrics(lr: float, step: int) -> dict[str, Any]:
    """What train_v1 reported at `step` (0-based) for learning rate `lr`."""
    return {"loss": lr * (3 - step), "nested": {"acc": step / 3}}


def train_v1(config: dict[str, Any]) -> None:
    """The asset's trainable, without its planned failure."""
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint is not None else 0
    context = get_context()
    CallLog(os.environ[CALLS]).record(context.trial_id, context.attempt, start)
    for step in range(start, 3):
        report(metrics(config["lr"], step), checkpoint=Checkpoint.from_dict({"step": step}))


def file_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> content)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def asset_files() -> dict[str, bytes]:
    """The asset's files as committed."""
    return file_bytes(ASSET)


@pytest.fixture
def experiment(tmp_path: Path, asset_files: dict[str, bytes]) -> Iterator[Path]:
    """A copy of the asset, as `<storage>/experiment_v1`; afterwards, the asset is
    checked to be unchanged."""
    copy = tmp_path / "storage" / "experiment_v1"
    shutil.copytree(ASSET, copy)
    yield copy
    assert file_bytes(ASSET) == asset_files


def test_a_format_1_experiment_reads_back(experiment: Path, asset_files: dict[str, bytes]
                                          ) -> None:
    """Statuses, configs, metrics, errors, the best trial and every kept checkpoint."""
    assert Tuner.can_restore(str(experiment))
    grid = Tuner.restore(str(experiment), train_v1).get_results()

    assert grid.experiment_path == str(experiment)
    assert [r.outcome.trial_name for r in grid] == NAMES
    assert [r.trial_id for r in grid] == [n.removeprefix("train_v1_") for n in NAMES]
    assert [r.status for r in grid] == STATUSES
    assert [r.config for r in grid] == CONFIGS
    assert (grid.num_terminated, grid.num_errors) == (2, 2)
    for result, config in zip(grid, CONFIGS, strict=True):
        last = 1 if config["fail"] else 2
        assert {k: result.metrics[k] for k in ("loss", "nested")} == metrics(config["lr"], last)
        assert result.metrics["training_iteration"] == last + 1
        assert result.metrics["checkpoint_dir_name"] == f"checkpoint_{last:06d}"
        frame = result.metrics_dataframe
        assert frame["training_iteration"].tolist() == list(range(1, last + 2))
        assert frame["loss"].tolist() == [metrics(config["lr"], s)["loss"]
                                          for s in range(last + 1)]
        assert frame["nested/acc"].tolist() == [s / 3 for s in range(last + 1)]
        assert frame["checkpoint_dir_name"].tolist() == [f"checkpoint_{s:06d}"
                                                         for s in range(last + 1)]
    for result in grid:
        if result.status is TrialStatus.ERROR:
            assert result.error is not None
            assert result.error.args[0] == (
                f"trial {result.outcome.trial_name} failed: RuntimeError: planned failure")
        else:
            assert result.error is None

    for result, kept, config in zip(grid, KEPT, CONFIGS, strict=True):
        trial = experiment / result.outcome.trial_name
        assert [(c.path, c.to_dict(), m) for c, m in result.best_checkpoints] == [
            (str(trial / f"checkpoint_{i:06d}"), {"step": i}, metrics(config["lr"], i))
            for i in kept
        ]
        assert result.checkpoint is not None
        assert result.checkpoint.path == str(trial / f"checkpoint_{kept[-1]:06d}")
        assert result.checkpoint.to_dict() == {"step": kept[-1]}

    best = grid.get_best_result()
    assert best.outcome.trial_name == NAMES[0]  # loss 0.1, the lowest last loss
    best_checkpoint = grid.best_checkpoint(best)
    assert best_checkpoint is not None
    assert best_checkpoint.path == str(experiment / NAMES[0] / "checkpoint_000002")
    assert best_checkpoint.to_dict() == {"step": 2}
    assert grid.summary() == {
        "experiment_path": str(experiment),
        "trials": {"TERMINATED": 2, "ERROR": 2},
        "best": {"trial": NAMES[0], "config": CONFIGS[0], "metric": "loss", "value": 0.1,
                 "checkpoint": best_checkpoint.path},
    }
    assert file_bytes(experiment) == asset_files  # reading wrote nothing


def cli(*args: str) -> str:
    """Run `prefect-tune` with `args`; its standard output (it must succeed)."""
    done = subprocess.run([CLI, *args], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 10) if isinstance(v, float) else v for k, v in row.items()}


def test_the_command_line_reads_a_format_1_experiment(
    experiment: Path, asset_files: dict[str, bytes]
) -> None:
    """`show` and `best` name the best trial and checkpoint; `export` gives the table
    the old version wrote as results.json (checkpoint URIs now in the copy), with the
    columns added since (stopped_early, empty)."""
    best = experiment / NAMES[0] / "checkpoint_000002"
    assert cli("show", str(experiment)).splitlines()[-2:] == [
        f"best trial: {NAMES[0]} with loss=0.1", f"checkpoint: {best}",
    ]
    assert cli("best", str(experiment)) == f"{best}\n"
    exported = json.loads(cli("export", str(experiment), "--format", "json"))
    written = json.loads(asset_files["results.json"])
    assert len(written) == 4
    for row in written:
        row["best_checkpoint"] = row["best_checkpoint"].replace(
            "/data/experiment_v1", str(experiment))
        row["stopped_early"] = None
    # the old version's results.json rounded floats to 10 digits; export keeps them all
    assert [rounded(row) for row in exported] == [rounded(row) for row in written]
    assert file_bytes(experiment) == asset_files


@pytest.mark.usefixtures("prefect_server")
def test_a_format_1_experiment_restores(
    experiment: Path, asset_files: dict[str, bytes], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """resume_errored: the errored trials resume from checkpoint_000001 and finish with
    exactly 3 rows each; the finished trials are not touched."""
    log = CallLog(str(tmp_path / "calls"))
    monkeypatch.setenv(CALLS, log.path)

    grid = Tuner.restore(str(experiment), train_v1, resume_errored=True).fit()

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 4
    ids = [r.trial_id for r in grid]
    assert log.calls() == [[ids[1], 2, 2], [ids[3], 2, 2]]  # attempt 2, after step 1
    for index in (1, 3):
        result, lr = grid[index], CONFIGS[index]["lr"]
        trial = experiment / NAMES[index]
        assert result.outcome.attempts == 2
        frame = result.metrics_dataframe
        assert frame["training_iteration"].tolist() == [1, 2, 3]
        assert frame["loss"].tolist() == [metrics(lr, s)["loss"] for s in range(3)]
        assert frame["nested/acc"].tolist() == [0.0, 1 / 3, 2 / 3]
        assert frame["checkpoint_dir_name"].tolist() == [f"checkpoint_{s:06d}" for s in range(3)]
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        old = [json.loads(line) for line in
               asset_files[f"{NAMES[index]}/result.json"].decode().splitlines()]
        assert len(rows) == 3 and rows[:2] == old  # the old rows, kept as they were
        assert {k: result.metrics[k] for k in ("loss", "nested")} == metrics(lr, 2)
        assert [(c.to_dict(), m) for c, m in result.best_checkpoints] == [
            ({"step": 1}, metrics(lr, 1)), ({"step": 2}, metrics(lr, 2))]
        assert sorted(p.name for p in trial.glob("checkpoint_*")) == [
            "checkpoint_000001", "checkpoint_000002"]  # checkpoint_000000 evicted
        assert (trial / "error.txt").read_text() == asset_files[
            f"{NAMES[index]}/error.txt"].decode()
    for index in (0, 2):
        assert grid[index].outcome.attempts == 1
        prefix = f"{NAMES[index]}/"
        assert {k: v for k, v in file_bytes(experiment).items() if k.startswith(prefix)} == {
            k: v for k, v in asset_files.items() if k.startswith(prefix)}
    assert (experiment / "experiment.json").read_bytes() == asset_files["experiment.json"]
    table = pd.read_csv(experiment / "results.csv")
    assert list(table["trial_name"]) == NAMES
    assert list(table["status"]) == ["TERMINATED"] * 4
    assert list(table["training_iteration"]) == [3] * 4
