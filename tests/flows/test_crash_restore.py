"""SIGKILL the whole sweep (driver and trial processes) at many moments, then restore it
from its storage path alone: every trial ends with the metrics of a clean run, finished
trials are never called again, no uncommitted checkpoint is ever resumed from, and no
iteration is recorded twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Crashed

from prefect_tune.flows import Tuner

from ..conftest import wait_for
from .crash_driver import NAME, STEPS, score

REPO = Path(__file__).resolve().parents[2]

#: "<event>:<n>" (see crash_driver): 3 trials of 4 steps run one at a time, each step
#: checkpointed; num_to_keep=1 keeps the best (step 1) and the latest.
KILL_POINTS = [
    "created:1",      # experiment.json written, no trial started
    "state:1",        # first trial marked RUNNING, its process not started
    "report:1",       # before the first report and checkpoint
    "staged:1",       # mid-checkpoint: staged, manifest written, not yet renamed
    "committed:2",    # checkpoint committed, its row not yet appended
    "appended:3",     # after a row, before retention deletes
    "deleting:1",     # mid-delete: the evicted checkpoint moved aside, not removed
    "state:2",        # first trial TERMINATED, the sweep not told yet
    "finished:1",     # between trials
    "report:6",       # in the middle of the second trial
    "staged:9",       # the third trial's first checkpoint, mid-write
    "aggregate:1",    # results.csv written, results.json not
    "publish:1",      # results written, artifacts not
]


def run_driver(directory: Path, phase: str, api: str, crash_at: str = "") -> int:
    env = dict(os.environ, PREFECT_API_URL=api, CRASH_AT=crash_at)
    with open(directory / f"{phase}.log", "wb") as log:
        return subprocess.run(
            [sys.executable, "-m", "tests.flows.crash_driver", str(directory), phase],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300,
            start_new_session=True, check=False,
        ).returncode


def statuses(experiment: Path) -> dict[str, str]:
    found = {}
    for state in experiment.glob("*/trial.json"):
        found[state.parent.name] = json.loads(state.read_text())["status"]
    return found


def crash_and_restore(directory: Path, point: str, api: str) -> list[str]:
    """Run one kill point; return what went wrong (empty when all holds)."""
    problems: list[str] = []
    directory.mkdir()
    code = run_driver(directory, "fit", api, crash_at=point)
    if code != -signal.SIGKILL:
        return [f"fit exited {code}, not killed; see {directory / 'fit.log'}"]
    experiment = directory / "storage" / NAME
    finished = {name for name, status in statuses(experiment).items() if status == "TERMINATED"}
    code = run_driver(directory, "restore", api)
    if code != 0:
        return [f"restore exited {code}; see {directory / 'restore.log'}"]
    calls = [json.loads(line) for line in (directory / "calls").read_text().splitlines()]
    for phase, trial_id, _attempt, _start, intact in calls:
        if not intact:
            problems.append(f"{trial_id} resumed from an uncommitted checkpoint")
        if phase == "restore" and any(name.endswith(trial_id) for name in finished):
            problems.append(f"{trial_id} had finished but was called again")
    table = pd.read_csv(experiment / "results.csv")
    if list(table["status"]) != ["TERMINATED"] * 3:
        problems.append(f"statuses after restore: {list(table['status'])}")
    for _, row in table.iterrows():
        problems += check_trial(experiment / row["trial_name"], {"x": row["config/x"]})
    return problems


def check_trial(trial: Path, config: dict[str, Any]) -> list[str]:
    problems = []
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    iterations = [row["training_iteration"] for row in rows]
    if iterations != list(range(1, STEPS + 1)):
        problems.append(f"{trial.name}: training_iteration {iterations}")
    if [row["score"] for row in rows] != [score(config, s) for s in range(1, STEPS + 1)]:
        problems.append(f"{trial.name}: scores {[row['score'] for row in rows]}")
    progress = pd.read_csv(trial / "progress.csv")
    if progress["training_iteration"].tolist() != list(range(1, STEPS + 1)):
        problems.append(f"{trial.name}: progress.csv {progress['training_iteration'].tolist()}")
    names = sorted(p.name for p in trial.iterdir())
    leftovers = [n for n in names if n.startswith(".checkpoint_")]
    if leftovers:
        problems.append(f"{trial.name}: leftovers {leftovers}")
    steps = sorted(
        json.loads((trial / n / "checkpoint.json").read_text())["step"]
        for n in names if n.startswith("checkpoint_")
    )
    if steps != [1, STEPS]:  # the best (lowest score) and the protected latest
        problems.append(f"{trial.name}: kept checkpoints of steps {steps}")
    return problems


def test_sweep_killed_at_any_moment_restores_to_the_clean_result(
    tmp_path: Path, prefect_server: str
) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(zip(KILL_POINTS, pool.map(
            lambda point: crash_and_restore(tmp_path / point.replace(":", "-"), point,
                                            prefect_server),
            KILL_POINTS,
        ), strict=True))
    assert {point: problems for point, problems in outcomes.items() if problems} == {}


def test_flow_run_retry_skips_finished_trials(tmp_path: Path, prefect_server: str) -> None:
    """The driver dies after the first trial; `prefect flow-run retry` of its (crashed)
    flow run shows that trial Cached and runs only the others."""
    directory = tmp_path / "run"
    directory.mkdir()
    assert run_driver(directory, "fit", prefect_server, "finished:1") == -signal.SIGKILL
    experiment = directory / "storage" / NAME
    finished = sorted(n for n, s in statuses(experiment).items() if s == "TERMINATED")
    assert finished
    run_id = json.loads((experiment / "experiment.json").read_text())["run"]["flow_run_id"]
    with get_client(sync_client=True) as client:  # what a worker would record for the kill
        client.set_flow_run_state(run_id, Crashed(message="driver killed"), force=True)

    done = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", run_id, "--entrypoint",
         f"{REPO}/tests/flows/crash_driver.py:retry_flow"],
        cwd=REPO, env=dict(os.environ, PREFECT_API_URL=prefect_server, CRASH_PHASE="retry",
                           CRASH_DIR=str(directory)),
        capture_output=True, text=True, timeout=300, check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert set(statuses(experiment).values()) == {"TERMINATED"}
    retried = [call for call in (directory / "calls").read_text().splitlines()
               if call.startswith('["retry"')]
    assert retried and not [c for c in retried for name in finished if name[-11:] in c]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        runs = wait_for(
            lambda: client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))),
            lambda found: sum(r.state_name == "Cached" for r in found) == len(finished),
        )
    assert flow_run.run_count == 2 and flow_run.state_name == "Completed"
    assert sorted(r.name for r in runs if r.state_name == "Cached") == finished


@pytest.mark.usefixtures("prefect_server")
def test_restored_experiment_can_be_read_without_running(tmp_path: Path) -> None:
    point = "finished:1"
    directory = tmp_path / "run"
    directory.mkdir()
    assert run_driver(directory, "fit", os.environ["PREFECT_API_URL"], point) == -signal.SIGKILL
    path = str(directory / "storage" / NAME)

    assert Tuner.can_restore(path)
    grid = Tuner.restore(path, _count_up()).get_results()
    assert len(grid) == 3 and grid.num_terminated >= 1
    assert not (directory / "storage" / NAME / "results.csv").exists()  # nothing ran


def _count_up() -> Any:
    from .crash_driver import count_up

    return count_up
