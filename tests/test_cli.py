"""The `prefect-tune` console script, run as a user would, against the session's server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

#: The console script installed beside this interpreter.
CLI = str(Path(sys.executable).with_name("prefect-tune"))


def run_cli(*args: str, api: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], check=False, env=dict(os.environ, PREFECT_API_URL=api),
        capture_output=True, text=True, timeout=300,
    )


def test_demo_runs_a_real_sweep_and_prints_the_best_trial(
    tmp_path: Path, prefect_server: str
) -> None:
    done = run_cli("demo", "--storage-path", str(tmp_path), "--name", "cli-demo", api=prefect_server)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "cli-demo" / "results.csv")
    assert list(table["status"]) == ["TERMINATED"] * 4
    best = table.loc[table["loss"].idxmin()]
    assert f"best trial: {tmp_path / 'cli-demo' / best['trial_name']}" in done.stdout
    assert f"checkpoint: {best['best_checkpoint']}" in done.stdout
    assert f"results:    {tmp_path / 'cli-demo' / 'results.csv'}" in done.stdout


@pytest.mark.usefixtures("prefect_server")
def test_errors_are_one_clear_line_and_exit_nonzero(prefect_server: str) -> None:
    done = run_cli("demo", "--storage-path", "nosuch://x", api=prefect_server)
    assert done.returncode == 1
    ours = [line for line in done.stderr.splitlines() if line.startswith("prefect-tune: error:")]
    assert len(ours) == 1
    assert ours[0].startswith("prefect-tune: error: storage_path 'nosuch://x' has an unknown scheme")


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [CLI, "--help"], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for command in ("demo", "ls", "show", "best", "restore", "export"):
        assert command in done.stdout


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    """A finished demo experiment (4 trials), shared by the read-only commands."""
    storage = tmp_path_factory.mktemp("cli")
    done = run_cli("demo", "--storage-path", str(storage), "--name", "shared", api=prefect_server)
    assert done.returncode == 0, done.stderr
    return storage / "shared"


def test_ls_counts_trials_by_status(experiment: Path, prefect_server: str) -> None:
    done = run_cli("ls", str(experiment.parent), api=prefect_server)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "shared" in line)
    assert "TERMINATED 4" in row and " 4 " in row


def test_show_and_best_name_the_best_checkpoint(experiment: Path, prefect_server: str) -> None:
    table = pd.read_csv(experiment / "results.csv")
    best = table.loc[table["loss"].idxmin()]
    shown = run_cli("show", str(experiment), api=prefect_server)
    assert shown.returncode == 0, shown.stderr
    assert all(name in shown.stdout for name in table["trial_name"])
    assert f"best trial: {best['trial_name']} with loss=" in shown.stdout
    printed = run_cli("best", str(experiment), api=prefect_server)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == best["best_checkpoint"]
    worst = table.loc[table["loss"].idxmax()]
    inverted = run_cli("best", str(experiment), "--mode", "max", api=prefect_server)
    assert inverted.stdout.strip().startswith(str(experiment / worst["trial_name"]))


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_writes_the_trial_table(
    experiment: Path, prefect_server: str, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"table.{fmt}"
    done = run_cli("export", str(experiment), "--format", fmt, "--output", str(out),
                   api=prefect_server)
    assert done.returncode == 0, done.stderr
    read = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt]
    exported = read(out)
    expected = pd.read_csv(experiment / "results.csv")
    assert list(exported["trial_name"]) == list(expected["trial_name"])
    assert exported["loss"].tolist() == pytest.approx(expected["loss"].tolist())


def test_restore_finishes_an_interrupted_experiment(tmp_path: Path, prefect_server: str) -> None:
    done = run_cli("demo", "--storage-path", str(tmp_path), "--name", "cut", api=prefect_server)
    assert done.returncode == 0, done.stderr
    trial = min(p for p in (tmp_path / "cut").iterdir() if (p / "trial.json").exists())
    # As if the driver died while the trial ran: no trial.json, no outcome cached by Prefect.
    (trial / "trial.json").unlink()
    for cached in (tmp_path / "cut" / ".prefect-results").glob(f"*{trial.name[-11:]}"):
        cached.unlink()
    listed = run_cli("ls", str(tmp_path), api=prefect_server)
    assert "RUNNING 1" in listed.stdout and "TERMINATED 3" in listed.stdout
    restored = run_cli("restore", str(tmp_path / "cut"), "--trainable",
                       "prefect_tune.flows.demo:train_linear", api=prefect_server)
    assert restored.returncode == 0, restored.stderr
    assert '"TERMINATED": 4' in restored.stdout
    assert (trial / "trial.json").exists()


def test_a_missing_experiment_is_one_error_line(tmp_path: Path, prefect_server: str) -> None:
    done = run_cli("show", str(tmp_path / "nope"), api=prefect_server)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"prefect-tune: error: no experiment at '{tmp_path / 'nope'}'")


def test_ls_and_best_read_an_experiment_on_s3(
    prefect_server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import json

    from prefect_tune.flows import TuneConfig, Tuner, grid_search
    from prefect_tune.flows.demo import train_linear
    from prefect_tune.storage import RunConfig
    from tests.conftest import make_backend

    s3 = make_backend("s3", request, tmp_path)
    grid = Tuner(
        train_linear, param_space={"lr": grid_search([0.05, 0.1]), "epochs": 2},
        tune_config=TuneConfig(metric="loss", mode="min", isolation="thread"),
        run_config=RunConfig(name="on-s3", storage_path=s3.url, storage_options=s3.options),
    ).fit()
    options = json.dumps(s3.options)
    listed = run_cli("ls", s3.url, "--storage-options", options, api=prefect_server)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "on-s3" in line)
    assert "TERMINATED 2" in row
    printed = run_cli("best", f"{s3.url}/on-s3", "--storage-options", options,
                      api=prefect_server)
    assert printed.returncode == 0, printed.stderr
    best = grid.get_best_result()
    assert printed.stdout.strip() == grid.best_checkpoint(best).path
    assert printed.stdout.startswith(f"{s3.url}/on-s3/")
