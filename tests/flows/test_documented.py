"""Documented behaviour without a test elsewhere: returned rows, config copies, unlimited
retries, reserved metric names, Trainable.cleanup, restore's task runner, best-result
scopes, trial tags, "~" paths, rejected storage options, periodic flushes and delete
retries on S3, and the refusal of a newer state format."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import fsspec
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_tune.flows import ResultGrid, TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    ConfigError,
    FailureConfig,
    MetricError,
    RunConfig,
    StorageError,
    TrialStatus,
    result_log,
)
from prefect_tune.tasks import Trainable, get_context, report

from ..conftest import CallLog, s3_options, wait_for
from ..faultproxy import FaultProxy

pytestmark = pytest.mark.usefixtures("prefect_server")

#: The keys prefect-tune sets on every row (README: "The names ... are reserved").
RESERVED = ["training_iteration", "trial_id", "timestamp", "checkpoint_dir_name", "done",
            "date", "time_this_iter_s", "time_total_s", "iterations_since_restore", "pid",
            "hostname"]


def sweep(
    trainable: Any, storage_path: str, *, name: str = "exp",
    param_space: dict[str, Any] | None = None, tune: dict[str, Any] | None = None,
    **run: Any,
) -> ResultGrid:
    """Fit `trainable` in threads into `<storage_path>/<name>`."""
    return Tuner(
        trainable, param_space=param_space,
        tune_config=TuneConfig(**{"isolation": "thread", **(tune or {})}),
        run_config=RunConfig(name=name, storage_path=storage_path, **run),
    ).fit()


def report_x(config: dict[str, Any]) -> None:
    """Reports one row: a loss and the config's "x"."""
    report({"loss": 1.0, "x": config.get("x")})


def unique(prefix: str) -> str:
    """An experiment or bucket name no other test of the session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def rows_of(text: str) -> list[dict[str, Any]]:
    """The rows of a result.json text (JSON lines)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def flow_run_id(client: SyncPrefectClient, name: str) -> UUID:
    """The id of the one flow run named `name` (the experiment's name)."""
    (run,) = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
    )
    return run.id


# 1. A returned dict is the final row.


def test_a_dict_returned_by_a_function_trainable_is_its_final_row(tmp_path: Path) -> None:
    """The returned dict is recorded after the reported rows, as the trial's last result."""

    def trainer(config: dict[str, Any]) -> dict[str, Any]:
        report({"loss": 3.0})
        report({"loss": 2.0})
        return {"loss": 1.0, "final": True}

    (result,) = sweep(trainer, str(tmp_path))

    assert result.status is TrialStatus.TERMINATED
    assert result.metrics["loss"] == 1.0 and result.metrics["final"] is True
    assert result.metrics["training_iteration"] == 3
    rows = rows_of((Path(result.path) / "result.json").read_text())
    assert [(r["training_iteration"], r["loss"]) for r in rows] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert rows[-1]["final"] is True and rows[-1]["checkpoint_dir_name"] is None
    frame = result.metrics_dataframe
    assert frame["loss"].tolist() == [3.0, 2.0, 1.0]
    assert frame["final"].tolist()[-1] is True


# 2. The trainable gets a deep copy of its config.


def test_a_trainable_mutating_its_config_changes_no_stored_or_other_config(
    tmp_path: Path,
) -> None:
    """Config mutations, nested ones too, reach no stored config, retry or other trial."""
    seen: list[tuple[int, int, dict[str, Any]]] = []

    def trainer(config: dict[str, Any]) -> None:
        attempt = get_context().attempt
        seen.append((config["x"], attempt, copy.deepcopy(config)))
        config["nested"]["inner"].append("mutated")
        config["nested"]["lr"] = -1.0
        config["x"] = -1
        config["added"] = True
        if attempt == 1:
            raise RuntimeError("fail once, so that the retry shows what it is given")
        report({"ok": 1})

    grid = sweep(
        trainer, str(tmp_path),
        param_space={"x": grid_search([1, 2]), "nested": {"inner": [0], "lr": 0.1}},
        tune={"max_concurrent_trials": 1},
        failure_config=FailureConfig(max_failures=1),
    )

    pristine = {x: {"x": x, "nested": {"inner": [0], "lr": 0.1}} for x in (1, 2)}
    assert sorted(seen, key=lambda s: s[:2]) == [
        (1, 1, pristine[1]), (1, 2, pristine[1]), (2, 1, pristine[2]), (2, 2, pristine[2]),
    ]
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 2
    assert [r.config for r in grid] == [pristine[1], pristine[2]]
    for result in grid:
        params = json.loads((Path(result.path) / "params.json").read_text())
        assert params == pristine[result.config["x"]]


# 3. max_failures=-1 retries without limit.


def test_unlimited_failures_retry_a_trial_until_it_succeeds(tmp_path: Path) -> None:
    """With max_failures=-1 a trial failing its first 3 attempts runs a 4th and finishes."""
    log = CallLog(str(tmp_path / "calls"))

    def trainer(config: dict[str, Any]) -> None:
        attempt = get_context().attempt
        log.record(attempt)
        if attempt <= 3:
            raise RuntimeError(f"attempt {attempt} fails")
        report({"loss": 0.5})

    (result,) = sweep(trainer, str(tmp_path / "runs"),
                      failure_config=FailureConfig(max_failures=-1))

    assert log.calls() == [[1], [2], [3], [4]]
    assert result.status is TrialStatus.TERMINATED
    assert result.outcome.attempts == 4
    assert result.metrics["loss"] == 0.5


# 4. Reserved metric names.


def test_reserved_metric_names_fail_the_trial_without_retries(tmp_path: Path) -> None:
    """A reserved metric name is a MetricError naming it, never retried (max_failures=2)."""
    log = CallLog(str(tmp_path / "calls"))

    def trainer(config: dict[str, Any]) -> None:
        key, attempt = config["key"], get_context().attempt
        try:
            report({key: 1, "loss": 0.5})
        except MetricError as exc:
            log.record(key, attempt, str(exc))
            raise
        log.record(key, attempt, "accepted")

    grid = sweep(trainer, str(tmp_path / "runs"), param_space={"key": grid_search(RESERVED)},
                 failure_config=FailureConfig(max_failures=2))

    calls = log.calls()
    assert {key: [c[1] for c in calls if c[0] == key] for key in RESERVED} == {
        key: [1] for key in RESERVED  # one attempt each: not retried
    }
    for key, result in zip(RESERVED, grid, strict=True):
        (message,) = [c[2] for c in calls if c[0] == key]
        assert f"'{key}'" in message, message
        assert result.status is TrialStatus.ERROR and result.outcome.attempts == 1
        assert "MetricError" in str(result.error) and f"'{key}'" in str(result.error)


# 5. Trainable.cleanup.


class Tracked(Trainable):
    """Logs each step and cleanup. config["ending"]: "done" says done at step 2, "raise"
    raises at step 2, "stop" runs until the run's stop condition (3 iterations)."""

    def setup(self, config: dict[str, Any]) -> None:
        self.log = CallLog(config["log"])
        self.ending = config["ending"]

    def step(self) -> dict[str, Any]:
        step = self.iteration + 1
        self.log.record(self.ending, "step", step)
        if self.ending == "raise" and step == 2:
            raise RuntimeError("step 2 fails")
        return {"value": step, "done": self.ending == "done" and step == 2}

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        return {"iteration": self.iteration}

    def load_checkpoint(self, checkpoint: dict[str, Any] | str) -> None:
        pass

    def cleanup(self) -> None:
        self.log.record(self.ending, "cleanup", self.iteration)


def test_cleanup_is_called_when_a_class_trial_ends_fails_or_is_stopped(tmp_path: Path) -> None:
    """cleanup() runs once, last, when a class trial is done, raises, or is stopped."""
    log = str(tmp_path / "calls")
    endings = ["done", "raise", "stop"]

    grid = sweep(Tracked, str(tmp_path / "runs"),
                 param_space={"log": log, "ending": grid_search(endings)},
                 stop={"training_iteration": 3})

    assert [r.status for r in grid] == [
        TrialStatus.TERMINATED, TrialStatus.ERROR, TrialStatus.TERMINATED,
    ]
    assert grid[2].metrics["training_iteration"] == 3  # ended by the stop condition
    calls = CallLog(log).calls()
    by_ending = {e: [c[1:] for c in calls if c[0] == e] for e in endings}
    assert by_ending == {
        "done": [["step", 1], ["step", 2], ["cleanup", 2]],
        "raise": [["step", 1], ["step", 2], ["cleanup", 1]],
        "stop": [["step", 1], ["step", 2], ["step", 3], ["cleanup", 3]],
    }


# 6. Tuner.restore(task_runner=...).


def test_restore_runs_the_trials_on_the_given_task_runner(tmp_path: Path) -> None:
    """The trials a restore resumes are submitted to the task runner passed to it."""

    class RecordingRunner(ThreadPoolTaskRunner[Any]):
        """A thread pool that records each submission (class-level: Prefect runs a
        duplicate of the runner it is given)."""

        submitted: ClassVar[list[str]] = []

        def submit(
            self, task: Any, parameters: dict[str, Any], wait_for: Any = None,
            dependencies: Any = None,
        ) -> Any:
            type(self).submitted.append(task.name)
            return super().submit(task, parameters, wait_for, dependencies)

    gate = tmp_path / "gate"

    def gated(config: dict[str, Any]) -> None:
        if not gate.exists():
            raise RuntimeError("fails until the gate opens")
        report({"loss": 1.0})

    first = sweep(gated, str(tmp_path / "runs"))
    assert first[0].status is TrialStatus.ERROR and RecordingRunner.submitted == []
    gate.touch()

    grid = Tuner.restore(str(tmp_path / "runs" / "exp"), gated, resume_errored=True,
                         task_runner=RecordingRunner(max_workers=1)).fit()

    assert len(RecordingRunner.submitted) == 1
    assert grid[0].status is TrialStatus.TERMINATED


# 7. get_best_result scopes.

#: One trial per scope that it wins (mode "max" on "score"): the last value, the mean of
#: the last 5 and the mean of the last 10 rank the three differently. "last5" also has
#: the best mean over all 12 rows, so a last-10 that averaged everything would pick it.
SERIES = {
    "last": [0.0] * 11 + [10.0],                    # last 10, last-5 2, last-10 1
    "last5": [100.0, 100.0] + [0.0] * 5 + [5.0] * 5,  # last 5, last-5 5, last-10 2.5
    "last10": [0.0, 0.0] + [4.0] * 10,              # last 4, last-5 4, last-10 4
}


def report_series(config: dict[str, Any]) -> None:
    """Reports the trial's SERIES as "score", and its negation as "loss"."""
    for value in SERIES[config["series"]]:
        report({"score": value, "loss": -value})


@pytest.fixture(scope="module")
def scoped_grid(tmp_path_factory: pytest.TempPathFactory) -> ResultGrid:
    """One sweep of the three SERIES trials, shared by the scope tests."""
    return sweep(report_series, str(tmp_path_factory.mktemp("scopes")),
                 param_space={"series": grid_search(list(SERIES))})


@pytest.mark.parametrize("scope", ["last", "last-5-avg", "last-10-avg"])
def test_get_best_result_ranks_by_the_scope(scoped_grid: ResultGrid, scope: str) -> None:
    """Each scope picks the trial best by that scope's statistic, in either mode."""
    winner = {"last": "last", "last-5-avg": "last5", "last-10-avg": "last10"}[scope]

    best_max = scoped_grid.get_best_result("score", "max", scope=scope)  # type: ignore[arg-type]
    best_min = scoped_grid.get_best_result("loss", "min", scope=scope)  # type: ignore[arg-type]

    assert best_max.config["series"] == winner
    assert best_min.config["series"] == winner


# 8. TuneConfig(tag_trials=...).


@pytest.mark.parametrize("tag_trials", [True, False])
def test_tag_trials_decides_whether_trial_task_runs_carry_the_experiment_tag(
    tmp_path: Path, tag_trials: bool
) -> None:
    """The flow run always carries the experiment tag; trial task runs only with tag_trials."""
    name = unique("tags")

    grid = sweep(report_x, str(tmp_path), name=name,
                 param_space={"x": grid_search([1, 2])}, tune={"tag_trials": tag_trials})

    trial_names = {r.outcome.trial_name for r in grid}
    with get_client(sync_client=True) as client:
        run_id = flow_run_id(client, name)
        flow_run = client.read_flow_run(run_id)
        task_runs = wait_for(
            lambda: client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))),
            lambda runs: {t.name for t in runs} == trial_names
            and all(t.state is not None and t.state.is_completed() for t in runs),
        )
    assert name in flow_run.tags
    assert {t.name for t in task_runs} == trial_names
    assert [name in t.tags for t in task_runs] == [tag_trials] * len(trial_names)


# 9. "~" in storage paths.


def test_a_tilde_storage_path_is_expanded_to_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """storage_path="~/results" writes under $HOME/results, and the grid names that path."""
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)  # an unexpanded "~" would land here

    grid = sweep(report_x, "~/results", name="tilde")

    expected = home / "results" / "tilde"
    assert grid.experiment_path == str(expected)
    assert (expected / "experiment.json").is_file()
    assert (Path(grid[0].path) / "result.json").is_file()
    assert Path(grid[0].path).parent == expected
    assert list(elsewhere.iterdir()) == []


# 10. Storage options the filesystem rejects.


def test_rejected_storage_options_are_a_config_error_naming_the_url(
    moto_endpoint: str,
) -> None:
    """An option s3fs does not take is a ConfigError that names the URL, not the secret."""
    bucket, secret = unique("opts"), "rejected-options-secret-4e1d"
    fsspec.filesystem("s3", **s3_options(moto_endpoint)).mkdir(bucket)
    url = f"s3://{bucket}/runs"
    options = {**s3_options(moto_endpoint, secret=secret), "not_an_option": 1}

    with pytest.raises(ConfigError) as info:
        sweep(report_x, url, storage_options=options)

    assert url in str(info.value)
    assert secret not in str(info.value)


# 11. Periodic flush of result files on object stores.


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh bucket on the session's moto server."""
    name = unique("documented")
    fsspec.filesystem("s3", **s3_options(moto_endpoint)).mkdir(name)
    return name


@pytest.mark.parametrize(("flush_seconds", "rows_mid_trial"), [(0.0, [1, 2]), (3600.0, [])])
def test_rows_reach_result_json_on_s3_while_the_trial_runs(
    moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
    flush_seconds: float, rows_mid_trial: list[int],
) -> None:
    """Rows without a checkpoint reach S3 once the flush interval passes, and all at the end."""
    monkeypatch.setattr(result_log, "REMOTE_FLUSH_SECONDS", flush_seconds)
    direct = fsspec.filesystem("s3", **s3_options(moto_endpoint))
    seen: list[list[int]] = []

    def trainer(config: dict[str, Any]) -> None:
        report({"step": 1})
        report({"step": 2})
        direct.invalidate_cache()
        try:
            text = direct.cat_file(f"{get_context().trial_path}/result.json").decode()
        except FileNotFoundError:
            text = ""
        seen.append([row["step"] for row in rows_of(text)])
        report({"step": 3})

    (result,) = sweep(trainer, f"s3://{s3_bucket}/runs",
                      storage_options=s3_options(moto_endpoint))

    assert seen == [rows_mid_trial]
    direct.invalidate_cache()
    final = rows_of(direct.cat_file(f"{result.path}/result.json").decode())
    assert [row["step"] for row in final] == [1, 2, 3]


# 12. A failed checkpoint delete is logged and retried.


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's moto server, stopped after the test."""
    with FaultProxy(moto_endpoint) as running:
        yield running


def checkpoint_names(fs: Any, trial_path: str) -> list[str]:
    """The checkpoint directories under `trial_path`, as stored now."""
    fs.invalidate_cache()
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(trial_path, detail=False))
    return sorted(n for n in names if n.startswith("checkpoint_"))


def run_with_failing_deletes(
    proxy: FaultProxy, bucket: str, name: str, moto_endpoint: str,
    after_faults: Callable[[], None],
) -> tuple[ResultGrid, list[list[str]]]:
    """A trial on S3 (through `proxy`) with num_to_keep=1: every DELETE fails while it
    reports checkpoints 0 and 1 (evicting 0), then the faults end and `after_faults()` runs.
    Returns the grid and the trial's checkpoint listings: before and after `after_faults`."""
    direct = fsspec.filesystem("s3", **s3_options(moto_endpoint))
    listings: list[list[str]] = []
    options = {**s3_options(proxy.url), "config_kwargs": {"retries": {"total_max_attempts": 1}}}

    def trainer(config: dict[str, Any]) -> None:
        proxy.inject("503", f"DELETE /{bucket}/", count=100_000)
        for step in (0, 1):
            report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))
        listings.append(checkpoint_names(direct, get_context().trial_path))
        proxy.clear()
        after_faults()
        listings.append(checkpoint_names(direct, get_context().trial_path))

    grid = sweep(trainer, f"s3://{bucket}/runs", name=name, storage_options=options,
                 checkpoint_config=CheckpointConfig(num_to_keep=1))
    assert proxy.fired(f"DELETE /{bucket}/runs/{name}/")  # the deletes did fail
    return grid, listings


def delete_warnings(name: str) -> list[str]:
    """The "could not delete" log messages of the flow run named `name`."""
    with get_client(sync_client=True) as client:
        run_id = flow_run_id(client, name)
        logs = wait_for(
            lambda: client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))),
            lambda found: any("could not delete" in log.message for log in found),
            timeout=30,
        )
    return [log.message for log in logs if "could not delete" in log.message]


def test_a_failed_checkpoint_delete_is_retried_by_the_next_retention_pass(
    proxy: FaultProxy, s3_bucket: str, moto_endpoint: str
) -> None:
    """A checkpoint whose delete failed goes at the next retention pass, after a warning."""
    name = unique("retention-pass")

    grid, listings = run_with_failing_deletes(
        proxy, s3_bucket, name, moto_endpoint,
        lambda: report({"step": 2}, checkpoint=Checkpoint.from_dict({"step": 2})),
    )

    assert listings == [["checkpoint_000000", "checkpoint_000001"], ["checkpoint_000002"]]
    direct = fsspec.filesystem("s3", **s3_options(moto_endpoint))
    assert checkpoint_names(direct, grid[0].path) == ["checkpoint_000002"]
    warnings = delete_warnings(name)
    assert [m for m in warnings if "could not delete checkpoint_000000" in m], warnings


def test_a_failed_checkpoint_delete_is_retried_when_the_trial_ends(
    proxy: FaultProxy, s3_bucket: str, moto_endpoint: str
) -> None:
    """A checkpoint whose delete failed goes when the trial ends, after a warning."""
    name = unique("trial-end")

    grid, listings = run_with_failing_deletes(proxy, s3_bucket, name, moto_endpoint,
                                              lambda: None)

    assert listings == [["checkpoint_000000", "checkpoint_000001"]] * 2
    direct = fsspec.filesystem("s3", **s3_options(moto_endpoint))
    assert checkpoint_names(direct, grid[0].path) == ["checkpoint_000001"]
    assert grid[0].status is TrialStatus.TERMINATED
    warnings = delete_warnings(name)
    assert [m for m in warnings if "could not delete checkpoint_000000" in m], warnings


def test_a_failed_checkpoint_delete_is_retried_at_the_next_report(
    proxy: FaultProxy, s3_bucket: str, moto_endpoint: str
) -> None:
    """A failed delete is retried at the next report, also one without a checkpoint."""
    name = unique("next-report")

    grid, listings = run_with_failing_deletes(proxy, s3_bucket, name, moto_endpoint,
                                              lambda: report({"step": 2}))

    assert listings == [["checkpoint_000000", "checkpoint_000001"], ["checkpoint_000001"]]
    assert grid[0].status is TrialStatus.TERMINATED


# 13. A newer state format is refused.


def test_restore_refuses_a_newer_state_format(tmp_path: Path) -> None:
    """State format 2: restore raises a StorageError naming file and format; can_restore False."""

    def trainer(config: dict[str, Any]) -> None:
        report({"loss": 1.0})

    sweep(trainer, str(tmp_path))
    path = tmp_path / "exp"
    state_file = path / "experiment.json"
    assert Tuner.can_restore(str(path))
    state = json.loads(state_file.read_text())
    state["format"] = 2
    state_file.write_text(json.dumps(state))

    with pytest.raises(StorageError) as info:
        Tuner.restore(str(path), trainer)

    message = str(info.value)
    assert str(state_file) in message
    assert "format 2" in message
    assert not Tuner.can_restore(str(path))
