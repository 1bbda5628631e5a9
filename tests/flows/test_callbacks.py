"""Callbacks: each trial's start, its rows while it runs, and its end reach
`RunConfig(callbacks=...)` in the sweep's process, in order; a failing callback costs the
sweep nothing; MLflowLoggerCallback writes one MLflow run per trial, read back through
MLflow's client."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest

from prefect_tune.flows import MLflowLoggerCallback, TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Callback,
    CLIReporter,
    ConfigError,
    FailureConfig,
    RunConfig,
    TrialOutcome,
    TrialSpec,
)
from prefect_tune.tasks import report

pytestmark = pytest.mark.usefixtures("prefect_server")


class Recorder(Callback):
    """Records every hook; on a trial's first row it creates config["seen"]/<i>."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def setup(self, experiment: str, path: str) -> None:
        self.calls.append(("setup", experiment))

    def on_trial_start(self, trial: TrialSpec) -> None:
        self.calls.append(("start", trial.config["i"]))

    def on_trial_result(self, trial: TrialSpec, result: dict[str, Any]) -> None:
        self.calls.append(("result", trial.config["i"], result["training_iteration"],
                           result["loss"]))
        Path(trial.config["seen"], str(trial.config["i"])).touch()

    def on_trial_complete(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self.calls.append(("complete", trial.config["i"], outcome.status.value))

    def on_trial_error(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self.calls.append(("error", trial.config["i"], outcome.error is not None))

    def on_experiment_end(self, results: Any) -> None:
        self.calls.append(("end", len(results)))


def waits_to_be_seen(config: dict[str, Any]) -> None:
    """Reports once, waits until a callback has seen that row (proof that rows reach
    the sweep while the trial runs), reports twice more; trial 1 then fails."""
    report({"loss": 10.0 * config["i"]})
    seen = Path(config["seen"], str(config["i"]))
    deadline = time.monotonic() + 60
    while not seen.exists():
        assert time.monotonic() < deadline, "the callback never saw the first row"
        time.sleep(0.01)
    report({"loss": 10.0 * config["i"] + 1, "nested": {"acc": 0.5}})
    report({"loss": 10.0 * config["i"] + 2})
    if config["i"] == 1:
        raise RuntimeError("diverged")


def sweep(tmp_path: Path, callbacks: list[Callback], isolation: str = "process",
          **run: Any) -> Any:
    seen = tmp_path / "seen"
    seen.mkdir(exist_ok=True)
    return Tuner(
        waits_to_be_seen, param_space={"i": grid_search([0, 1]), "seen": str(seen)},
        tune_config=TuneConfig(metric="loss", mode="min", isolation=isolation),
        run_config=RunConfig(name="cb", storage_path=str(tmp_path / "runs"),
                             callbacks=callbacks,
                             failure_config=FailureConfig(max_failures=0), **run),
    ).fit()


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_callbacks_hear_of_each_trial_in_order_while_it_runs(
    tmp_path: Path, isolation: str
) -> None:
    recorder = Recorder()
    grid = sweep(tmp_path, [recorder], isolation)

    calls = recorder.calls
    assert calls[0] == ("setup", "cb") and calls[-1] == ("end", 2)
    for i, end in ((0, ("complete", 0, "TERMINATED")), (1, ("error", 1, True))):
        assert [c for c in calls if c[1:2] == (i,)] == [
            ("start", i), ("result", i, 1, 10.0 * i), ("result", i, 2, 10.0 * i + 1),
            ("result", i, 3, 10.0 * i + 2), end]
    assert [r.status.value for r in grid] == ["TERMINATED", "ERROR"]


class Broken(Callback):
    def on_trial_result(self, trial: TrialSpec, result: dict[str, Any]) -> None:
        raise RuntimeError("the tracking server is down")


def test_a_failing_callback_is_logged_and_costs_the_sweep_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    grid = sweep(tmp_path, [Broken(), recorder], "thread")

    assert [r.status.value for r in grid] == ["TERMINATED", "ERROR"]
    assert ("result", 0, 3, 2.0) in recorder.calls  # the next callback still heard
    assert "callback Broken.on_trial_result failed" in caplog.text


def test_mlflow_gets_one_run_per_trial_with_params_metrics_and_status(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)  # artifacts under tmp_path, not MLflow's ./mlruns
    client.create_experiment("cb", artifact_location=(tmp_path / "artifacts").as_uri())
    grid = sweep(tmp_path, [MLflowLoggerCallback(uri, tags={"team": "vision"},
                                                 save_artifact=True), Recorder()])

    experiment = client.get_experiment_by_name("cb")
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(r.trial_id for r in grid)
    for result in grid:
        run = runs[result.trial_id]
        i = result.config["i"]
        assert run.info.run_name == result.outcome.trial_name
        assert run.data.tags["team"] == "vision"
        assert run.data.params == {"i": str(i), "seen": str(tmp_path / "seen")}
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value) for m in history] == [
            (1, 10.0 * i), (2, 10.0 * i + 1), (3, 10.0 * i + 2)]
        assert [m.value for m in client.get_metric_history(run.info.run_id, "nested/acc")] \
            == [0.5]
        assert run.info.status == ("FINISHED" if i == 0 else "FAILED")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"params.json", "result.json", "trial.json"} <= artifacts
    assert "sqlite" not in repr(MLflowLoggerCallback(uri))
    assert not (Path.cwd() / "mlruns").exists()  # nothing outside the test's directory
    assert not [p for p in Path(grid.experiment_path).rglob("*") if p.is_file()
                and uri in p.read_text(errors="ignore")]


def test_callbacks_must_be_callbacks() -> None:
    with pytest.raises(ConfigError, match="is not a Callback"):
        RunConfig(callbacks=[print])  # type: ignore[list-item]
    assert os.environ.get("MLFLOW_TRACKING_URI") is None


def test_the_sweep_logs_each_trial_end_and_a_summary_with_the_best_trial(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid = sweep(tmp_path, [Recorder()], "thread", progress=0.05)
    t0, t1 = (r.outcome.trial_name for r in grid)
    lines = [r.getMessage() for r in caplog.records if r.name == "prefect.flow_runs"]
    seen = str(tmp_path / "seen")  # a long value is cut to 24 characters
    best = f"best loss=2 ({t0}: i=0, seen={seen[:23] + '…' if len(seen) > 24 else seen})"

    ends = [line for line in lines if line.startswith("trial ")]
    assert len(ends) == 2  # which ends first is up to the two trials' threads
    assert any(line.startswith(f"trial {t0} terminated after 3 reports, loss=2; ")
               for line in ends)
    assert any(line.startswith(f"trial {t1} errored after 3 reports, loss=12; ")
               for line in ends)
    assert ends[-1].endswith(f"; 2 of 2 trials done; {best}")
    summaries = [line for line in lines if line.startswith("sweep cb after ")]
    assert summaries and summaries[-1].endswith(f": 1 terminated, 1 errored; {best}")
    assert any("; running: " in line for line in summaries)  # while trials ran
    # the watcher thread talks to the session's server, never to one of its own
    assert "Starting temporary server" not in caplog.text


def test_progress_none_logs_no_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    sweep(tmp_path, [Recorder()], "thread", progress=None)
    assert not [r for r in caplog.records if r.getMessage().startswith("sweep cb after ")]
    with pytest.raises(ConfigError, match="progress=0 is invalid"):
        RunConfig(progress=0)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_the_progress_log_keeps_the_best_trial_by_latest_value_as_values_come(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best trial is kept up to date at each row (no recount per trial end) and is
    always the one get_best_result's rule gives: the best latest value."""
    import random

    from prefect_tune.flows import progress
    from prefect_tune.storage.ranking import best_by

    monkeypatch.setattr(progress, "get_run_logger", lambda: None)
    reporter = progress.ProgressReporter("loss", mode,
                                         CLIReporter(max_report_frequency=float("inf")))
    draw = random.Random(7)
    for _ in range(3000):
        trial = f"t{draw.randrange(30)}"
        reporter.names.setdefault(trial, TrialSpec(trial, trial, {}))
        reporter._note(trial, {"loss": draw.choice([draw.random(), None, 0.5])})
        want = best_by(((reporter._value(row), t) for t, row in reporter.latest.items()),
                       mode)  # type: ignore[arg-type]
        if want is None:
            assert reporter.best is None or reporter._value(reporter.latest[reporter.best]) \
                is None
        else:
            assert reporter.best is not None
            assert reporter._value(reporter.latest[reporter.best]) == \
                reporter._value(reporter.latest[want])
