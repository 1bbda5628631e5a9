"""Trial-side calls outside a trial, Tuner argument checks, and metric JSON checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from prefect_tune.flows import Tuner
from prefect_tune.storage.errors import ConfigError, MetricError, OutsideTrialError
from prefect_tune.storage.records import to_json_value
from prefect_tune.tasks import get_checkpoint, get_context, report


def test_outside_trial_error_is_a_runtime_error() -> None:
    assert issubclass(OutsideTrialError, RuntimeError)


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("report", lambda: report({})),
        ("get_checkpoint", get_checkpoint),
        ("get_context", get_context),
    ],
    ids=["report", "get_checkpoint", "get_context"],
)
def test_trial_call_outside_trial_raises_naming_function(
    name: str, call: Callable[[], Any]
) -> None:
    with pytest.raises(OutsideTrialError) as info:
        call()
    assert f"{name}()" in str(info.value)


def test_tuner_with_non_callable_trainable_raises() -> None:
    with pytest.raises(ConfigError) as info:
        Tuner(42)  # type: ignore[arg-type]
    assert "not callable" in str(info.value)


def test_tuner_with_unsupported_param_value_raises_naming_key() -> None:
    def train(config: dict[str, Any]) -> None:
        pass

    with pytest.raises(ConfigError) as info:
        Tuner(train, param_space={"x": object()})
    assert "'x'" in str(info.value)


def test_to_json_value_non_json_metric_raises_naming_key_path() -> None:
    with pytest.raises(MetricError) as info:
        to_json_value({"val": {"extra": object()}}, "metrics")
    assert "metrics/val/extra" in str(info.value)
