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


def test_help_lists_demo() -> None:
    done = subprocess.run(
        [CLI, "--help"], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "demo" in done.stdout
