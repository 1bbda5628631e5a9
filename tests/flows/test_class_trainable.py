"""Class trainables and stop conditions: when a class trial saves (manually, every k
iterations, at the end), when any trial ends (thresholds, a function, "done"), and that a
failed class trial resumes from its latest checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.flows.sweep import sweep
from prefect_tune.storage import (
    CheckpointConfig,
    ConfigError,
    FailureConfig,
    RunConfig,
    TrialStatus,
)
from prefect_tune.tasks import Trainable, get_context, report

from ..conftest import CallLog

pytestmark = pytest.mark.usefixtures("prefect_server")


class Counter(Trainable):
    """Adds config["add"] per step; asks for a checkpoint at the steps in config["manual"],
    and says done at config["done_at"]."""

    def setup(self, config: dict[str, Any]) -> None:
        self.total = 0

    def step(self) -> dict[str, Any]:
        self.total += self.config["add"]
        result: dict[str, Any] = {"total": self.total}
        if self.iteration + 1 in self.config.get("manual", []):
            result["should_checkpoint"] = True
        if self.iteration + 1 == self.config.get("done_at"):
            result["done"] = True
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        return {"total": self.total}

    def load_checkpoint(self, checkpoint: dict[str, Any] | str) -> None:
        assert isinstance(checkpoint, dict)
        self.total = checkpoint["total"]


def run(tmp_path: Path, trainable: Any, space: dict[str, Any], **run: Any) -> Any:
    return Tuner(
        trainable, param_space=space,
        tune_config=TuneConfig(isolation="thread", max_concurrent_trials=2),
        run_config=RunConfig(name="exp", storage_path=str(tmp_path), **run),
    ).fit()


def saved_at(result: Any) -> list[int]:
    """The iterations whose row carries a checkpoint."""
    frame = result.metrics_dataframe
    return frame.loc[frame["checkpoint_dir_name"].notna(), "training_iteration"].tolist()


def test_periodic_and_end_checkpoints_of_a_class_trainable(tmp_path: Path) -> None:
    grid = run(tmp_path, Counter, {"add": 2}, stop={"training_iteration": 5},
               checkpoint_config=CheckpointConfig(checkpoint_frequency=2,
                                                  checkpoint_at_end=True))
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED
    assert result.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3, 4, 5]
    assert saved_at(result) == [2, 4, 5]
    assert result.checkpoint.to_dict() == {"total": 10}
    assert [c.to_dict() for c, _ in result.best_checkpoints] == [
        {"total": 4}, {"total": 8}, {"total": 10}
    ]


def test_manual_checkpoints_and_done_end_the_trial_without_being_metrics(
    tmp_path: Path
) -> None:
    grid = run(tmp_path, Counter, {"add": 1, "manual": [2, 3], "done_at": 4})
    result = grid[0]
    frame = result.metrics_dataframe
    assert frame["training_iteration"].tolist() == [1, 2, 3, 4]
    assert saved_at(result) == [2, 3]  # no checkpoint_at_end: none at the end
    assert "should_checkpoint" not in frame.columns
    # "done" is the field every row has (False while the trial runs), not the step's
    assert frame["done"].tolist() == [False] * 4 and result.metrics["done"] is True


def test_a_metric_threshold_stops_whichever_metric_reaches_it_first(tmp_path: Path) -> None:
    grid = run(tmp_path, Counter, {"add": grid_search([1, 5])},
               stop={"training_iteration": 6, "total": 10})
    assert [len(r.metrics_dataframe) for r in grid] == [6, 2]


def counting(config: dict[str, Any]) -> None:
    for step in range(1000):
        try:
            report({"loss": 1.0 / (step + 1)})
        except Exception as exc:  # a stop must pass through this
            raise RuntimeError(f"report() raised {type(exc).__name__}") from exc


def plain(config: dict[str, Any]) -> None:
    for step in range(5):
        report({"loss": 1.0 / (step + 1)})


def test_function_trainables_honour_stop_functions_and_thresholds(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    def stop(trial_id: str, result: dict[str, Any]) -> bool:
        seen.append((trial_id, result["training_iteration"]))
        return bool(result["loss"] < 0.26)

    grid = run(tmp_path / "fn", counting, {}, stop=stop)
    assert grid[0].status is TrialStatus.TERMINATED
    assert grid[0].metrics_dataframe["training_iteration"].tolist() == [1, 2, 3, 4]
    assert seen == [(grid[0].trial_id, i) for i in (1, 2, 3, 4)]  # once per result

    grid = run(tmp_path / "threshold", counting, {}, stop={"training_iteration": 3})
    assert len(grid[0].metrics_dataframe) == 3


def test_a_stop_metric_never_reported_fails_the_trial_naming_it(tmp_path: Path) -> None:
    grid = run(tmp_path, plain, {}, stop={"accuracy": 0.9},
               failure_config=FailureConfig(max_failures=2))
    assert grid[0].status is TrialStatus.ERROR
    assert "stop condition 'accuracy' is not among the reported metrics" in grid[0].error.args[0]
    assert grid[0].outcome.attempts == 1  # deterministic: not retried


@pytest.mark.parametrize("setting", [{"checkpoint_frequency": 2}, {"checkpoint_at_end": True}])
def test_class_only_triggers_are_refused_for_a_function(setting: dict[str, Any]) -> None:
    name = next(iter(setting))
    with pytest.raises(ConfigError, match=rf"CheckpointConfig\({name}=.*class trainables only"
                       r".*checkpoint=\.\.\. to report\(\)"):
        Tuner(counting, run_config=RunConfig(checkpoint_config=CheckpointConfig(**setting)))


@pytest.mark.parametrize("stop", [{}, {"loss": "low"}, {"x": True}, 3])
def test_a_malformed_stop_is_refused(stop: Any) -> None:
    with pytest.raises(ConfigError, match=r"stop=.* is invalid"):
        RunConfig(stop=stop)


class Periodic(Trainable):
    """The seed's periodic-checkpointing trainable: files in the checkpoint directory.
    Its process dies once, at iteration 5, while calls.log has no crash recorded."""

    def setup(self, config: dict[str, Any]) -> None:
        self.log = CallLog(config["log"])
        self.weights = [0.0] * config["input_size"]
        self.log.record("setup", get_context().attempt)

    def step(self) -> dict[str, Any]:
        self.weights = [w + 1.0 for w in self.weights]
        if self.iteration + 1 == 5 and ["crash"] not in self.log.calls():
            self.log.record("crash")
            os._exit(3)
        return {"mean": sum(self.weights) / len(self.weights)}

    def save_checkpoint(self, tmp_checkpoint_dir: str) -> str:
        with open(os.path.join(tmp_checkpoint_dir, "model.txt"), "w") as handle:
            handle.write(" ".join(map(str, self.weights)))
        return tmp_checkpoint_dir

    def load_checkpoint(self, tmp_checkpoint_dir: dict[str, Any] | str) -> None:
        assert isinstance(tmp_checkpoint_dir, str)
        with open(os.path.join(tmp_checkpoint_dir, "model.txt")) as handle:
            self.weights = [float(w) for w in handle.read().split()]
        self.log.record("loaded", self.iteration, self.weights[0])


def test_periodic_checkpointing_recovers_a_crashed_class_trial(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    grid = Tuner(
        Periodic,
        param_space={"input_size": 4, "log": log},
        run_config=RunConfig(
            name="exp", storage_path=str(tmp_path / "runs"),
            stop={"training_iteration": 8},
            checkpoint_config=CheckpointConfig(checkpoint_frequency=2),
            failure_config=FailureConfig(max_failures=5),
        ),
    ).fit()
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    assert CallLog(log).calls() == [["setup", 1], ["crash"], ["setup", 2], ["loaded", 4, 4.0]]
    frame = result.metrics_dataframe
    assert frame["training_iteration"].tolist() == list(range(1, 9))
    assert frame["mean"].tolist() == [float(i) for i in range(1, 9)]
    assert saved_at(result) == [2, 4, 6, 8]


def test_restore_continues_a_class_trial_and_needs_its_stop_function(tmp_path: Path) -> None:
    """A class trial that failed at iteration 3 is refused a restore without its stop
    function; given it, the restore resumes the trial from checkpoint_000001 and the stop
    function ends it at iteration 4: iterations 3 and 4 run once, counting on from the
    loaded total."""
    seen: list[int] = []

    def stop(trial_id: str, result: dict[str, Any]) -> bool:
        seen.append(int(result["training_iteration"]))
        return bool(result["training_iteration"] >= 4)

    gate = tmp_path / "gate"
    grid = run(tmp_path, Fragile, {"add": 1, "gate": str(gate)}, stop=stop,
               checkpoint_config=CheckpointConfig(checkpoint_frequency=1))
    assert grid[0].status is TrialStatus.ERROR and seen == [1, 2]
    before = grid[0].metrics_dataframe
    path = str(tmp_path / "exp")
    with pytest.raises(ConfigError, match=r"created with the stop function '.*stop'; pass it"):
        Tuner.restore(path, Fragile, resume_errored=True)
    gate.touch()
    seen.clear()

    grid = Tuner.restore(path, Fragile, stop=stop, resume_errored=True).fit()

    result = grid[0]
    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    assert seen == [3, 4]  # the given stop function, once per new result
    frame = result.metrics_dataframe
    assert frame["training_iteration"].tolist() == [1, 2, 3, 4]
    assert frame["total"].tolist() == [1, 2, 3, 4]  # 3 and 4 add to the loaded total of 2
    assert frame["checkpoint_dir_name"].tolist() == [f"checkpoint_{i:06d}" for i in range(4)]
    pd.testing.assert_frame_equal(frame.iloc[:2], before)  # rows 1-2 are the first run's
    assert result.metrics["total"] == 4
    assert result.checkpoint is not None and result.checkpoint.to_dict() == {"total": 4}


def test_the_sweep_flow_runs_a_class_trainable_by_import_path(tmp_path: Path) -> None:
    summary = sweep(
        trainable="prefect_tune.flows.demo:LinearModel",
        param_space={"lr": {"grid_search": [0.05, 0.1]}, "steps_per_epoch": 5},
        metric="loss", mode="min", name="cls", storage_path=str(tmp_path),
        checkpoint_frequency=2, checkpoint_at_end=True, stop={"training_iteration": 3},
    )
    assert summary["trials"] == {"TERMINATED": 2}
    grid = Tuner.restore(str(tmp_path / "cls"), _demo_class()).get_results()
    assert [saved_at(r) for r in grid] == [[2, 3], [2, 3]]


def _demo_class() -> type[Trainable]:
    from prefect_tune.flows.demo import LinearModel

    return LinearModel


class Fragile(Counter):
    """Counter that raises at iteration 3 while config["gate"] does not exist."""

    def step(self) -> dict[str, Any]:
        if self.iteration + 1 == 3 and not os.path.exists(self.config["gate"]):
            raise RuntimeError("fails until the gate opens")
        return super().step()


def test_restore_resumes_an_errored_class_trial_from_its_checkpoint(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    grid = run(tmp_path, Fragile, {"add": 1, "gate": str(gate)},
               stop={"training_iteration": 5},
               checkpoint_config=CheckpointConfig(checkpoint_frequency=1))
    assert grid[0].status is TrialStatus.ERROR
    gate.touch()
    grid = Tuner.restore(str(tmp_path / "exp"), Fragile, resume_errored=True).fit()
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    assert result.metrics_dataframe["total"].tolist() == [1, 2, 3, 4, 5]
    assert result.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3, 4, 5]
