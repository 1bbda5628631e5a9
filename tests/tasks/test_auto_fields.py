"""The fields every result row gets, as Ray Tune fills them in (its test_function_api.py
and test_result*.py read them): `done`, `date`, `time_this_iter_s`, `time_total_s`,
`iterations_since_restore`, `pid` and `hostname`, on top of `training_iteration`,
`trial_id`, `timestamp` and `checkpoint_dir_name`. They are reserved names, kept out of
the trial table; and what a function trainable returns or yields becomes a row as in Ray
(a number is `_metric`), anything else is refused."""

from __future__ import annotations

import itertools
import json
import os
import socket
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    FailureConfig,
    RunConfig,
    TrialOutcome,
    TrialStatus,
)
from prefect_tune.storage.records import AUTO_KEYS
from prefect_tune.tasks import Trainable, get_checkpoint, get_context, report

from ..conftest import CallLog

pytestmark = pytest.mark.usefixtures("prefect_server")

#: The fields this module is about, in the order rows have them.
RAY_FIELDS = ["done", "date", "time_this_iter_s", "time_total_s", "iterations_since_restore",
              "pid", "hostname"]


def sweep(trainable: Any, tmp_path: Path, *, isolation: str = "thread",
          param_space: dict[str, Any] | None = None, **run: Any) -> Any:
    return Tuner(
        trainable, param_space=param_space,
        tune_config=TuneConfig(isolation=isolation),  # type: ignore[arg-type]
        run_config=RunConfig(name="auto", storage_path=str(tmp_path / "runs"), **run),
    ).fit()


def rows_of(result: Any) -> list[dict[str, Any]]:
    text = (Path(result.path) / "result.json").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def interrupted(config: dict[str, Any]) -> None:
    """Five steps; a checkpoint at step 2 only. Attempt 1 reports step 3 (after the
    checkpoint), then fails; the retry resumes after step 2. Logs (attempt, pid)."""
    restored = get_checkpoint()
    start = restored.to_dict()["step"] + 1 if restored is not None else 1
    attempt = get_context().attempt
    CallLog(config["log"]).record(attempt, os.getpid())
    for step in range(start, 6):
        report({"step": step},
               checkpoint=Checkpoint.from_dict({"step": step}) if step == 2 else None)
        if attempt == 1 and step == 3:
            raise RuntimeError("preempted after step 3")


def test_rows_have_every_field_and_time_goes_on_across_a_retry(tmp_path: Path) -> None:
    log = CallLog(str(tmp_path / "calls"))

    (result,) = sweep(interrupted, tmp_path, isolation="process",
                      param_space={"log": log.path},
                      failure_config=FailureConfig(max_failures=1))

    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    rows = rows_of(result)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # attempt 1's step 3 was cut
    for row in rows:
        assert list(row) == ["step", *AUTO_KEYS]
        assert row["done"] is False
        assert row["hostname"] == socket.gethostname()
        stamp = datetime.fromtimestamp(row["timestamp"])
        assert abs((datetime.strptime(row["date"], "%Y-%m-%d_%H-%M-%S") - stamp)
                   .total_seconds()) < 1
        assert row["time_this_iter_s"] > 0
    assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["iterations_since_restore"] for r in rows] == [1, 2, 1, 2, 3]
    totals = [r["time_total_s"] for r in rows]
    assert totals == sorted(totals) and len(set(totals)) == 5
    assert totals[0] == pytest.approx(rows[0]["time_this_iter_s"], abs=1e-5)
    for before, row in itertools.pairwise(rows):
        # the retry's first row goes on from the row of the checkpoint it resumed from
        assert row["time_total_s"] == pytest.approx(
            before["time_total_s"] + row["time_this_iter_s"], abs=1e-5)
    (first, first_pid), (second, second_pid) = log.calls()
    assert (first, second) == (1, 2) and first_pid != second_pid != os.getpid()
    assert [r["pid"] for r in rows] == [first_pid] * 2 + [second_pid] * 3

    assert result.metrics["done"] is True  # the finished trial's final result
    assert result.metrics["step"] == 5 and result.metrics["pid"] == second_pid
    stored = json.loads((Path(result.path) / "trial.json").read_text())
    assert stored["last_metrics"]["done"] is True
    assert result.metrics_dataframe["done"].tolist() == [False] * 5


def test_an_errored_trials_last_metrics_are_not_done(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        report({"x": 1})
        raise ValueError("diverged")

    (result,) = sweep(trainer, tmp_path)

    assert result.status is TrialStatus.ERROR
    assert result.metrics["done"] is False and result.metrics["x"] == 1


def test_the_tables_leave_the_fields_out_and_the_dataframe_has_them(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        for loss in (3.0, 2.0):
            report({"loss": loss})

    grid = sweep(trainer, tmp_path, param_space={"lr": grid_search([0.1, 0.2])})

    table = grid.get_dataframe()  # trial_id is its first column anyway
    assert not set(table.columns) & set(AUTO_KEYS) - {"training_iteration", "trial_id"}
    assert "loss" in table.columns and table["training_iteration"].tolist() == [2, 2]
    stored = pd.read_csv(Path(grid.experiment_path) / "results.csv")
    assert not set(stored.columns) & set(AUTO_KEYS) - {"training_iteration", "trial_id"}
    frame = grid[0].metrics_dataframe
    assert set(RAY_FIELDS) <= set(frame.columns)
    assert frame["iterations_since_restore"].tolist() == [1, 2]


@pytest.mark.parametrize("name", RAY_FIELDS)
def test_a_user_metric_with_a_reserved_name_is_refused(tmp_path: Path, name: str) -> None:
    log = CallLog(str(tmp_path / "calls"))

    def trainer(config: dict[str, Any]) -> None:
        log.record(get_context().attempt)
        report({name: True if name == "done" else 1, "loss": 1.0})

    (result,) = sweep(trainer, tmp_path, failure_config=FailureConfig(max_failures=2))

    assert result.status is TrialStatus.ERROR
    assert log.calls() == [[1]]  # it would fail the same way again: not retried
    error = result.outcome.error_summary
    assert "MetricError" in error, error
    assert f"metric {name!r} is set by prefect-tune on every row; rename yours" in error
    assert "Reserved: training_iteration, trial_id, timestamp" in error
    if name == "done":
        assert "a trial ends when its trainable returns, or by RunConfig(stop=...)" in error


def test_a_stop_function_and_a_scheduler_read_the_fields(tmp_path: Path) -> None:
    """Ray's common stop={"time_total_s": ...} works: the condition sees every field."""
    seen: list[dict[str, Any]] = []

    def stop(trial_id: str, row: dict[str, Any]) -> bool:
        seen.append(row)
        return bool(row["iterations_since_restore"] >= 3)

    def trainer(config: dict[str, Any]) -> None:
        while True:
            report({"x": 1})

    (result,) = sweep(trainer, tmp_path, stop=stop)
    (timed,) = sweep(trainer, tmp_path / "timed", stop={"time_total_s": 0.0})

    assert result.metrics["training_iteration"] == 3
    assert all(set(RAY_FIELDS) <= set(row) for row in seen)
    assert timed.metrics["training_iteration"] == 1 and timed.metrics["done"] is True


class Steps(Trainable):
    """Three steps; its own "done" ends it (a steering key, not a metric)."""

    def step(self) -> dict[str, Any]:
        return {"n": self.iteration + 1, "done": self.iteration + 1 == 3}

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        return {}

    def load_checkpoint(self, checkpoint: dict[str, Any] | str) -> None:
        pass


def test_a_class_trainables_rows_get_them_too(tmp_path: Path) -> None:
    (result,) = sweep(Steps, tmp_path)

    rows = rows_of(result)
    assert [r["n"] for r in rows] == [1, 2, 3]
    assert [r["done"] for r in rows] == [False] * 3
    assert [r["iterations_since_restore"] for r in rows] == [1, 2, 3]
    assert {r["pid"] for r in rows} == {os.getpid()}  # isolation="thread"
    assert result.metrics["done"] is True


def test_done_in_an_outcomes_last_metrics_follows_its_status() -> None:
    running = TrialOutcome("t", "n", {}, TrialStatus.RUNNING,
                           last_metrics={"x": 1, "done": False})

    finished = replace(running, status=TrialStatus.TERMINATED)

    assert finished.last_metrics == {"x": 1, "done": True}
    assert replace(finished, status=TrialStatus.ERROR).last_metrics["done"] is False
    assert running.last_metrics == {"x": 1, "done": False}  # records are not changed
    old = TrialOutcome("t", "n", {}, TrialStatus.TERMINATED, last_metrics={"x": 1})
    assert old.last_metrics == {"x": 1}  # a row of an older version never had the field


# What a function trainable returns or yields.


def test_a_returned_number_is_reported_as_metric(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> float:
        report({"loss": 1.0})
        return 3.5 * config["k"]

    grid = Tuner(trainer, param_space={"k": grid_search([1, 2])},
                 tune_config=TuneConfig(isolation="thread", metric="_metric", mode="max"),
                 run_config=RunConfig(name="num", storage_path=str(tmp_path))).fit()

    assert [r.metrics["_metric"] for r in grid] == [3.5, 7.0]
    assert [r.metrics["training_iteration"] for r in grid] == [2, 2]
    assert grid.get_best_result().config == {"k": 2}
    assert "loss" not in grid[0].metrics  # the returned row is a row of its own


def test_an_int_returned_or_yielded_is_a_row_of_metric(tmp_path: Path) -> None:
    def returns(config: dict[str, Any]) -> int:
        return 0  # a zero is reported too

    def yields(config: dict[str, Any]) -> Any:
        yield 1
        yield None  # nothing
        yield {"_metric": 2, "extra": True}
        yield 3.0

    (returned,) = sweep(returns, tmp_path / "returns")
    (yielded,) = sweep(yields, tmp_path / "yields")

    assert rows_of(returned)[0]["_metric"] == 0 and returned.metrics["training_iteration"] == 1
    assert [r["_metric"] for r in rows_of(yielded)] == [1, 2, 3.0]
    assert yielded.status is TrialStatus.TERMINATED


@pytest.mark.parametrize(("value", "kind"), [("finished", "str"), ([1, 2], "list"),
                                             (True, "bool"), (object(), "object")])
def test_anything_else_returned_is_refused_naming_its_type(
    tmp_path: Path, value: Any, kind: str,
) -> None:
    def trainer(config: dict[str, Any]) -> Any:
        report({"x": 1})
        return value

    (result,) = sweep(trainer, tmp_path, failure_config=FailureConfig(max_failures=1))

    assert result.status is TrialStatus.ERROR and result.outcome.attempts == 1
    error = result.outcome.error_summary
    assert "MetricError" in error and f"the trainable returned {kind} " in error, error
    assert ("return or yield a dict of metrics (one row), a number (recorded as '_metric'"
            in error)
    assert [r["x"] for r in rows_of(result)] == [1]  # what it reported is kept


def test_a_yielded_string_is_refused(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> Any:
        yield {"x": 1}
        yield "halfway"

    (result,) = sweep(trainer, tmp_path)

    assert result.status is TrialStatus.ERROR
    assert "the trainable yielded str 'halfway': return or yield a dict of metrics" in (
        result.outcome.error_summary)
