"""SIGKILL the whole sweep (driver and trial processes) at many moments, then restore it
from its storage path alone: each kill lands where its point says, every trial ends with
the metrics of a clean run, finished trials are never called again, no uncommitted
checkpoint is ever resumed from, and no iteration is recorded twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.states import Crashed

from prefect_tune.flows import Tuner
from prefect_tune.storage import TrialStatus

from ..conftest import wait_for
from .crash_driver import NAME, STEPS, count_up, score

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Trial:
    """A trial directory right after a kill: its trial.json status (None: no record),
    its result rows, its committed checkpoints, its hidden entries (a directory as
    "name [its files]", random suffixes as "*"), and whether Prefect's record of its
    outcome (`.prefect-results/<experiment>-<trial id>`) exists."""

    status: str | None = None
    rows: int = 0
    checkpoints: tuple[int, ...] = ()
    hidden: tuple[str, ...] = ()
    cached: bool = False


@dataclass(frozen=True)
class Killed:
    """Where a kill lands, and what storage holds right after it: the experiment's files
    (besides the storage marker, the trial directories and their Prefect records) and
    each started trial, in trial order."""

    moment: str
    files: tuple[str, ...]
    trials: tuple[Trial, ...]


STATE = ("experiment.json",)
#: A trial finished and recorded everywhere: 4 rows, the best (step 1) and latest kept.
DONE = Trial("TERMINATED", STEPS, (0, STEPS - 1), cached=True)
STAGED = ".checkpoint_000000.tmp-* [.checkpoint.json checkpoint.json]"

#: "<event>:<n>" (see crash_driver) -> where the kill lands. 3 trials of 4 steps run one
#: at a time, each step checkpointed; num_to_keep=1 keeps the best (step 1) and the
#: latest, so the third and fourth rows each evict one checkpoint. A trial's first attempt
#: writes no trial.json: its first record is TERMINATED.
KILL_POINTS = {
    "experiment-json:1": Killed(
        "experiment.json written, no trial started", STATE, ()),
    "report:1": Killed(
        "first trial started, before its first report", STATE, (Trial(),)),
    "staged:1": Killed(
        "first trial's first checkpoint staged with its manifest, not yet renamed", STATE,
        (Trial(hidden=(STAGED,)),)),
    "committed:2": Killed(
        "first trial's second checkpoint committed, its row not yet written", STATE,
        (Trial(rows=1, checkpoints=(0, 1)),)),
    "evicting:1": Killed(
        "first trial's third row written, the checkpoint it evicts not yet moved aside",
        STATE, (Trial(rows=3, checkpoints=(0, 1, 2)),)),
    "deleting:1": Killed(
        "the evicted checkpoint_000001 moved aside, not yet removed", STATE,
        (Trial(rows=3, checkpoints=(0, 2),
               hidden=(".checkpoint_000001.deleting-* [.checkpoint.json checkpoint.json]",)),)),
    "trial-json:1": Killed(
        "first trial's trial.json written TERMINATED, its outcome not yet recorded for "
        "Prefect", STATE, (Trial("TERMINATED", STEPS, (0, STEPS - 1)),)),
    "cached:1": Killed(
        "first trial's outcome recorded for Prefect, the second not started", STATE,
        (DONE,)),
    "report:6": Killed(
        "second trial, before its second report", STATE,
        (DONE, Trial(rows=1, checkpoints=(0,)))),
    "trial-json:2": Killed(
        "second trial's trial.json written TERMINATED, not yet recorded for Prefect", STATE,
        (DONE, Trial("TERMINATED", STEPS, (0, STEPS - 1)))),
    "staged:9": Killed(
        "third trial's first checkpoint staged, not yet renamed", STATE,
        (DONE, DONE, Trial(hidden=(STAGED,)))),
    "results-csv:1": Killed(
        "every trial finished; results.csv written, results.json not", STATE + ("results.csv",),
        (DONE,) * 3),
    "results-json:1": Killed(
        "results.csv and results.json written, the results not yet published as artifacts",
        STATE + ("results.csv", "results.json"), (DONE,) * 3),
}


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


def hidden_entry(path: Path) -> str:
    """A hidden entry of a trial directory as `Trial.hidden` holds it."""
    name = re.sub(r"(\.tmp-|\.deleting-).*$", r"\1*", path.name)
    return f"{name} [{' '.join(sorted(p.name for p in path.iterdir()))}]" if path.is_dir() \
        else name


def observe(experiment: Path) -> tuple[tuple[str, ...], tuple[Trial, ...]]:
    """What the experiment directory holds now, as `Killed.files` and `Killed.trials`
    (a Prefect record of no trial here counts as a file)."""
    records = experiment / ".prefect-results"
    cached = {p.name for p in records.iterdir()} if records.exists() else set()
    trials = []
    directories = sorted(experiment.glob(f"{count_up.__name__}_*"))
    for trial in directories:
        state = trial / "trial.json"
        log = trial / "result.json"
        trials.append(Trial(
            status=json.loads(state.read_text())["status"] if state.exists() else None,
            rows=len(log.read_text().splitlines()) if log.exists() else 0,
            checkpoints=tuple(sorted(
                int(p.name.removeprefix("checkpoint_")) for p in trial.glob("checkpoint_*")
                if (p / ".checkpoint.json").exists())),
            hidden=tuple(sorted(hidden_entry(p) for p in trial.iterdir()
                                if p.name.startswith("."))),
            cached=f"{NAME}-{trial.name[-11:]}" in cached,
        ))
    stray = cached - {f"{NAME}-{trial.name[-11:]}" for trial in directories}
    files = [p.name for p in experiment.iterdir()
             if not p.is_dir() and p.name != ".storage-marker.json"]
    return tuple(sorted([*files, *(f".prefect-results/{name}" for name in stray)])), \
        tuple(trials)


def crash_and_restore(directory: Path, point: str, api: str) -> list[str]:
    """Run one kill point; return what went wrong (empty when all holds)."""
    problems: list[str] = []
    directory.mkdir()
    code = run_driver(directory, "fit", api, crash_at=point)
    if code != -signal.SIGKILL:
        return [f"fit exited {code}, not killed; see {directory / 'fit.log'}"]
    killed = json.loads((directory / "killed").read_text())["event"]
    experiment = directory / "storage" / NAME
    expected = KILL_POINTS[point]
    files, trials = observe(experiment)
    if killed != point:
        problems.append(f"killed at {killed}")
    if (files, trials) != (expected.files, expected.trials):
        problems.append(f"{expected.moment}: expected files {expected.files} and trials "
                        f"{expected.trials}, found {files} and {trials}")
    finished = {name for name, status in statuses(experiment).items() if status == "TERMINATED"}
    code = run_driver(directory, "restore", api)
    if code != 0:
        return [*problems, f"restore exited {code}; see {directory / 'restore.log'}"]
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
    """Each kill lands where its point says (the storage state proves it), and every
    restore ends with the clean result."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = dict(zip(KILL_POINTS, pool.map(
            lambda point: crash_and_restore(directory(tmp_path, point), point, prefect_server),
            KILL_POINTS,
        ), strict=True))
    assert {point: problems for point, problems in outcomes.items() if problems} == {}
    # The last point: the fit's flow run published no results (its progress artifact
    # shows that its artifacts are there to be read).
    killed = json.loads((directory(tmp_path, "results-json:1") / "killed").read_text())
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[killed["flow_run_id"]])))
    assert {a.key for a in artifacts if a.key is not None} == {f"{NAME}-progress"}
    assert all(a.task_run_id is not None for a in artifacts if a.key is None)  # trial cards


def directory(tmp_path: Path, point: str) -> Path:
    """Where the kill point runs: its driver's logs, calls, events and storage."""
    return tmp_path / point.replace(":", "-")


def test_flow_run_retry_skips_finished_trials(tmp_path: Path, prefect_server: str) -> None:
    """The driver dies once the first trial's outcome is recorded; `prefect flow-run
    retry` of its (crashed) flow run shows that trial Cached and runs only the others."""
    run = tmp_path / "run"
    run.mkdir()
    assert run_driver(run, "fit", prefect_server, "cached:1") == -signal.SIGKILL
    experiment = run / "storage" / NAME
    finished = sorted(n for n, s in statuses(experiment).items() if s == "TERMINATED")
    assert len(finished) == 1
    run_id = json.loads((run / "killed").read_text())["flow_run_id"]
    with get_client(sync_client=True) as client:  # what a worker would record for the kill
        client.set_flow_run_state(run_id, Crashed(message="driver killed"), force=True)

    done = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", run_id, "--entrypoint",
         "prefect_tune.flows.sweep:sweep"],
        cwd=REPO, env=dict(os.environ, PREFECT_API_URL=prefect_server, CRASH_PHASE="retry",
                           CRASH_DIR=str(run)),
        capture_output=True, text=True, timeout=300, check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert set(statuses(experiment).values()) == {"TERMINATED"}
    retried = [json.loads(call) for call in (run / "calls").read_text().splitlines()
               if call.startswith('["retry"')]
    assert sorted(c[1] for c in retried) == sorted(
        n[-11:] for n in statuses(experiment) if n not in finished)
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
    run = tmp_path / "run"
    run.mkdir()
    assert run_driver(run, "fit", os.environ["PREFECT_API_URL"], "cached:1") == -signal.SIGKILL
    path = str(run / "storage" / NAME)

    assert Tuner.can_restore(path)
    grid = Tuner.restore(path, count_up).get_results()
    # the search adds trials as slots free up: the next one was not suggested yet
    assert len(grid) == 1 and grid.num_terminated == 1
    assert grid[0].status is TrialStatus.TERMINATED
    assert grid[0].metrics_dataframe["step"].tolist() == list(range(1, STEPS + 1))
    assert not (run / "storage" / NAME / "results.csv").exists()  # nothing ran
