"""Bad input: each is a clear error naming the value, the URI and the fix, and loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import Tuner
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    RunConfig,
    StorageError,
)
from prefect_tune.tasks import report

from ..conftest import free_port, s3_options, wait_until_healthy

pytestmark = pytest.mark.usefixtures("prefect_server")


def one_report(config: dict[str, Any]) -> None:
    report({"loss": 1.0})


def fit(storage_path: str, options: dict[str, Any] | None = None, **run: Any) -> Any:
    return Tuner(
        one_report, run_config=RunConfig(name="bad", storage_path=storage_path,
                                         storage_options=options, **run),
    ).fit()


def test_unknown_scheme_names_the_url() -> None:
    with pytest.raises(StorageError, match=r"'nosuch://bucket/x' has an unknown scheme 'nosuch'"):
        fit("nosuch://bucket/x")


def test_missing_fsspec_package_says_what_to_install() -> None:
    with pytest.raises(StorageError, match=r"'oci://bucket/x' needs a package .*Install ocifs"):
        fit("oci://bucket/x")


def test_a_filesystem_that_cannot_start_is_a_storage_error() -> None:
    pytest.importorskip("pyarrow")  # hdfs:// then loads, and fails for want of a JVM
    with pytest.raises(StorageError, match=r"^storage_path 'hdfs://namenode/x' cannot be opened"):
        fit("hdfs://namenode/x")


def test_missing_bucket_names_uri_and_fix(moto_endpoint: str) -> None:
    with pytest.raises(StorageError) as info:
        fit("s3://no-such-bucket-3f9a/sweeps", s3_options(moto_endpoint))
    message = str(info.value)
    assert "s3://no-such-bucket-3f9a/sweeps/bad" in message
    assert "bucket or directory exists" in message


@pytest.fixture(scope="module")
def authenticating_moto() -> Iterator[str]:
    """A moto server that checks credentials (it knows none, so every key is refused)."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{url}/moto-api/", proc, "moto stderr", timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_refused_credentials_are_named_without_leaking_them(authenticating_moto: str) -> None:
    options = s3_options(authenticating_moto, secret="refused-secret-771")
    with pytest.raises(StorageError) as info:
        fit("s3://sweeps/x", options)
    message = str(info.value)
    assert "s3://sweeps/x/bad" in message
    assert "credentials were refused" in message
    assert "refused-secret-771" not in message


def test_missing_score_attribute_fails_the_trial_and_writes_no_checkpoint(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        report({"acc": 0.5}, checkpoint=Checkpoint.from_dict({"w": 1}))

    grid = Tuner(trainer, run_config=RunConfig(
        name="noscore", storage_path=str(tmp_path),
        checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="loss"),
    )).fit()

    (error,) = grid.errors
    assert "has no 'loss' metric" in str(error) and "checkpoint_score_attribute" in str(error)
    assert grid[0].checkpoint is None
    assert not list(Path(grid[0].path).glob("*checkpoint_*"))


def test_non_json_metric_names_the_key_and_other_trials_go_on(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        report({"loss": 1.0, "weights": {"layer": object()}} if config["bad"] else {"loss": 1.0})

    from prefect_tune.flows import grid_search

    grid = Tuner(trainer, param_space={"bad": grid_search([True, False])},
                 run_config=RunConfig(name="json", storage_path=str(tmp_path))).fit()

    assert grid.num_errors == 1 and grid.num_terminated == 1
    assert "metric 'weights'/layer" in str(grid.errors[0])
    assert "cannot be written as JSON" in str(grid.errors[0])
    assert grid[0].metrics_dataframe.empty  # nothing half-recorded for the failed report


def test_fit_of_invalid_config_creates_nothing(tmp_path: Path) -> None:
    from prefect_tune.storage import ConfigError

    with pytest.raises(ConfigError, match=r"'a/b'"):
        RunConfig(name="a/b", storage_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        RunConfig(name="..", storage_path=str(tmp_path))
    with pytest.raises(ConfigError, match="exactly one"):
        RunConfig(storage_path=str(tmp_path), storage_block="tune-storage/x")
    assert list(tmp_path.iterdir()) == []


def test_non_numeric_tune_metric_fails_that_trial_before_writing(tmp_path: Path) -> None:
    from prefect_tune.flows import TuneConfig, grid_search

    def trainer(config: dict[str, Any]) -> None:
        report({"loss": "bad" if config["bad"] else 1.0}, checkpoint=Checkpoint.from_dict({}))

    grid = Tuner(trainer, param_space={"bad": grid_search([True, False])},
                 tune_config=TuneConfig(metric="loss", mode="min"),
                 run_config=RunConfig(name="textloss", storage_path=str(tmp_path))).fit()

    assert grid.num_errors == 1 and "'loss' is 'bad', not a number" in str(grid.errors[0])
    assert grid[0].checkpoint is None and grid[0].metrics_dataframe.empty
    assert grid.get_best_result().config == {"bad": False}
