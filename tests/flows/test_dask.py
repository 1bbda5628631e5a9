"""Sweeps whose trials run on a Dask cluster of real worker processes: they really spread
over the workers, a worker killed mid-trial costs only a retry from the checkpoint, a
worker that cannot see the experiment's storage fails its trial at once, naming its host,
and trials asking for GPUs run as many at once as each worker declares, on its own ones.

The "other host" is a Dask worker in its own mount and UTS namespaces (`unshare`), where
the storage path is bind-mounted to a different directory: the same path, another disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prefect_dask", reason="prefect-dask is not installed")

from distributed import Client, LocalCluster
from prefect_dask import DaskTaskRunner

from prefect_tune.flows import (
    HyperBandScheduler,
    MedianStoppingRule,
    TuneConfig,
    Tuner,
    grid_search,
    with_resources,
)
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    ConfigError,
    FailureConfig,
    RunConfig,
    TrialStatus,
)
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import CallLog, make_backend

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

#: Workers import the trainables of this module by name, as they would a user's package.
ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def cluster(prefect_server: str) -> Iterator[LocalCluster]:
    """Two worker processes, one thread each; they inherit PREFECT_API_URL."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(ROOT)  # spawned workers start with this process's sys.path
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=":0", host="127.0.0.1") as local:
            yield local


def worker_pids(cluster: LocalCluster) -> set[int]:
    with Client(cluster.scheduler_address) as client:
        return set(client.run(os.getpid).values())


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def meet(config: dict[str, Any]) -> None:
    """Report the Dask worker process this trial runs under (with process isolation, the
    parent of the warm worker that forked the trial's process), after waiting (at most
    60 s) until trials have arrived from two different workers."""
    worker = parent_of(os.getppid()) if config["isolation"] == "process" else os.getpid()
    arrivals = Path(config["arrivals"])
    (arrivals / str(worker)).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(arrivals)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    report({"worker": worker}, checkpoint=Checkpoint.from_dict({"worker": worker}))


@pytest.mark.parametrize("storage", ["s3", "local"])
def test_trials_run_in_both_worker_processes(
    cluster: LocalCluster, storage: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    backend = make_backend(storage, request, tmp_path)
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    grid = Tuner(
        meet,
        param_space={"i": grid_search([0, 1, 2, 3]), "arrivals": str(arrivals),
                     "isolation": "process"},
        tune_config=TuneConfig(task_runner=DaskTaskRunner(address=cluster.scheduler_address),
                               max_concurrent_trials=2),
        run_config=RunConfig(name="exp", storage_path=backend.url,
                             storage_options=backend.options or None),
    ).fit()
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 4
    assert {r.metrics["worker"] for r in grid} == worker_pids(cluster)
    assert [r.checkpoint.to_dict()["worker"] for r in grid] == [
        r.metrics["worker"] for r in grid
    ]


def steps(config: dict[str, Any]) -> None:
    """Steps 1..4 with a checkpoint each; the first time it reaches step 3 it kills the
    process it runs in (the Dask worker: trials run in its thread)."""
    log = CallLog(config["log"])
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint else 1
    log.record("start", start, os.getpid(), get_context().attempt)
    for step in range(start, 5):
        if step == 3 and ["killed"] not in log.calls():
            log.record("killed")
            os._exit(1)
        report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))


def test_a_killed_worker_costs_a_retry_from_the_checkpoint(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    log = CallLog(str(tmp_path / "calls.log"))
    grid = Tuner(
        steps,
        param_space={"log": log.path},
        tune_config=TuneConfig(task_runner=DaskTaskRunner(address=cluster.scheduler_address),
                               isolation="thread"),
        run_config=RunConfig(name="exp", storage_path=str(tmp_path / "shared"),
                             failure_config=FailureConfig(max_failures=2)),
    ).fit()
    calls = log.calls()
    assert [c[:2] for c in calls] == [["start", 1], ["killed"], ["start", 3]]
    assert calls[0][2] != calls[2][2]  # the second start ran in another worker process
    assert grid[0].status is TrialStatus.TERMINATED
    assert grid[0].metrics_dataframe["step"].tolist() == [1, 2, 3, 4]
    assert grid[0].checkpoint.to_dict() == {"step": 4}


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--uts", "true"], check=False,
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def other_host(prefect_server: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A scheduler, and one worker on "other-host" that sees a different directory at
    tmp_path/storage. Yields the scheduler address and that storage path."""
    if not _can_unshare():
        pytest.skip("needs unshare with mount and UTS namespaces (root on Linux)")
    shared, elsewhere = tmp_path / "storage", tmp_path / "other-disk"
    shared.mkdir()
    elsewhere.mkdir()
    with LocalCluster(n_workers=0, dashboard_address=":0", host="127.0.0.1") as scheduler:
        script = 'hostname other-host && mount --bind "$1" "$2" && shift 2 && exec "$@"'
        worker = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script,
             "sh", str(elsewhere), str(shared), sys.executable, "-m", "distributed.cli.dask_worker",
             scheduler.scheduler_address, "--nthreads", "1", "--no-dashboard",
             "--host", "127.0.0.1"],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        try:
            with Client(scheduler.scheduler_address) as client:
                client.wait_for_workers(1, timeout=60)
            yield scheduler.scheduler_address, shared
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)


def never(config: dict[str, Any]) -> None:
    CallLog(config["log"]).record("ran")


def test_a_worker_that_cannot_see_local_storage_fails_at_once_naming_its_host(
    other_host: tuple[str, Path], tmp_path: Path
) -> None:
    address, storage = other_host
    log = CallLog(str(tmp_path / "calls.log"))
    grid = Tuner(
        never,
        param_space={"log": log.path},
        tune_config=TuneConfig(task_runner=DaskTaskRunner(address=address)),
        run_config=RunConfig(name="exp", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=3)),
    ).fit()
    result = grid[0]
    assert result.status is TrialStatus.ERROR
    message = result.outcome.error or ""
    assert message.startswith(
        f"StorageNotShared: trial {result.outcome.trial_name} on host 'other-host' cannot see "
        f"the experiment's storage {storage / 'exp'}: the sweep on host "
    )
    assert "(NFS)" in message and "s3://" in message
    assert log.calls() == []  # the trainable never ran, and it was not retried
    assert Tuner.restore(str(storage / "exp"), never).get_results()[0].status \
        is TrialStatus.ERROR


@pytest.fixture(scope="module")
def gpu_cluster(prefect_server: str) -> Iterator[LocalCluster]:
    """Two worker processes of two threads, each declaring two GPUs (the fake device ids
    0 and 1 of its CUDA_VISIBLE_DEVICES: no GPU is here)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(ROOT)
        patch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        with LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                          resources={"GPU": 2}, dashboard_address=":0",
                          host="127.0.0.1") as local:
            yield local


def gpu_probe(config: dict[str, Any]) -> None:
    """Report this trial's Dask worker and GPUs once `config["total"]` trials run at once
    (or 60 s have passed)."""
    arrivals = Path(config["arrivals"])
    (arrivals / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(arrivals)) < config["total"] and time.monotonic() < deadline:
        time.sleep(0.05)
    report({"worker": parent_of(os.getppid()), "together": len(os.listdir(arrivals)),
            "gpus": os.environ["CUDA_VISIBLE_DEVICES"]})


def test_each_dask_worker_runs_as_many_trials_as_its_gpus_each_on_its_own(
    gpu_cluster: LocalCluster, tmp_path: Path
) -> None:
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    grid = Tuner(
        with_resources(gpu_probe, {"gpu": 1}),
        param_space={"i": grid_search([0, 1, 2, 3]), "arrivals": str(arrivals), "total": 4},
        tune_config=TuneConfig(task_runner=DaskTaskRunner(
            address=gpu_cluster.scheduler_address), max_concurrent_trials=8),
        run_config=RunConfig(name="gpus", storage_path=str(tmp_path / "runs")),
    ).fit()

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 4
    assert {r.metrics["together"] for r in grid} == {4}  # all four ran at once
    by_worker: dict[int, list[str]] = {}
    for result in grid:
        by_worker.setdefault(result.metrics["worker"], []).append(result.metrics["gpus"])
    assert set(by_worker) == worker_pids(gpu_cluster)
    assert all(sorted(gpus) == ["0", "1"] for gpus in by_worker.values())


def test_a_trial_asking_more_than_any_dask_worker_declares_is_refused(
    gpu_cluster: LocalCluster, tmp_path: Path
) -> None:
    tuner = Tuner(
        with_resources(gpu_probe, {"gpu": 3}),
        tune_config=TuneConfig(task_runner=DaskTaskRunner(
            address=gpu_cluster.scheduler_address)),
        run_config=RunConfig(name="too-big", storage_path=str(tmp_path / "runs")),
    )
    with pytest.raises(ConfigError, match=r"a trial asks for \{'GPU': 3.0\}, but no Dask "
                                          r"worker declares that much.*--resources \"GPU=3\""):
        tuner.fit()
    assert not (tmp_path / "runs" / "too-big").exists()


@pytest.mark.parametrize("scheduler", ["asha", "hyperband", "median"])
def test_schedulers_decide_the_same_on_dask(
    cluster: LocalCluster, tmp_path: Path, scheduler: str
) -> None:
    """ASHA and the median rule stop trials inside Dask workers at the report that
    caused it; HyperBand pauses and resumes them there: the decisions are those of the
    default runner (tests/flows/test_schedulers.py)."""
    from .curves import A, B, C, D, follow
    from .test_schedulers import ASHA, MEDIAN_CURVES, assert_asha_decisions

    curves, chosen = {
        "asha": ([A, B, C, D], ASHA),
        "hyperband": ([c[:4] for c in (A, B, C, D)],
                      HyperBandScheduler(max_t=4, reduction_factor=2)),
        "median": (MEDIAN_CURVES, MedianStoppingRule(min_samples_required=2)),
    }[scheduler]
    grid = Tuner(
        follow, param_space={"curve": grid_search(curves)},
        tune_config=TuneConfig(
            metric="loss", mode="min", max_concurrent_trials=1, scheduler=chosen,
            task_runner=DaskTaskRunner(address=cluster.scheduler_address)),
        run_config=RunConfig(name="sched", storage_path=str(tmp_path / "runs")),
    ).fit()

    if scheduler == "asha":
        assert_asha_decisions(grid)
    else:
        reports = {"hyperband": [4, 2, 1, 1], "median": [4, 4, 4, 1, 2]}[scheduler]
        assert [r.outcome.num_reports for r in grid] == reports
        assert [r.stopped_early is None for r in grid] == [n == max(reports) for n in reports]


def test_asha_promotion_and_pbt_decide_the_same_on_dask(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The promotion planner and PBT's exploit (a checkpoint copied between trials that
    ran in Dask workers) make the default runner's decisions."""
    from dataclasses import replace

    from .curves import A, B, C, D, follow, grow
    from .test_schedulers import ASHA, PBT, assert_pbt_decisions, by_curve

    runner = DaskTaskRunner(address=cluster.scheduler_address)
    grid = Tuner(
        follow, param_space={"curve": grid_search([A, B, C, D])},
        tune_config=TuneConfig(metric="loss", mode="min", max_concurrent_trials=1,
                               task_runner=runner, scheduler=replace(ASHA, promotion=True)),
        run_config=RunConfig(name="promotion", storage_path=str(tmp_path / "runs")),
    ).fit()
    found = by_curve(grid)
    assert [found[n][:2] for n in "ABCD"] == [(TrialStatus.TERMINATED, 8)] * 2 + \
        [(TrialStatus.TERMINATED, 1)] * 2

    grid = Tuner(
        grow, param_space={"lr": grid_search([0.1, 0.2])},
        tune_config=TuneConfig(metric="score", mode="max", scheduler=PBT,
                               max_concurrent_trials=1,
                               task_runner=DaskTaskRunner(address=cluster.scheduler_address)),
        run_config=RunConfig(name="pbt", storage_path=str(tmp_path / "runs"),
                             stop={"training_iteration": 6},
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    ).fit()
    assert_pbt_decisions(grid)
