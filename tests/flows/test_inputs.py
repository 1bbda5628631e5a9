"""Unusual inputs: metrics named like the trial table's columns, experiment
names with glob characters, generator and `async def` trainables, `sys.exit()` in a
trial, a Trainer's own RunConfig, class trainables' iteration count, `os.PathLike`
paths, a score too large for a float, malformed storage options, and the command line's
handling of bad paths and options."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytest

from prefect_tune.flows import ResultGrid, Trainer, TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    ConfigError,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrialStatus,
)
from prefect_tune.tasks import Trainable, get_checkpoint, get_context, report

from ..conftest import SECRET, CallLog, make_backend

pytestmark = pytest.mark.usefixtures("prefect_server")

#: The console script installed beside this interpreter.
CLI = str(Path(sys.executable).with_name("prefect-tune"))
THREAD = TuneConfig(isolation="thread")


def tune(trainable: Any, storage: Path | str, name: str = "exp", *,
         space: dict[str, Any] | None = None, tune_config: TuneConfig = THREAD,
         **run: Any) -> ResultGrid:
    """Run a sweep of `trainable` as experiment `name` in `storage`; its ResultGrid."""
    return Tuner(trainable, param_space=space or {}, tune_config=tune_config,
                 run_config=RunConfig(name=name, storage_path=str(storage), **run)).fit()


# 1. Metrics named like the trial table's fixed columns


def colliding(config: dict[str, Any]) -> None:
    """Reports metrics named like every kind of fixed column."""
    report({"error": 0.5, "status": 3, "best_score": 7, "config/lr": 9, "metric/x": 1,
            "loss": 1})


def nested_config_metric(config: dict[str, Any]) -> None:
    """Reports a nested metric that flattens to "config/lr"."""
    report({"config": {"lr": 5}, "loss": 1})


def test_metrics_named_like_fixed_columns_are_kept_apart(tmp_path: Path) -> None:
    """Colliding metric names get "metric/" columns; fixed columns keep their values."""
    ranked = TuneConfig(metric="loss", mode="min", isolation="thread")
    grid = tune(colliding, tmp_path, "collide", space={"lr": 0.1}, tune_config=ranked)
    csv = pd.read_csv(tmp_path / "collide" / "results.csv")
    for table in (csv, grid.get_dataframe()):
        assert len(table) == 1
        row = table.iloc[0]
        assert row["metric/error"] == 0.5
        assert row["metric/status"] == 3
        assert row["metric/best_score"] == 7
        assert row["metric/config/lr"] == 9
        assert row["metric/metric/x"] == 1
        assert row["config/lr"] == 0.1
        assert row["status"] == "TERMINATED"
        assert pd.isna(row["error"])
        assert row["loss"] == 1
        assert row["best_score"] == 1  # the ranking metric, loss, not the metric "best_score"
        assert "metric/x" not in table.columns  # only the escaped name
    nested = tune(nested_config_metric, tmp_path, "nested", space={"lr": 0.1})
    csv = pd.read_csv(tmp_path / "nested" / "results.csv")
    for table in (csv, nested.get_dataframe()):
        assert table.iloc[0]["metric/config/lr"] == 5
        assert table.iloc[0]["config/lr"] == 0.1


# 2. Experiment names with glob characters

GLOB_NAMES = ("exp[1]", "exp*", "a?b")
#: Directories a glob expansion of the names above would match; they must stay untouched.
DECOYS = ("exp1", "expX", "aXb")


def fail_once(config: dict[str, Any]) -> None:
    """Three checkpointed steps from the latest checkpoint; trial 1's first attempt fails."""
    log, trial_id = CallLog(config["log"]), get_context().trial_id
    start = get_checkpoint()
    step = start.to_dict()["step"] if start is not None else 0
    log.record(trial_id, step)
    first_attempt = [c for c in log.calls() if c[0] == trial_id] == [[trial_id, 0]]
    while step < 3:
        if step == 2 and config["i"] == 1 and first_attempt:
            raise RuntimeError("first attempt fails")
        step += 1
        report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_glob_characters_in_experiment_names_are_literal(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """fit (with deletes), restore and get_results touch only the literally named paths."""
    backend = make_backend(where, request, tmp_path)
    root = backend.url.split("://", 1)[-1]
    for decoy in DECOYS:
        backend.fs.makedirs(f"{root}/{decoy}", exist_ok=True)
        backend.fs.pipe_file(f"{root}/{decoy}/keep.txt", b"decoy")
    for name in GLOB_NAMES:
        log = str(tmp_path / f"calls-{GLOB_NAMES.index(name)}")
        grid = Tuner(
            fail_once, param_space={"i": grid_search([0, 1]), "log": log}, tune_config=THREAD,
            run_config=RunConfig(name=name, storage_path=backend.url,
                                 storage_options=backend.options,
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)),
        ).fit()
        assert [r.status for r in grid] == [TrialStatus.TERMINATED, TrialStatus.ERROR]
        path = f"{backend.url}/{name}"
        restored = Tuner.restore(path, fail_once, resume_errored=True,
                                 storage_options=backend.options).fit()
        assert [r.status for r in restored] == [TrialStatus.TERMINATED] * 2
        results = Tuner.restore(path, fail_once, storage_options=backend.options).get_results()
        assert [r.status for r in results] == [TrialStatus.TERMINATED] * 2
        for result in results:
            assert result.metrics["step"] == 3
            trial = f"{root}/{name}/{result.outcome.trial_name}"
            listed = backend.fs.ls(trial, detail=False)  # a fresh filesystem: no cache
            entries = [e.rstrip("/").rsplit("/", 1)[-1] for e in listed]
            assert [e for e in entries if "checkpoint_" in e] == ["checkpoint_000002"]
            assert result.checkpoint is not None
            assert result.checkpoint.to_dict() == {"step": 3}
    fs = backend.fs
    files = [f[len(root) + 1:] for f in fs.find(root)]
    assert {f.split("/", 1)[0] for f in files} == {*GLOB_NAMES, *DECOYS}
    assert sorted(f for f in files if f.split("/", 1)[0] in DECOYS) == sorted(
        f"{d}/keep.txt" for d in DECOYS)
    for decoy in DECOYS:
        assert fs.cat_file(f"{root}/{decoy}/keep.txt") == b"decoy"


# 3. Generator and async trainables


def yields_three(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A generator trainable: each yielded dict is a result row."""
    for step in range(1, 4):
        yield {"loss": 1.0 / step, "step": step}


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_each_dict_a_generator_yields_is_a_row(
    tmp_path: Path, isolation: Literal["thread", "process"]
) -> None:
    """3 yields make 3 rows; the last is the trial's final metrics."""
    grid = tune(yields_three, tmp_path, tune_config=TuneConfig(isolation=isolation))
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED
    frame = result.metrics_dataframe
    assert frame["step"].tolist() == [1, 2, 3]
    assert frame["training_iteration"].tolist() == [1, 2, 3]
    assert result.metrics["step"] == 3 and result.metrics["loss"] == pytest.approx(1 / 3)


async def async_trainable(config: dict[str, Any]) -> dict[str, Any]:
    """An `async def` trainable: awaits, reports, and returns its last row."""
    await asyncio.sleep(0)
    report({"step": 1})
    await asyncio.sleep(0)
    return {"step": 2}


def test_an_async_trainable_runs_and_its_returned_dict_is_the_last_row(tmp_path: Path) -> None:
    """The coroutine runs: its report is a row, and its returned dict the final one."""
    result = tune(async_trainable, tmp_path)[0]
    assert result.status is TrialStatus.TERMINATED
    assert result.metrics_dataframe["step"].tolist() == [1, 2]
    assert result.metrics["step"] == 2 and result.metrics["training_iteration"] == 2


async def async_generator(config: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """An async generator trainable, which prefect-tune refuses."""
    yield {"step": 1}


def test_an_async_generator_trainable_is_refused_at_construction(tmp_path: Path) -> None:
    """Tuner(...) raises ConfigError naming an async generator, before anything runs."""
    with pytest.raises(ConfigError, match="async generator"):
        Tuner(async_generator, run_config=RunConfig(name="agen", storage_path=str(tmp_path)))
    assert not (tmp_path / "agen").exists()


# 4. sys.exit() in a trial


def exits_in_trial_one(config: dict[str, Any]) -> None:
    """Trial 1 calls sys.exit(3); the others report."""
    if config["i"] == 1:
        sys.exit(3)
    report({"loss": float(config["i"])})


def test_sys_exit_in_a_threaded_trial_fails_only_that_trial(tmp_path: Path) -> None:
    """The exiting trial is ERROR naming SystemExit; the others finish; fit() returns."""
    grid = tune(exits_in_trial_one, tmp_path, space={"i": grid_search([0, 1, 2])})
    assert [r.status for r in grid] == [TrialStatus.TERMINATED, TrialStatus.ERROR,
                                        TrialStatus.TERMINATED]
    error = grid[1].error
    assert error is not None and "SystemExit" in str(error)
    assert [r.metrics.get("loss") for r in (grid[0], grid[2])] == [0.0, 2.0]
    assert grid.num_errors == 1 and grid.num_terminated == 2


# 5. A Trainer's own RunConfig


def three_checkpoints(config: dict[str, Any]) -> None:
    """A train loop reporting three steps, each with a checkpoint."""
    for step in range(1, 4):
        report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))


def test_a_tuner_without_run_config_uses_the_trainers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Name, storage_path and num_to_keep come from the Trainer's RunConfig."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where the default storage would be
    storage = tmp_path / "trainer-storage"
    trainer = Trainer(three_checkpoints, scaling_config=ScalingConfig(num_workers=1),
                      run_config=RunConfig(name="own", storage_path=str(storage),
                                           checkpoint_config=CheckpointConfig(num_to_keep=1)))
    grid = Tuner(trainer, tune_config=THREAD).fit()
    assert grid.experiment_path == str(storage / "own")
    assert (storage / "own" / "experiment.json").is_file()
    assert not (tmp_path / "home" / "prefect_tune_results").exists()
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED
    assert result.metrics_dataframe["step"].tolist() == [1, 2, 3]
    trial = Path(result.path)
    assert trial.parent == storage / "own"
    assert sorted(p.name for p in trial.iterdir() if "checkpoint_" in p.name) == [
        "checkpoint_000002"]


# 6. A class trainable's iteration count


class Stepper(Trainable):
    """Fails once at step 3; logs what save_checkpoint and load_checkpoint see."""

    def setup(self, config: dict[str, Any]) -> None:
        self.log = CallLog(config["log"])

    def step(self) -> dict[str, Any]:
        if self.iteration == 2 and get_context().attempt == 1:
            raise RuntimeError("step 3 fails on the first attempt")
        return {"loss": 1.0 / (self.iteration + 1)}

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        self.log.record("save", self.iteration)
        return {"iteration": self.iteration}

    def load_checkpoint(self, checkpoint: dict[str, Any] | str) -> None:
        assert isinstance(checkpoint, dict)
        self.log.record("load", checkpoint["iteration"], self.iteration)


def test_a_class_trainables_iteration_counts_completed_steps(tmp_path: Path) -> None:
    """save_checkpoint sees the steps saved; after a retry loaded state and iteration agree."""
    log = CallLog(str(tmp_path / "calls"))
    grid = tune(Stepper, tmp_path, space={"log": log.path}, stop={"training_iteration": 4},
                checkpoint_config=CheckpointConfig(checkpoint_frequency=2),
                failure_config=FailureConfig(max_failures=1))
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    assert log.calls() == [["save", 2], ["load", 2, 2], ["save", 4]]
    saved = [(c.to_dict(), m["loss"]) for c, m in result.best_checkpoints]
    assert saved == [({"iteration": 2}, 0.5), ({"iteration": 4}, 0.25)]
    assert result.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3, 4]


# 7. os.PathLike paths


def one_report(config: dict[str, Any]) -> None:
    """Reports once."""
    report({"loss": 1.0})


def test_every_path_argument_accepts_a_pathlike(tmp_path: Path) -> None:
    """RunConfig stores a Path as str; can_restore and restore take a Path."""
    run_config = RunConfig(name="paths", storage_path=tmp_path / "storage")
    assert run_config.storage_path == str(tmp_path / "storage")
    assert type(run_config.storage_path) is str
    grid = Tuner(one_report, tune_config=THREAD, run_config=run_config).fit()
    experiment = tmp_path / "storage" / "paths"
    assert grid.experiment_path == str(experiment)
    assert Tuner.can_restore(experiment) is True
    assert Tuner.can_restore(tmp_path / "storage" / "missing") is False
    tuner = Tuner.restore(experiment, one_report)
    restored = tuner.fit()
    assert restored.experiment_path == str(experiment)
    assert [r.trial_id for r in restored] == [grid[0].trial_id]
    assert [r.status for r in tuner.get_results()] == [TrialStatus.TERMINATED]


# 8. A score too large for a float


def huge_score(config: dict[str, Any]) -> None:
    """Reports an integer score with 401 digits, with a checkpoint."""
    report({"score": 10**400}, checkpoint=Checkpoint.from_dict({"w": 1}))


def test_a_huge_integer_score_fails_the_trial_with_a_metric_error(tmp_path: Path) -> None:
    """The trial is ERROR with a MetricError that names the score attribute."""
    grid = tune(huge_score, tmp_path, checkpoint_config=CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="score"))
    result = grid[0]
    assert result.status is TrialStatus.ERROR
    summary = result.outcome.error_summary
    assert summary.split(":", 1)[0].endswith("MetricError")
    assert "'score'" in summary


# 9. Malformed storage options


def test_a_non_dict_client_kwargs_is_a_config_error_that_hides_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ConfigError naming client_kwargs; SECRET is in neither the message nor the logs."""
    caplog.set_level(logging.DEBUG)
    options = {"client_kwargs": "x", "secret": SECRET, "key": "testing"}
    with pytest.raises(ConfigError) as refused:
        Tuner(one_report, tune_config=THREAD,
              run_config=RunConfig(name="opts", storage_path="s3://sweeps-opts/runs",
                                   storage_options=options)).fit()
    assert "client_kwargs" in str(refused.value)
    assert SECRET not in str(refused.value)
    assert SECRET not in caplog.text


# 10. The command line


def run_cli(*commands: list[str], cwd: Path | None = None
            ) -> list[subprocess.CompletedProcess[str]]:
    """Run `prefect-tune` once per argument list, all at once (in `cwd`); results in order."""
    processes = [subprocess.Popen([CLI, *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for args in commands]
    done = []
    for args, process in zip(commands, processes, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        done.append(subprocess.CompletedProcess([CLI, *args], process.returncode, stdout,
                                                stderr))
    return done


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed: exit 1, no traceback, nothing else."""
    assert done.returncode == 1, (done.args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("prefect-tune: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def cli_experiment(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    """A finished one-trial experiment, `<storage>/exp`, for the read-only commands."""
    storage = tmp_path_factory.mktemp("cli-inputs")
    tune(one_report, storage)
    return storage / "exp"


def test_cli_bad_paths_are_one_error_line_naming_the_problem(
    cli_experiment: Path, tmp_path: Path
) -> None:
    """ls of a file or a missing directory, export into a missing or onto a directory."""
    file, missing = tmp_path / "not-a-directory.txt", tmp_path / "nowhere"
    file.write_text("x")
    experiment = str(cli_experiment)
    ls_file, ls_missing, into_missing, into_directory = run_cli(
        ["ls", str(file)],
        ["ls", str(missing)],
        ["export", experiment, "--output", str(missing / "x.csv")],
        ["export", experiment, "--output", str(tmp_path)],
    )
    line = one_error_line(ls_file)
    assert str(file) in line and "a file" in line
    assert "no experiments" not in ls_missing.stdout
    line = one_error_line(ls_missing)
    assert str(missing) in line and "not there" in line
    line = one_error_line(into_missing)
    assert str(missing / "x.csv") in line and f"{missing} does not exist" in line
    line = one_error_line(into_directory)
    assert str(tmp_path) in line and "is a directory" in line
    assert not missing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [file.name]


def test_cli_show_reads_a_relative_experiment_path(cli_experiment: Path) -> None:
    """`show exp` run inside the storage directory shows the trial table."""
    (done,) = run_cli(["show", cli_experiment.name], cwd=cli_experiment.parent)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(cli_experiment / "results.csv")
    header = done.stdout.splitlines()[0].split()
    assert header[:2] == ["trial", "status"]
    assert all(trial in done.stdout for trial in table["trial_id"])
    assert "TERMINATED" in done.stdout


def test_cli_malformed_storage_options_never_echo_the_secret(cli_experiment: Path) -> None:
    """Invalid JSON, or JSON that is not an object: exit 1, the secret printed nowhere."""
    restore = ["restore", str(cli_experiment), "--trainable",
               "prefect_tune.flows.demo:train_linear", "--storage-options"]
    runs = run_cli([*restore, f'{{"secret": "{SECRET}", bad'], [*restore, f'["{SECRET}"]'])
    for done in runs:
        assert "--storage-options" in one_error_line(done)
        assert SECRET not in done.stdout and SECRET not in done.stderr
