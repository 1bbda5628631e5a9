"""Warm workers: with process isolation, every attempt of a sweep runs in a process of its
own forked from one warm worker that imported the trainable's module once; nothing one
trial changes reaches the next; a trial process or warm worker killed by SIGKILL costs at
most that attempt; `isolation="spawn"` gives each attempt a new interpreter."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)

from prefect_tune.flows import (
    ASHAScheduler,
    Trainer,
    TuneConfig,
    Tuner,
    grid_search,
    tuner,
    with_parameters,
)
from prefect_tune.flows.results import ResultGrid
from prefect_tune.storage import ConfigError, FailureConfig, RunConfig, ScalingConfig, TrialStatus
from prefect_tune.tasks import forkserver

from .. import threaded_trainable, warm_stop, warm_trainable
from ..conftest import wait_for

pytestmark = pytest.mark.usefixtures("prefect_server")
STARTED = re.compile(r"trial (\S+) attempt (\d+): its process started in (\d+) ms \((.+)\)")


@pytest.fixture
def imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file warm_trainable's module appends its importing process ids to."""
    path = tmp_path / "imports"
    monkeypatch.setenv("WARM_IMPORTS", str(path))
    return path


def imported_by(path: Path, module: str = "") -> list[int]:
    """The processes other than this one that imported warm_trainable (or, with
    module="stop", warm_stop)."""
    lines = path.read_text().splitlines() if path.exists() else []
    pids = [int(line.split()[-1]) for line in lines if line.startswith(module)]
    return [pid for pid in pids if pid != os.getpid()]


def sweep(trainable: Any, tmp_path: Path, name: str, trials: int, **tune: Any) -> ResultGrid:
    return Tuner(
        trainable, param_space={"i": grid_search(list(range(trials)))},
        tune_config=TuneConfig(**{"max_concurrent_trials": 2, **tune}),
        run_config=RunConfig(name=name, storage_path=str(tmp_path / "runs"),
                             failure_config=FailureConfig(max_failures=1)),
    ).fit()


def start_lines(name: str, trials: int) -> dict[str, list[tuple[int, int, str]]]:
    """Each trial task run's "process started" log lines in Prefect's API, by task run
    name: (attempt, milliseconds, how)."""
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        task_runs = {t.id: t.name for t in client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])))}
        logs = wait_for(
            lambda: client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))),
            lambda found: sum(bool(STARTED.search(log.message)) for log in found) >= trials,
            timeout=60,
        )
    lines: dict[str, list[tuple[int, int, str]]] = {}
    for log in logs:
        match = STARTED.search(log.message)
        if match:
            assert log.task_run_id is not None, log.message
            assert task_runs[log.task_run_id] == match[1]  # the trial's own log
            lines.setdefault(match[1], []).append((int(match[2]), int(match[3]), match[4]))
    return lines


def log_messages(name: str, fragment: str, count: int) -> list[tuple[int, str]]:
    """(level, message) of the logs of flow run `name` holding `fragment`, once `count`
    are in."""
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        logs = wait_for(
            lambda: client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))),
            lambda found: sum(fragment in log.message for log in found) >= count, timeout=60)
    return [(log.level, log.message) for log in logs if fragment in log.message]


def test_twenty_trials_fork_from_one_warm_worker_and_log_their_start(
    tmp_path: Path, imports: Path
) -> None:
    grid = sweep(warm_trainable.quick, tmp_path, "warm-twenty", 20)

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 20
    (worker,) = imported_by(imports)  # the module was imported once, by the warm worker
    assert {r.metrics["ppid"] for r in grid} == {worker}
    assert len({r.metrics["pid"] for r in grid}) == 20
    lines = start_lines("warm-twenty", 20)
    # the module configured logging (prefect does, on import): the trial's records still
    # reach its log
    hello = log_messages("warm-twenty", "says hello through logging", 20)
    assert sorted(hello) == sorted((20, f"trial {i} says hello through logging")
                                   for i in range(20))
    assert sorted(lines) == sorted(r.outcome.trial_name for r in grid)
    for trial_lines in lines.values():
        ((attempt, _, how),) = trial_lines
        assert (attempt, how) == (1, "forked from the sweep's warm worker")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[forkserver.WarmWorker]:
    """Every warm worker started from now on."""
    workers: list[forkserver.WarmWorker] = []
    spawn = forkserver.WarmWorker.__init__

    def recording(worker: forkserver.WarmWorker) -> None:
        spawn(worker)
        workers.append(worker)

    monkeypatch.setattr(forkserver.WarmWorker, "__init__", recording)
    return workers


def test_fit_starts_the_warm_worker_before_the_flow_run_and_the_sweep_takes_it(
    tmp_path: Path, imports: Path, started: list[forkserver.WarmWorker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Tuner.fit()` starts the warm worker's interpreter before Prefect starts the flow
    run: the trials fork from that very process, which is gone after the sweep."""
    def flow_starts(*args: Any, **kwargs: Any) -> Any:
        assert [w.process.pid for w in forkserver._SPARE] == [started[0].process.pid]
        return begin(*args, **kwargs)

    begin = tuner.tune_flow
    monkeypatch.setattr(tuner, "tune_flow", flow_starts)
    grid = sweep(warm_trainable.quick, tmp_path, "warm-early", 3)

    (worker,) = started
    assert {r.metrics["ppid"] for r in grid} == {worker.process.pid}
    assert imported_by(imports) == [worker.process.pid]
    assert worker.process.returncode == 0 and forkserver._SPARE == []


def test_a_worker_started_for_a_sweep_that_fails_early_is_closed(
    tmp_path: Path, started: list[forkserver.WarmWorker]
) -> None:
    sweep(warm_trainable.quick, tmp_path, "warm-twice", 1)
    with pytest.raises(ConfigError, match="already exists"):
        sweep(warm_trainable.quick, tmp_path, "warm-twice", 1)

    assert len(started) == 2 and forkserver._SPARE == []
    assert [w.process.returncode for w in started] == [0, 0]


def test_what_only_the_plan_refers_to_is_imported_once_too(
    tmp_path: Path, imports: Path
) -> None:
    """A stop function and a scheduler are unpickled with the plan, not the trainable:
    the warm worker imports their modules (prefect_tune.flows, and prefect with it) once,
    not every trial's process."""
    grid = Tuner(
        warm_trainable.quick, param_space={"i": grid_search(list(range(4)))},
        tune_config=TuneConfig(metric="pid", mode="max", scheduler=ASHAScheduler(max_t=5)),
        run_config=RunConfig(name="warm-plan", storage_path=str(tmp_path / "runs"),
                             stop=warm_stop.never),
    ).fit()

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 4
    (worker,) = imported_by(imports, "stop")
    assert {r.metrics["ppid"] for r in grid} == {worker}


def test_nothing_a_trial_changes_reaches_the_next_trial_of_the_same_worker(
    tmp_path: Path
) -> None:
    grid = sweep(warm_trainable.probe, tmp_path, "warm-leaks", 4, max_concurrent_trials=1)

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 4
    found = [r.metrics for r in grid]
    assert len({f["ppid"] for f in found}) == 1  # one warm worker forked them all
    assert len({f["pid"] for f in found}) == 4
    assert {f["global"] for f in found} == {0}
    assert {f["env"] for f in found} == {0}
    assert len({f["threads"] for f in found}) == 1  # no trial found another's thread
    assert len({f["fds"] for f in found}) == 1  # nor its open file
    assert len({f["draw"] for f in found}) == 4  # numpy's generator is reseeded per fork


def test_a_trial_process_killed_mid_trial_is_retried_from_the_same_warm_worker(
    tmp_path: Path
) -> None:
    grid = sweep(warm_trainable.killed_once, tmp_path, "warm-killed", 1)

    (result,) = grid
    assert result.status is TrialStatus.TERMINATED
    assert result.outcome.attempts == 2
    rows = result.metrics_dataframe
    assert rows["step"].tolist() == [1, 2]
    assert rows["pid"].nunique() == 2 and rows["ppid"].nunique() == 1
    error = (Path(result.path) / "error.txt").read_text()
    assert "killed by SIGKILL" in error


def test_a_killed_warm_worker_harms_no_running_trial_and_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid = Tuner(
        warm_trainable.kills_its_warm_worker,
        param_space={"i": grid_search([0, 1])},
        tune_config=TuneConfig(max_concurrent_trials=1),
        run_config=RunConfig(name="warm-replaced", storage_path=str(tmp_path / "runs")),
    ).fit()

    assert [(r.status, r.outcome.attempts) for r in grid] == [(TrialStatus.TERMINATED, 1)] * 2
    first, second = (r.metrics["ppid"] for r in grid)
    assert first != second  # the second trial ran on a new warm worker
    assert f"the sweep's warm worker (pid {first}) died, killed by SIGKILL" in caplog.text


def test_spawn_gives_every_attempt_a_new_interpreter(tmp_path: Path, imports: Path) -> None:
    grid = sweep(warm_trainable.quick, tmp_path, "warm-spawn", 3, isolation="spawn")

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 3
    assert {r.metrics["ppid"] for r in grid} == {os.getpid()}  # children of the sweep
    assert sorted(imported_by(imports)) == sorted(r.metrics["pid"] for r in grid)
    hows = {how for lines in start_lines("warm-spawn", 3).values() for _, _, how in lines}
    assert hows == {"a new interpreter"}


def test_a_module_starting_threads_at_import_gets_new_interpreters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid = sweep(threaded_trainable.train, tmp_path, "warm-threaded", 2)

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 2
    assert {r.metrics["ppid"] for r in grid} == {os.getpid()}
    assert "trials start in fresh processes: importing the trainable's module starts " \
           "threads (import-time-poller)" in caplog.text


def test_trainer_ranks_import_the_module_once_each_and_the_trial_process_not_at_all(
    tmp_path: Path, imports: Path
) -> None:
    trainer = Trainer(warm_trainable.quick, scaling_config=ScalingConfig(num_workers=2))
    grid = Tuner(
        trainer, param_space={"train_loop_config": {"i": grid_search([0, 1, 2])}},
        tune_config=TuneConfig(max_concurrent_trials=1),
        run_config=RunConfig(name="warm-ranks", storage_path=str(tmp_path / "runs")),
    ).fit()

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 3
    # one warm worker, then one import per rank start: 3 trials x 2 ranks
    assert Counter(Counter(imported_by(imports)).values()) == {1: 7}


def test_shared_objects_are_loaded_once_by_the_warm_worker(tmp_path: Path) -> None:
    loads = tmp_path / "loads"
    trainable = with_parameters(warm_trainable.uses_shared,
                                shared=warm_trainable.Loaded(str(loads)))
    grid = sweep(trainable, tmp_path, "warm-shared", 3)

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 3
    (worker,) = {r.metrics["ppid"] for r in grid}
    assert loads.read_text().split() == [str(worker)]
