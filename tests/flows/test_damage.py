"""Damaged or missing experiment state: a one-line error naming the file, or the right
result; never a silently different status."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner
from prefect_tune.flows.results import Result, ResultGrid
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    CheckpointError,
    RunConfig,
    StorageError,
    TrialStatus,
)
from prefect_tune.tasks import get_checkpoint, report

pytestmark = pytest.mark.usefixtures("prefect_server")

#: The console script installed beside this interpreter.
CLI = str(Path(sys.executable).with_name("prefect-tune"))
NAME = "damage"
#: One loss per step; num_to_keep=2 by min loss keeps steps 1 and 3 (indexes 0, 2) and
#: the latest, step 4 (index 3).
LOSSES = (2.0, 4.0, 1.0, 3.0)
STRAY = "0123456789ab"


def losses(config: dict[str, Any]) -> None:
    """Reports LOSSES with a checkpoint each, continuing after a restored checkpoint."""
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint is not None else 1
    for step in range(start, len(LOSSES) + 1):
        loss = LOSSES[step - 1]
        report({"loss": loss}, checkpoint=Checkpoint.from_dict({"step": step, "loss": loss}))


def losses_tuner(storage: Path, name: str = NAME) -> Tuner:
    """A Tuner of `losses` in experiment `name` under `storage`."""
    return Tuner(
        losses,
        tune_config=TuneConfig(metric="loss", mode="min", isolation="thread"),
        run_config=RunConfig(
            name=name, storage_path=str(storage),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min",
            ),
        ),
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    """A finished one-trial experiment of `losses`; tests work on copies of it."""
    storage = tmp_path_factory.mktemp("finished")
    grid = losses_tuner(storage).fit()
    assert [r.status for r in grid] == [TrialStatus.TERMINATED]
    trial = trial_dir(storage / NAME)
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == [
        "checkpoint_000000", "checkpoint_000002", "checkpoint_000003",
    ]
    return storage / NAME


@pytest.fixture
def experiment(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished experiment (a copied experiment restores)."""
    return Path(shutil.copytree(finished, tmp_path / "storage" / NAME))


def trial_dir(experiment: Path, prefix: str = "losses_") -> Path:
    """The one trial directory of `experiment` whose name starts with `prefix`."""
    (found,) = [p for p in experiment.iterdir() if p.is_dir() and p.name.startswith(prefix)]
    return found


def unfinish(experiment: Path) -> Path:
    """Leave the trial as its first attempt would if it had died mid-way: without
    trial.json and without an outcome cached by Prefect. Returns its directory."""
    trial = trial_dir(experiment)
    (trial / "trial.json").unlink()
    trial_id = trial.name.removeprefix("losses_")
    for cached in (experiment / ".prefect-results").glob(f"*-{trial_id}"):
        cached.unlink()
    return trial


def checkpoint_path(trial: Path, index: int) -> str:
    """The URI (a local path) of checkpoint `index` of `trial`."""
    return str(trial / f"checkpoint_{index:06d}")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script as a user would."""
    return subprocess.run([CLI, *args], check=False, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def run_clis(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run several console-script commands at once; their results in order."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda command: run_cli(*command), commands))


def assert_one_line_naming(error: BaseException, named: Path | str) -> None:
    """`error`'s message is a single line that names `named`."""
    message = str(error)
    assert str(named) in message, message
    assert "\n" not in message, message


def assert_cli_error_naming(done: subprocess.CompletedProcess[str], named: Path | str) -> None:
    """The command exited 1 with one error line on stderr naming `named`, no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("prefect-tune: error: "), done.stderr
    assert str(named) in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# 1. A checkpoint directory deleted by hand.

#: Deleted indexes -> (Result.checkpoint, grid.best_checkpoint, best_checkpoints) indexes.
DELETIONS: dict[str, tuple[tuple[int, ...], int | None, int | None, list[int]]] = {
    "latest": ((3,), 2, 2, [0, 2]),
    "best": ((2,), 3, 0, [0]),
    "all": ((0, 2, 3), None, None, []),
}


@pytest.mark.parametrize("case", list(DELETIONS))
def test_a_checkpoint_deleted_by_hand_is_named_and_never_handed_out(
    experiment: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """get_results, `show` and `best` warn naming the gone checkpoint, and hand out only
    checkpoints that exist (`best` exits 1 with one error line when none is left)."""
    deleted, latest, best, kept_best = DELETIONS[case]
    trial = trial_dir(experiment)
    gone = [checkpoint_path(trial, index) for index in deleted]
    for path in gone:
        shutil.rmtree(path)

    with caplog.at_level(logging.WARNING, logger="prefect_tune"):
        grid = Tuner.restore(str(experiment), losses).get_results()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all(any(path in w and "gone from storage" in w for w in warnings) for path in gone), \
        warnings
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED
    handed = [result.checkpoint, grid.best_checkpoint(result),
              *(checkpoint for checkpoint, _ in result.best_checkpoints)]
    assert [c.path for c in handed if c is not None and not os.path.isdir(c.path)] == []
    assert (result.checkpoint.path if result.checkpoint else None) == \
        (checkpoint_path(trial, latest) if latest is not None else None)
    best_checkpoint = grid.best_checkpoint(result)
    assert (best_checkpoint.path if best_checkpoint else None) == \
        (checkpoint_path(trial, best) if best is not None else None)
    assert [c.path for c, _ in result.best_checkpoints] == \
        [checkpoint_path(trial, index) for index in kept_best]

    shown, printed = run_clis(("show", str(experiment)), ("best", str(experiment)))
    for done in (shown, printed):
        warned = [line for line in done.stderr.splitlines()
                  if line.startswith("prefect-tune: warning: ")]
        assert len(warned) == 1, done.stderr
        assert "gone from storage" in warned[0]
        assert all(path in warned[0] for path in gone), warned[0]
        assert "Traceback" not in done.stderr
    assert shown.returncode == 0, shown.stderr
    if best is None:
        assert printed.returncode == 1
        errors = [line for line in printed.stderr.splitlines()
                  if line.startswith("prefect-tune: error: ")]
        assert len(errors) == 1 and "kept no checkpoint" in errors[0], printed.stderr
        assert printed.stdout == ""
    else:
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.strip() == checkpoint_path(trial, best)
        assert os.path.isdir(printed.stdout.strip())


# 2. A run killed while a trial's first attempt was mid-way.

CRASH_MODULE = '''
import json, time
from pathlib import Path
from prefect_tune.storage import Checkpoint
from prefect_tune.tasks import get_checkpoint, get_context, report

def hang_after_two(config):
    """Steps 1..4, a checkpoint each. The first time, trial "hang" stops after step 2,
    writes the marker and waits for a file that never comes (at most 120 s)."""
    folder = Path(config["folder"])
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint is not None else 1
    with open(folder / "calls", "a") as out:
        out.write(json.dumps([config["kind"], get_context().attempt, start]) + "\\n")
    for step in range(start, 5):
        report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))
        if config["kind"] == "hang" and step == 2 and not (folder / "reported-2").exists():
            (folder / "reported-2").touch()
            deadline = time.monotonic() + 120
            while not (folder / "never").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
'''

CRASH_DRIVER = '''
import sys
sys.path.insert(0, sys.argv[1])
import crashmod
from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import RunConfig
Tuner(crashmod.hang_after_two,
      param_space={"folder": sys.argv[1], "kind": grid_search(["hang", "quick"])},
      tune_config=TuneConfig(isolation="thread", max_concurrent_trials=2),
      run_config=RunConfig(name="crashed", storage_path=sys.argv[2])).fit()
'''


def poll(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str,
         timeout: float = 120) -> None:
    """Wait until `condition()` holds while `process` runs; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the driver never got to {what} (exit {process.poll()})")
        time.sleep(0.05)


def statuses(experiment: Path) -> dict[str, str]:
    """Trial directory name -> status, of the trials that have a trial.json."""
    found = {}
    for state in experiment.glob("*/trial.json"):
        try:
            found[state.parent.name] = json.loads(state.read_text())["status"]
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Iterator[Path]:
    """A sweep driver SIGKILLed while trial "hang" waits after its 2nd report and
    checkpoint, in its first attempt, and trial "quick" has finished. Yields the folder
    holding the trainable's module, its call log and the experiment (storage/crashed)."""
    folder = tmp_path_factory.mktemp("crash")
    (folder / "crashmod.py").write_text(CRASH_MODULE)
    sys.path.insert(0, str(folder))
    experiment = folder / "storage" / "crashed"
    with open(folder / "driver.log", "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", CRASH_DRIVER, str(folder), str(folder / "storage")],
            env=dict(os.environ, PREFECT_API_URL=prefect_server), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        poll(lambda: (folder / "reported-2").exists()
             and "TERMINATED" in statuses(experiment).values(), driver,
             "the hanging trial's marker and the quick trial's end")
        os.killpg(driver.pid, signal.SIGKILL)
        assert driver.wait(60) == -signal.SIGKILL
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    trials = sorted(experiment.glob("hang_after_two_*"))
    assert len(trials) == 2
    assert list(statuses(experiment).values()) == ["TERMINATED"]  # "hang" has no record
    yield folder
    sys.path.remove(str(folder))


def crashed_copy(crashed: Path, tmp_path: Path) -> Path:
    """A private copy of the crashed experiment."""
    return Path(shutil.copytree(crashed / "storage" / "crashed",
                                tmp_path / "storage" / "crashed"))


def crashed_trainable() -> Any:
    """The crash trainable, imported from the module the crash fixture wrote."""
    import crashmod  # type: ignore[import-not-found]

    return crashmod.hang_after_two


def by_kind(grid: ResultGrid) -> dict[str, Result]:
    """The grid's results by their config's kind ("hang", "quick")."""
    return {r.config["kind"]: r for r in grid}


def hang_trial(experiment: Path, grid: ResultGrid) -> Path:
    """The directory of trial "hang"."""
    return experiment / by_kind(grid)["hang"].path.rsplit("/", 1)[-1]


def calls(crashed: Path) -> list[list[Any]]:
    """Every call of the crash trainable: [kind, attempt, first step]."""
    return [json.loads(line) for line in (crashed / "calls").read_text().splitlines()]


def test_a_crashed_first_attempt_reads_as_running_with_its_rows_and_checkpoint(
    crashed: Path, tmp_path: Path
) -> None:
    """Tuner(...).get_results() and Tuner.restore(...).get_results(): RUNNING, the last
    reported metrics (step 2) and the committed checkpoint of step 2."""
    experiment = crashed_copy(crashed, tmp_path)
    trainable = crashed_trainable()
    grids = [
        Tuner(trainable, run_config=RunConfig(name="crashed",
                                              storage_path=str(experiment.parent))).get_results(),
        Tuner.restore(str(experiment), trainable).get_results(),
    ]
    for grid in grids:
        hang, quick = by_kind(grid)["hang"], by_kind(grid)["quick"]
        trial = hang_trial(experiment, grid)
        assert not (trial / "trial.json").exists()  # a first attempt: no record yet
        assert hang.status is TrialStatus.RUNNING
        assert hang.metrics["step"] == 2 and hang.metrics["training_iteration"] == 2
        assert hang.metrics["checkpoint_dir_name"] == "checkpoint_000001"
        assert hang.checkpoint is not None
        assert hang.checkpoint.path == checkpoint_path(trial, 1)
        assert hang.checkpoint.to_dict() == {"step": 2}
        assert quick.status is TrialStatus.TERMINATED


def test_restore_without_resuming_records_the_crashed_trial_stopped_with_its_state(
    crashed: Path, tmp_path: Path
) -> None:
    """resume_unfinished=False: trial.json says STOPPED with the last metrics and the
    checkpoints; the Result too; the trainable is not called."""
    experiment = crashed_copy(crashed, tmp_path)
    before = calls(crashed)

    grid = Tuner.restore(str(experiment), crashed_trainable(), resume_unfinished=False).fit()

    assert calls(crashed) == before
    hang, quick = by_kind(grid)["hang"], by_kind(grid)["quick"]
    trial = hang_trial(experiment, grid)
    stored = json.loads((trial / "trial.json").read_text())
    assert stored["status"] == "STOPPED"
    assert stored["last_metrics"]["step"] == 2
    assert stored["last_metrics"]["training_iteration"] == 2
    assert [c["index"] for c in stored["checkpoints"]] == [0, 1]
    assert hang.status is TrialStatus.STOPPED
    assert hang.metrics["step"] == 2
    assert hang.checkpoint is not None and hang.checkpoint.path == checkpoint_path(trial, 1)
    assert hang.checkpoint.to_dict() == {"step": 2}
    assert quick.status is TrialStatus.TERMINATED


def test_the_default_restore_resumes_the_crashed_trial_from_its_checkpoint(
    crashed: Path, tmp_path: Path
) -> None:
    """The trial resumes after step 2 (once), the finished one is not run again, and
    every training_iteration is recorded exactly once."""
    experiment = crashed_copy(crashed, tmp_path)
    before = calls(crashed)

    grid = Tuner.restore(str(experiment), crashed_trainable()).fit()

    assert [(kind, start) for kind, _, start in calls(crashed)[len(before):]] == [("hang", 3)]
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 2
    trial = hang_trial(experiment, grid)
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert [row["training_iteration"] for row in rows] == [1, 2, 3, 4]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert by_kind(grid)["hang"].metrics["step"] == 4


# 3. Damaged state files.


def damage_trial_metrics(experiment: Path) -> Path:
    """trial.json with "last_metrics": [1, 2]."""
    state = trial_dir(experiment) / "trial.json"
    data = json.loads(state.read_text())
    data["last_metrics"] = [1, 2]
    state.write_text(json.dumps(data))
    return state


def damage_result_row(experiment: Path) -> Path:
    """A JSON list as the 2nd of 4 rows of result.json, in a trial without trial.json
    (its first attempt died), so every reader has to parse it."""
    log = unfinish(experiment) / "result.json"
    lines = log.read_text().splitlines()
    lines[1] = "[1, 2]"
    log.write_text("\n".join(lines) + "\n")
    return log


def damage_experiment_settings(experiment: Path) -> Path:
    """experiment.json with a setting this version does not know in "tune"."""
    state = experiment / "experiment.json"
    data = json.loads(state.read_text())
    data["tune"]["unknown_setting"] = 1
    state.write_text(json.dumps(data))
    return state


def damage_trial_as_directory(experiment: Path) -> Path:
    """trial.json replaced by a directory."""
    state = trial_dir(experiment) / "trial.json"
    state.unlink()
    state.mkdir()
    return state


DAMAGES: dict[str, Callable[[Path], Path]] = {
    "trial.json-last_metrics-list": damage_trial_metrics,
    "result.json-list-row": damage_result_row,
    "experiment.json-unknown-setting": damage_experiment_settings,
    "trial.json-is-a-directory": damage_trial_as_directory,
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_state_file_is_one_storage_error_naming_it(
    experiment: Path, case: str
) -> None:
    """get_results(), Tuner.restore(...).fit() and `show`/`best`/`export` each fail with
    one StorageError line naming the file, never a status made up in its place."""
    named = DAMAGES[case](experiment)

    with pytest.raises(StorageError) as read:
        losses_tuner(experiment.parent).get_results()
    assert_one_line_naming(read.value, named)
    with pytest.raises(StorageError) as ran:
        Tuner.restore(str(experiment), losses).fit()
    assert_one_line_naming(ran.value, named)
    for done in run_clis(("show", str(experiment)), ("best", str(experiment)),
                         ("export", str(experiment))):
        assert_cli_error_naming(done, named)


def test_a_damaged_row_of_a_finished_trial_fails_its_metrics_dataframe(
    experiment: Path
) -> None:
    """A finished trial reads from trial.json; its result.json rows, when read, raise one
    StorageError line naming result.json."""
    log = trial_dir(experiment) / "result.json"
    lines = log.read_text().splitlines()
    lines[1] = "[1, 2]"
    log.write_text("\n".join(lines) + "\n")
    grid = Tuner.restore(str(experiment), losses).get_results()
    assert grid[0].status is TrialStatus.TERMINATED

    with pytest.raises(StorageError) as caught:
        grid[0].metrics_dataframe  # noqa: B018 - the read is the point
    assert_one_line_naming(caught.value, log)
    with pytest.raises(StorageError) as ranked:
        grid.get_best_result(scope="avg")
    assert_one_line_naming(ranked.value, log)


def test_a_truncated_checkpoint_json_is_a_checkpoint_error_naming_the_checkpoint(
    experiment: Path
) -> None:
    """to_dict() of it raises one CheckpointError line naming the checkpoint; a trial
    resumed from it fails (ERROR, not retried) naming it too."""
    trial = trial_dir(experiment)
    data = trial / "checkpoint_000003" / "checkpoint.json"
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    grid = Tuner.restore(str(experiment), losses).get_results()
    assert grid[0].checkpoint is not None
    assert grid[0].checkpoint.path == checkpoint_path(trial, 3)

    with pytest.raises(CheckpointError) as caught:
        grid[0].checkpoint.to_dict()
    assert_one_line_naming(caught.value, checkpoint_path(trial, 3))

    unfinish(experiment)  # a restore now resumes it from checkpoint 3
    resumed = Tuner.restore(str(experiment), losses).fit()[0]
    assert resumed.status is TrialStatus.ERROR
    assert resumed.error is not None
    assert "CheckpointError" in str(resumed.error)
    assert checkpoint_path(trial, 3) in str(resumed.error)
    assert json.loads((trial / "trial.json").read_text())["attempts"] == 2


# 4. What killed writers and processes leave behind.


@pytest.mark.parametrize("trial_state", ["finished", "unfinished"])
def test_temp_files_of_killed_writers_are_removed_by_the_next_run(
    experiment: Path, trial_state: str
) -> None:
    """A stray result.json temp file in a trial directory, and a results.csv temp file
    and a probe in the experiment directory, are gone after Tuner.restore(...).fit()."""
    trial = unfinish(experiment) if trial_state == "unfinished" else trial_dir(experiment)
    strays = [trial / f"result.json.tmp-{STRAY}", experiment / f"results.csv.tmp-{STRAY}",
              experiment / f".probe-{STRAY}"]
    for stray in strays:
        stray.write_bytes(b'{"half": ')

    grid = Tuner.restore(str(experiment), losses).fit()

    assert [r.status for r in grid] == [TrialStatus.TERMINATED]
    assert [str(s) for s in strays if s.exists()] == []


def test_temp_dirs_of_dead_processes_are_removed_by_the_next_sweep(tmp_path: Path) -> None:
    """<tmp>/prefect-tune-<uid>/<pid> of a process that no longer runs is removed; that
    of the running process is kept."""
    root = Path(tempfile.gettempdir()) / f"prefect-tune-{os.getuid()}"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert child.wait(60) == 0
    dead = root / str(child.pid)
    ours = root / str(os.getpid()) / f"keep-{STRAY}"
    try:
        (dead / "dict-x").mkdir(parents=True)
        (dead / "dict-x" / "checkpoint.json").write_text("{}")
        ours.mkdir(parents=True)
        (ours / "data").write_text("mine")

        grid = losses_tuner(tmp_path / "storage", "fresh").fit()

        assert [r.status for r in grid] == [TrialStatus.TERMINATED]
        assert not dead.exists()
        assert (ours / "data").read_text() == "mine"
    finally:
        shutil.rmtree(dead, ignore_errors=True)
        shutil.rmtree(ours, ignore_errors=True)
