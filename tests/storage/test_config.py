"""Validation of CheckpointConfig, FailureConfig, RunConfig and TuneConfig."""

from __future__ import annotations

import re
from typing import Any

import pytest

from prefect_tune.flows.config import TuneConfig
from prefect_tune.storage.config import CheckpointConfig, FailureConfig, RunConfig
from prefect_tune.storage.errors import ConfigError


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "offending"),
    [
        ({"num_to_keep": -1}, "-1"),
        ({"num_to_keep": True}, "True"),
        ({"checkpoint_score_order": "best"}, "'best'"),
        ({"checkpoint_score_attribute": ""}, "''"),
    ],
    ids=["num_to_keep=-1", "num_to_keep=True", "order=best", "attribute=empty"],
)
def test_invalid_checkpoint_config_raises_naming_value(
    kwargs: dict[str, Any], offending: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(offending)):
        CheckpointConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "offending"),
    [({"max_failures": -2}, "-2"), ({"fail_fast": "yes"}, "'yes'")],
    ids=["max_failures=-2", "fail_fast=yes"],
)
def test_invalid_failure_config_raises_naming_value(
    kwargs: dict[str, Any], offending: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(offending)):
        FailureConfig(**kwargs)


@pytest.mark.parametrize("name", ["a/b", "..", "x/../y", "", ".hidden"])
def test_invalid_run_config_name_raises_naming_value(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(name=name)
    assert repr(name) in str(info.value)


def test_run_config_with_storage_path_and_block_raises_exactly_one() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(storage_path="/tmp/results", storage_block="remote-file-system/sweeps")
    message = str(info.value)
    assert "exactly one" in message
    assert "'/tmp/results'" in message
    assert "'remote-file-system/sweeps'" in message


def test_run_config_with_storage_block_and_options_raises() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(storage_block="remote-file-system/sweeps", storage_options={"key": "k"})
    assert "storage_options" in str(info.value)


def test_valid_defaults_construct() -> None:
    checkpoint = CheckpointConfig()
    failure = FailureConfig()
    run = RunConfig()
    tune = TuneConfig()
    assert checkpoint.num_to_keep is None
    assert checkpoint.checkpoint_score_order == "max"
    assert failure.max_failures == 0
    assert failure.fail_fast is False
    assert run.name is None and run.storage_path is None and run.storage_block is None
    assert run.checkpoint_config == CheckpointConfig()
    assert run.failure_config == FailureConfig()
    assert tune.num_samples == 1 and tune.metric is None and tune.mode is None


def test_run_config_repr_hides_storage_options() -> None:
    assert "S3CR3T" not in repr(RunConfig(storage_options={"secret": "S3CR3T"}))


def test_tune_config_metric_without_mode_raises() -> None:
    with pytest.raises(ConfigError) as info:
        TuneConfig(metric="loss")
    assert "'loss'" in str(info.value)


def test_tune_config_unknown_mode_raises() -> None:
    with pytest.raises(ConfigError) as info:
        TuneConfig(metric="loss", mode="avg")  # type: ignore[arg-type]
    assert "'avg'" in str(info.value)


def test_tune_config_num_samples_zero_raises() -> None:
    with pytest.raises(ConfigError) as info:
        TuneConfig(num_samples=0)
    assert "num_samples=0" in str(info.value)


def test_tune_config_max_concurrent_trials_zero_raises() -> None:
    with pytest.raises(ConfigError) as info:
        TuneConfig(max_concurrent_trials=0)
    assert "max_concurrent_trials=0" in str(info.value)
