"""A sweep's flow run ends in a state that tells the truth about its trials, and the
shipped deployment parameters work for any trainable's metric."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import StateType

from prefect_tune.deployments.deploy import SWEEP_PARAMETERS
from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.flows.sweep import sweep
from prefect_tune.storage import RunConfig
from prefect_tune.tasks import report

pytestmark = pytest.mark.usefixtures("prefect_server")


def fails_when_told(config: dict[str, Any]) -> None:
    report({"loss": 1.0})
    if config["fail"]:
        raise RuntimeError("planned failure")


def flow_run_state(name: str) -> tuple[StateType, str | None, str | None]:
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    assert run.state is not None
    return run.state.type, run.state.name, run.state.message


def fit(tmp_path: Path, name: str, fail: list[bool]) -> Any:
    return Tuner(
        fails_when_told, param_space={"fail": grid_search(fail)},
        tune_config=TuneConfig(isolation="thread", max_concurrent_trials=1),
        run_config=RunConfig(name=name, storage_path=str(tmp_path)),
    ).fit()


def test_a_sweep_in_which_no_trial_finished_fails_its_flow_run(tmp_path: Path) -> None:
    """Every trial errored: the flow run is Failed, its message counts the trials, and
    fit() still returns the grid with the errors."""
    grid = fit(tmp_path, "all-fail", [True, True])
    assert grid.num_errors == 2
    assert flow_run_state("all-fail") == (
        StateType.FAILED, "Failed",
        "no trial finished (2 trials: 0 terminated, 2 errored, 0 stopped)",
    )


def test_a_sweep_with_some_errored_trials_says_so(tmp_path: Path) -> None:
    grid = fit(tmp_path, "some-fail", [False, True])
    assert (grid.num_terminated, grid.num_errors) == (1, 1)
    assert flow_run_state("some-fail") == (
        StateType.COMPLETED, "Completed with errors",
        "2 trials: 1 terminated, 1 errored, 0 stopped",
    )


def test_a_sweep_whose_trials_all_finished_is_completed(tmp_path: Path) -> None:
    fit(tmp_path, "no-fail", [False, False])
    assert flow_run_state("no-fail") == (
        StateType.COMPLETED, "Completed", "2 trials: 2 terminated, 0 errored, 0 stopped",
    )


def test_shipped_parameters_work_with_a_trainable_of_another_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped deployments' parameters, run as `--param trainable=mymod:train --param
    metric=score --param mode=max` invites: checkpoints rank by the run's metric, every
    trial finishes, and the best kept checkpoint is the one with the highest score."""
    (tmp_path / "mymod.py").write_text(textwrap.dedent('''
        from prefect_tune.storage import Checkpoint
        from prefect_tune.tasks import report

        def train(config):
            for step, score in enumerate([0.2, 0.9, 0.5]):
                report({"score": score * config["lr"]},
                       checkpoint=Checkpoint.from_dict({"step": step}))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    parameters = {**SWEEP_PARAMETERS, "trainable": "mymod:train", "metric": "score",
                  "mode": "max", "param_space": {"lr": {"grid_search": [1.0, 2.0]}},
                  "num_samples": 1, "num_to_keep": 1, "name": "other-metric",
                  "storage_path": str(tmp_path / "storage")}
    summary = sweep(**parameters)
    assert summary["trials"] == {"TERMINATED": 2}
    assert summary["best"]["value"] == 1.0  # lr 2.0 x last score 0.5
    assert summary["best"]["checkpoint"].endswith("/checkpoint_000001")  # score 0.9 x 2
    trial = Path(summary["best"]["checkpoint"]).parent
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == [
        "checkpoint_000001", "checkpoint_000002",  # the best, and the latest
    ]
