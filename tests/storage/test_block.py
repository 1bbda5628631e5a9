"""Storage blocks saved to the session's real Prefect API, loaded by name, used by sweeps;
and credentials that never reach files, parameters, logs or artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
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
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from prefect_tune.flows import Tuner, grid_search
from prefect_tune.storage import Checkpoint, ConfigError, RunConfig, TuneStorage
from prefect_tune.tasks import report

from ..conftest import SECRET, drain_prefect_workers, gcs_options, s3_options

pytestmark = pytest.mark.usefixtures("prefect_server")


def trainer(config: dict[str, Any]) -> None:
    report({"loss": config["x"]}, checkpoint=Checkpoint.from_dict({"x": config["x"]}))


def sweep(name: str, **run: Any) -> Any:
    return Tuner(trainer, param_space={"x": grid_search([1.0, 2.0])},
                 run_config=RunConfig(name=name, **run)).fit()


def new_bucket(endpoint: str) -> str:
    import s3fs

    bucket = f"blk-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**s3_options(endpoint)).mkdir(bucket)
    return bucket


def test_our_block_by_name_on_s3(moto_endpoint: str) -> None:
    bucket = new_bucket(moto_endpoint)
    TuneStorage(
        url=f"s3://{bucket}/sweeps", storage_options=s3_options(moto_endpoint)
    ).save("s3-store", overwrite=True)

    grid = sweep("by-name", storage_block="tune-storage/s3-store")

    assert grid.experiment_path == f"s3://{bucket}/sweeps/by-name"
    assert grid.num_terminated == 2
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options(moto_endpoint))
    table = pd.read_csv(fs.open(f"{bucket}/sweeps/by-name/results.csv"))
    assert sorted(table["loss"]) == [1.0, 2.0]


def test_remote_file_system_block_on_gcs(gcs_endpoint: str) -> None:
    base = f"gs://sweeps/rfs-{uuid.uuid4().hex[:8]}"
    RemoteFileSystem(basepath=base, settings=gcs_options(gcs_endpoint)).save(
        "gcs-rfs", overwrite=True
    )
    grid = sweep("rfs", storage_block="remote-file-system/gcs-rfs")
    assert grid.experiment_path == f"{base}/rfs"
    assert [r.checkpoint.to_dict() for r in grid if r.checkpoint] == [{"x": 1.0}, {"x": 2.0}]


def test_local_file_system_block_and_block_instance(tmp_path: Path) -> None:
    LocalFileSystem(basepath=str(tmp_path / "a")).save("local-a", overwrite=True)
    sweep("lfs", storage_block="local-file-system/local-a")
    sweep("inst", storage_block=TuneStorage(url=str(tmp_path / "b")))
    assert (tmp_path / "a" / "lfs" / "results.csv").exists()
    assert (tmp_path / "b" / "inst" / "results.csv").exists()


def test_unknown_block_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="'tune-storage/missing-7c1'.*create it first"):
        sweep("nope", storage_block="tune-storage/missing-7c1")
    with pytest.raises(ConfigError, match="use 'slug/name'"):
        sweep("nope", storage_block="just-a-name")


def test_block_type_registers_from_the_package(prefect_server: str) -> None:
    """`-m prefect_tune.storage` finds the block although the package loads it lazily."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_tune.storage"],
        check=False, env=dict(os.environ, PREFECT_API_URL=prefect_server),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("tune-storage")
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
    assert block_type.name == "Tune Storage"
    assert schema is not None
    assert schema.fields["secret_fields"] == ["storage_options.*"]


def test_secrets_never_reach_files_parameters_logs_or_artifacts(
    moto_endpoint: str, prefect_server: str
) -> None:
    bucket = new_bucket(moto_endpoint)

    def failing(config: dict[str, Any]) -> None:
        report({"loss": 1.0}, checkpoint=Checkpoint.from_dict({"a": 1}))
        raise RuntimeError("trial failure for the record")

    TuneStorage(url=f"s3://{bucket}/blk", storage_options=s3_options(moto_endpoint)).save(
        "secret-store", overwrite=True
    )
    Tuner(failing, run_config=RunConfig(
        name="secret-path", storage_path=f"s3://{bucket}/p",
        storage_options=s3_options(moto_endpoint),
    )).fit()
    sweep("secret-block", storage_block="tune-storage/secret-store")

    import s3fs

    fs = s3fs.S3FileSystem(**s3_options(moto_endpoint))
    files = fs.find(bucket)
    assert any(f.endswith("error.txt") for f in files)
    for path in files:
        assert SECRET.encode() not in fs.cat_file(path), path
    drain_prefect_workers()
    with get_client(sync_client=True) as client:
        # Filtered by the server: an unfiltered read returns only its first page.
        mine = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["secret-path", "secret-block"])))
        assert len(mine) == 2
        assert SECRET not in json.dumps([r.parameters for r in mine], default=str)
        for run in mine:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            assert logs and not [log for log in logs if SECRET in log.message]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in mine])))
        assert artifacts and SECRET not in json.dumps([a.data for a in artifacts], default=str)
        document = client.read_block_document_by_name(
            "secret-store", "tune-storage", include_secrets=False
        )
    assert SECRET not in json.dumps(document.data, default=str)
    assert SECRET not in repr(TuneStorage.load("secret-store"))


ESCAPES = ["../outside.txt", "sub/../../outside.txt", "%2e%2e/outside.txt",
           "%2E%2E%2Foutside.txt", "/etc/outside.txt"]


@pytest.mark.parametrize("path", ESCAPES)
def test_block_refuses_local_paths_that_leave_its_root(tmp_path: Path, path: str) -> None:
    """read_path and write_path refuse "..", percent-encoded or not, and absolute paths
    elsewhere: nothing outside the block's URL is read or written."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_bytes(b"secret")
    block = TuneStorage(url=str(root))
    with pytest.raises(ConfigError, match="leaves storage"):
        block.read_path(path)
    with pytest.raises(ConfigError, match="leaves storage"):
        block.write_path(path, b"overwritten")
    assert (tmp_path / "outside.txt").read_bytes() == b"secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.txt", "root"]
    block.write_path("inside/a.txt", b"ok")
    assert block.read_path(str(root / "inside" / "a.txt")) == b"ok"


def test_block_refuses_another_bucket_or_scheme_on_s3(moto_endpoint: str) -> None:
    """On S3 a full URI must name the block's own bucket and prefix; another bucket, a
    sibling prefix or another scheme is refused, a relative path stays under the URL."""
    bucket = f"blk-{uuid.uuid4().hex[:8]}"
    block = TuneStorage(url=f"s3://{bucket}/base", storage_options=s3_options(moto_endpoint))
    storage = block.storage()
    storage.fs.mkdir(bucket)
    storage.fs.pipe_file(f"{bucket}/other/x", b"secret")
    for path in (f"s3://{bucket}/other/x", f"s3://{bucket}/base/../other/x", "../other/x",
                 "s3://another-bucket/base/x", "gs://" + bucket + "/base/x"):
        with pytest.raises(ConfigError):
            block.read_path(path)
        with pytest.raises(ConfigError):
            block.write_path(path, b"overwritten")
    assert storage.fs.cat_file(f"{bucket}/other/x") == b"secret"
    assert block.write_path("a/b", b"ok") == f"{bucket}/base/a/b"
    assert block.read_path(f"s3://{bucket}/base/a/b") == b"ok"
    assert block.read_path(f"{bucket}/base/a/b") == b"ok"
