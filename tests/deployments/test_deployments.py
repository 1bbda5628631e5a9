"""The sweep flow as users run it: `prefect deploy` from deployments/prefect.yaml, a process
work pool, `prefect worker start --run-once`, storage on the moto S3 server through a saved
TuneStorage block; then the run's pages rendered by headless Chromium.

Every test holds alone and in any order: each finds its flow runs by the ids it created,
waits for what the server makes asynchronously (scheduled runs), and the test that
replaces the deployments from Python puts the YAML's back."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from tests.conftest import SECRET, s3_options, wait_for

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
BLOCK = "tune-storage/e2e-moto"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def prefect(*args: str, api: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="1")
    return subprocess.run([*PREFECT, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class Deployed:
    api: str
    bucket: str
    options: dict[str, Any]

    def run(self, deployment: str, *params: str) -> subprocess.CompletedProcess[str]:
        return prefect("deployment", "run", deployment,
                       *(part for p in params for part in ("--param", p)), api=self.api)

    def start(self, deployment: str, *params: str) -> UUID:
        """Create a flow run of `deployment`; return its id."""
        done = self.run(deployment, *params)
        assert done.returncode == 0, done.stdout + done.stderr
        found = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
        assert found, done.stdout
        return UUID(found.group(1))

    def work(self) -> None:
        """One worker pass: runs what is due, waits for it, exits."""
        done = prefect("worker", "start", "--pool", "sweeps", "--run-once", api=self.api,
                       timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def deploy_yaml(api: str) -> None:
    """Create (or put back) both deployments of prefect.yaml."""
    done = prefect("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                   "--all", api=api)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def deployed(prefect_server: str, moto_endpoint: str) -> Iterator[Deployed]:
    """The work pool, both deployments of prefect.yaml, and a saved storage block on S3."""
    import s3fs

    from prefect_tune.storage import TuneStorage

    bucket = "e2e-sweeps"
    options = s3_options(moto_endpoint)
    s3fs.S3FileSystem(**options).mkdir(bucket)
    TuneStorage(url=f"s3://{bucket}/runs", storage_options=options).save(
        BLOCK.split("/")[1], overwrite=True)
    done = prefect("work-pool", "create", "sweeps", "--type", "process", "--overwrite",
                   api=prefect_server)
    assert done.returncode == 0, done.stdout + done.stderr
    deploy_yaml(prefect_server)
    yield Deployed(prefect_server, bucket, options)


@pytest.fixture(scope="module")
def sweep_run(deployed: Deployed) -> dict[str, Any]:
    """The on-demand deployment run once with a named experiment on S3."""
    run_id = deployed.start("sweep/on-demand", "name=e2e-on-demand",
                            f"storage_block={BLOCK}", "num_samples=1")
    deployed.work()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    assert flow_run.name == "e2e-on-demand"
    return {"flow_run": flow_run}


def test_a_deployment_run_writes_its_experiment_to_s3(deployed: Deployed, sweep_run: Any) -> None:
    import pandas as pd
    import s3fs

    flow_run = sweep_run["flow_run"]
    assert flow_run.state.type is StateType.COMPLETED, flow_run.state
    fs = s3fs.S3FileSystem(**deployed.options)
    with fs.open(f"{deployed.bucket}/runs/e2e-on-demand/results.csv") as handle:
        table = pd.read_csv(handle)
    assert list(table["status"]) == ["TERMINATED"] * 2  # the grid of 2, sampled once
    assert table["best_checkpoint"].str.startswith(f"s3://{deployed.bucket}/runs/").all()
    state_files = fs.find(f"{deployed.bucket}/runs/e2e-on-demand")
    assert not [p for p in state_files if SECRET in fs.cat_file(p).decode(errors="replace")]


def test_the_run_publishes_its_artifacts(deployed: Deployed, sweep_run: Any) -> None:
    keys = {f"e2e-on-demand-{kind}" for kind in ("results", "progress", "summary", "storage")}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sorted(keys))))
    assert {a.key for a in artifacts} == keys
    by_key = {a.key: a for a in artifacts}
    uri = f"s3://{deployed.bucket}/runs/e2e-on-demand"
    assert by_key["e2e-on-demand-storage"].data == f"[{uri}]({uri})"
    assert "**Best trial:**" in str(by_key["e2e-on-demand-summary"].data)


def test_an_invalid_parameter_is_refused_naming_the_field(deployed: Deployed) -> None:
    done = deployed.run("sweep/on-demand", "num_samples=0")
    assert done.returncode != 0
    assert "num_samples" in done.stdout + done.stderr
    done = deployed.run("sweep/on-demand", "mode=sideways")
    assert done.returncode != 0
    assert "mode" in done.stdout + done.stderr


def test_the_scheduled_deployment_has_runs_and_names_experiments_by_time(
    deployed: Deployed,
) -> None:
    """The server's scheduler creates the cron's runs a few seconds after a deploy."""
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("sweep/nightly")
        scheduled = wait_for(
            lambda: client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            ),
            bool,
        )
    assert scheduled, "the cron schedule produced no scheduled runs"
    assert all(r.expected_start_time.hour == 2 for r in scheduled)
    assert nightly.global_concurrency_limit is not None
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options is not None
    assert nightly.concurrency_options.collision_strategy == "ENQUEUE"
    assert nightly.parameters["resume"] is True


def test_a_run_of_the_scheduled_deployment_writes_an_experiment_named_after_it(
    deployed: Deployed,
) -> None:
    import pandas as pd
    import s3fs

    run_id = deployed.start("sweep/nightly", f"storage_block={BLOCK}", "num_samples=1")
    deployed.work()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    assert flow_run.state is not None and flow_run.state.type is StateType.COMPLETED
    assert flow_run.expected_start_time is not None
    name = f"nightly_{flow_run.expected_start_time:%Y-%m-%d_%H-%M-%S}"
    assert flow_run.name == name  # the run is named after its experiment
    fs = s3fs.S3FileSystem(**deployed.options)
    with fs.open(f"{deployed.bucket}/runs/{name}/results.csv") as handle:
        table = pd.read_csv(handle)
    assert list(table["status"]) == ["TERMINATED"] * 2


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_ui_shows_the_trials_and_the_best_metric(deployed: Deployed, sweep_run: Any) -> None:
    flow_run = sweep_run["flow_run"]
    base = deployed.api.removesuffix("/api")
    with get_client(sync_client=True) as client:
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["e2e-on-demand-summary"])))[0]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
    trial_names = sorted(t.name for t in tasks)
    assert len(trial_names) == 2
    run_page = render(f"{base}/v2/runs/flow-run/{flow_run.id}?tab=TaskRuns")
    for name in trial_names:
        assert name in run_page, f"{name} is not on the flow run's page"
    best_metric = str(summary.data).split("with loss = ", 1)[1].split("\n", 1)[0]
    artifact_page = render(f"{base}/v2/artifacts/artifact/{summary.id}")
    assert best_metric in artifact_page
    assert "e2e-on-demand" in artifact_page
    # each trial's task run shows the card of its attempt
    first = min(tasks, key=lambda t: t.name)
    task_page = render(f"{base}/v2/runs/task-run/{first.id}?tab=Artifacts")
    assert f"{first.name}, attempt 1: finished" in task_page


def render(url: str) -> str:
    """The DOM of `url` after the single-page app had 20 s of virtual time to load."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=180, check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def yaml_put_back(deployed: Deployed) -> Iterator[None]:
    """Whatever the test deploys instead, the YAML's deployments are back after it."""
    yield
    deploy_yaml(deployed.api)


@pytest.mark.usefixtures("yaml_put_back")
def test_deploy_py_creates_the_deployments_of_prefect_yaml(deployed: Deployed) -> None:
    """It replaces the two deployments with its own, which must be the same as the
    YAML's; the YAML's are put back afterwards."""
    import yaml

    from prefect_tune.deployments.deploy import SWEEP_PARAMETERS, deploy_sweeps

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    from_yaml = {d["name"]: d for d in spec["deployments"]}
    assert from_yaml["on-demand"]["parameters"] == SWEEP_PARAMETERS
    assert from_yaml["nightly"]["parameters"] == {**SWEEP_PARAMETERS, "resume": True}
    ids = deploy_sweeps("sweeps")
    with get_client(sync_client=True) as client:
        made = {d.name: d for d in (client.read_deployment(i) for i in ids)}
    assert set(made) == {"on-demand", "nightly"}
    assert made["on-demand"].parameters == SWEEP_PARAMETERS
    # Prefect writes module entrypoints as "pkg.module.flow"; the YAML's "pkg.module:flow"
    # names the same flow.
    entrypoint = from_yaml["on-demand"]["entrypoint"].replace(":", ".")
    assert made["on-demand"].entrypoint == entrypoint
    nightly = made["nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.global_concurrency_limit is not None
    assert nightly.global_concurrency_limit.limit == 1
