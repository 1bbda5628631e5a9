"""fail_fast stops a trial that is already RUNNING when another trial fails for good: in a
thread its next report() raises, in a process its child is terminated; a trial still
queued never starts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import FailureConfig, RunConfig, TrialStatus
from prefect_tune.tasks import get_context, report

from ..conftest import CallLog

pytestmark = pytest.mark.usefixtures("prefect_server")

#: Seconds between the long trial's reports (pacing only: nothing waits on it).
PACE = 0.01
#: The long trial's loop: 60,000 reports of >= PACE seconds each, 10 minutes at least.
LOOP = 60_000
#: A safety valve, so that a sweep whose stop is broken fails in bounded time instead of
#: running the whole loop: the long trial returns normally (TERMINATED) after this long.
VALVE = 25.0
#: Bound on the long trial's reports: each takes >= PACE, so this many take >= 15 s. A
#: stopped trial reports only until shortly after the other trial fails (0.1-3 s, loaded).
MAX_REPORTS = 1_500
#: How long the failing trial polls for the long trial's first report before giving up.
DEADLINE = 20.0
#: From the failure to the long trial's last row (measured: ~0.01 s in a thread, 0.8 s
#: in a process, 2.6 s on a loaded machine): the process runner polls its stop event
#: every 0.5 s; the rest is the failed task's bookkeeping. A broken stop exceeds it by far.
STOP_LATENCY = 10.0


class Roles:
    """By config["role"]: "long" reports in a loop (its pid and a marker file after its
    first report), "fail" waits for that marker then raises, "queued" only logs that it
    started (it must never start)."""

    __name__ = "roles"

    def __init__(self, directory: Path) -> None:
        self.log = CallLog(str(directory / "calls"))
        self.marker = str(directory / "long-reported")

    def __call__(self, config: dict[str, Any]) -> None:
        role = config["role"]
        self.log.record(role, "start", os.getpid(), time.time())
        if role == "long":
            valve = time.monotonic() + VALVE
            for i in range(LOOP):
                report({"i": i})
                if i == 0:
                    Path(self.marker).touch()
                if time.monotonic() > valve:
                    self.log.record(role, "valve", i + 1, time.time())
                    return
                time.sleep(PACE)
            self.log.record(role, "finished", LOOP, time.time())
        elif role == "fail":
            deadline = time.monotonic() + DEADLINE
            while not os.path.exists(self.marker):
                if time.monotonic() > deadline:
                    raise RuntimeError("the long trial never reported")
                time.sleep(0.01)
            self.log.record(role, "raise", os.getpid(), time.time())
            raise RuntimeError("fails while the long trial runs")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_fail_fast_stops_a_running_trial_and_skips_the_queued_one(
    tmp_path: Path, isolation: Literal["thread", "process"]
) -> None:
    """A RUNNING trial is stopped promptly (STOPPED, few reports, no error, its process
    gone) once another trial fails, and the queued third trial never starts."""
    roles = Roles(tmp_path)

    grid = Tuner(
        roles,
        param_space={"role": grid_search(["long", "fail", "queued"])},
        tune_config=TuneConfig(max_concurrent_trials=2, isolation=isolation),
        run_config=RunConfig(name="exp", storage_path=str(tmp_path / "runs"),
                             failure_config=FailureConfig(fail_fast=True)),
    ).fit()

    long, fail, queued = grid
    calls = roles.log.calls()
    assert [r.config["role"] for r in grid] == ["long", "fail", "queued"]
    assert [r.status for r in grid] == [
        TrialStatus.STOPPED, TrialStatus.ERROR, TrialStatus.STOPPED,
    ]

    # the failing trial raised while the long one was running, as planned
    assert fail.error is not None
    assert "fails while the long trial runs" in (Path(fail.path) / "error.txt").read_text()
    raised_at = next(c[3] for c in calls if c[:2] == ["fail", "raise"])

    # the long trial was stopped, not finished (the sweep returned without waiting for it):
    # few rows, the last soon after the failure
    assert not [c for c in calls if c[0] == "long" and c[1] in ("valve", "finished")]
    rows = long.metrics_dataframe
    assert 1 <= len(rows) < MAX_REPORTS
    assert rows["i"].tolist() == list(range(len(rows)))
    assert rows["timestamp"].iloc[-1] - raised_at < STOP_LATENCY

    # a stop is not an error: no error in the result, trial.json or results table
    long_dir = Path(long.path)
    assert long.error is None and long.outcome.error is None
    state = json.loads((long_dir / "trial.json").read_text())
    assert state["status"] == "STOPPED" and state["error"] is None
    assert not (long_dir / "error.txt").exists()
    table = {row["trial_name"]: row for row in json.loads(
        (tmp_path / "runs" / "exp" / "results.json").read_text())}
    assert table[long.outcome.trial_name]["status"] == "STOPPED"
    assert not table[long.outcome.trial_name]["error"]

    # the queued trial never started: no call, no params.json, no rows
    assert ["queued", "start"] not in [c[:2] for c in calls]
    queued_dir = Path(queued.path)
    assert json.loads((queued_dir / "trial.json").read_text())["status"] == "STOPPED"
    assert not (queued_dir / "params.json").exists()
    assert not (queued_dir / "result.json").exists() or not (
        queued_dir / "result.json").read_text().strip()

    # in a process, the long trial's child was terminated (and is gone)
    long_pid = next(c[2] for c in calls if c[:2] == ["long", "start"])
    if isolation == "process":
        assert long_pid != os.getpid()
        assert not pid_exists(long_pid)
    else:
        assert long_pid == os.getpid()


class Attempts:
    """Logs (role, attempt) per call; role "fail" raises."""

    __name__ = "attempts"

    def __init__(self, directory: Path) -> None:
        self.log = CallLog(str(directory / "attempts"))

    def __call__(self, config: dict[str, Any]) -> None:
        self.log.record(config["role"], get_context().attempt)
        if config["role"] == "fail":
            raise RuntimeError("fails at once")


def test_a_trial_stopped_before_it_starts_records_no_attempt(tmp_path: Path) -> None:
    """A queued trial fail_fast never started has 0 attempts, and restored runs attempt 1."""
    attempts = Attempts(tmp_path)
    grid = Tuner(
        attempts,
        param_space={"role": grid_search(["fail", "queued"])},
        tune_config=TuneConfig(max_concurrent_trials=1, isolation="thread"),
        run_config=RunConfig(name="exp", storage_path=str(tmp_path / "runs"),
                             failure_config=FailureConfig(fail_fast=True)),
    ).fit()
    assert [r.status for r in grid] == [TrialStatus.ERROR, TrialStatus.STOPPED]
    assert attempts.log.calls() == [["fail", 1]]
    assert grid[1].outcome.attempts == 0

    restored = Tuner.restore(str(tmp_path / "runs" / "exp"), attempts).fit()

    assert restored[1].status is TrialStatus.TERMINATED
    assert attempts.log.calls()[1:] == [["queued", 1]]  # its first attempt
