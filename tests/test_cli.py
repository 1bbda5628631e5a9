"""The `prefect-tune` console script, run as a user would, against the session's server."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import RunConfig, TrialStatus

from .flaky_trainable import flaky

#: The console script installed beside this interpreter.
CLI = str(Path(sys.executable).with_name("prefect-tune"))
#: The repository root: on PYTHONPATH, `tests.flaky_trainable:flaky` imports.
ROOT = Path(__file__).resolve().parents[1]
LS_COLUMNS = ("experiment", "trials", "statuses", "last update")


def run_cli(*args: str, api: str, pythonpath: Path | None = None, columns: int = 100
            ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL=api, COLUMNS=str(columns))
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [CLI, *args], check=False, env=env, capture_output=True, text=True, timeout=300,
    )


def parse_table(lines: Sequence[str], columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a table printed by pandas' `to_string(index=False)`: `lines` are its
    header and rows, every cell right-aligned under its column name. Each row must fill
    exactly the header's width, with a space between cells."""
    header, *rows = lines
    ends, position = [], 0
    for column in columns:
        start = header.index(column, position)
        assert start == 0 or header[start - 1] == " ", (column, header)
        position = start + len(column)
        ends.append(position)
    assert ends[-1] == len(header), f"columns {columns} do not fill the header {header!r}"
    parsed = []
    for row in rows:
        assert len(row) == len(header), (row, header)
        starts = [0, *ends[:-1]]
        assert all(row[s] == " " for s in starts[1:]), row  # cells never touch
        parsed.append({c: row[s:e].strip() for c, s, e in zip(columns, starts, ends, strict=True)})
    return parsed


def ls_rows(stdout: str) -> dict[str, dict[str, str]]:
    """`prefect-tune ls` output: experiment name -> its cells."""
    return {row["experiment"]: row for row in parse_table(stdout.splitlines(), LS_COLUMNS)}


def last_update(experiment: Path) -> str:
    """When any file of the experiment last changed, as `ls` prints it."""
    newest = max(p.stat().st_mtime for p in experiment.rglob("*") if p.is_file())
    return f"{datetime.fromtimestamp(newest, UTC):%Y-%m-%d %H:%M:%S} UTC"


def file_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> content)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_demo_runs_a_real_sweep_and_prints_the_best_trial(
    tmp_path: Path, prefect_server: str
) -> None:
    done = run_cli("demo", "--storage-path", str(tmp_path), "--name", "cli-demo", api=prefect_server)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "cli-demo" / "results.csv")
    assert list(table["status"]) == ["TERMINATED"] * 4
    best = table.loc[table["loss"].idxmin()]
    assert f"best trial: {tmp_path / 'cli-demo' / best['trial_name']}" in done.stdout
    assert f"checkpoint: {best['best_checkpoint']}" in done.stdout
    assert f"results:    {tmp_path / 'cli-demo' / 'results.csv'}" in done.stdout


@pytest.mark.usefixtures("prefect_server")
def test_errors_are_one_clear_line_and_exit_nonzero(prefect_server: str) -> None:
    done = run_cli("demo", "--storage-path", "nosuch://x", api=prefect_server)
    assert done.returncode == 1
    ours = [line for line in done.stderr.splitlines() if line.startswith("prefect-tune: error:")]
    assert len(ours) == 1
    assert ours[0].startswith("prefect-tune: error: storage_path 'nosuch://x' has an unknown scheme")


def test_help_lists_every_command() -> None:
    """The first word of each entry of the help's command panel: exactly the six commands
    (and the two options)."""
    done = subprocess.run(
        [CLI, "--help"], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    entries = re.findall(r"^\W (\S+)", done.stdout, flags=re.MULTILINE)
    assert entries == ["best", "demo", "export", "ls", "restore", "show", "--help", "--version"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    """A finished demo experiment (4 trials), shared by the read-only commands."""
    storage = tmp_path_factory.mktemp("cli")
    done = run_cli("demo", "--storage-path", str(storage), "--name", "shared", api=prefect_server)
    assert done.returncode == 0, done.stderr
    return storage / "shared"


def test_ls_counts_trials_by_status(experiment: Path, prefect_server: str) -> None:
    done = run_cli("ls", str(experiment.parent), api=prefect_server)
    assert done.returncode == 0, done.stderr
    assert ls_rows(done.stdout) == {"shared": {
        "experiment": "shared", "trials": "4", "statuses": "TERMINATED 4",
        "last update": last_update(experiment),
    }}


def test_show_and_best_name_the_best_checkpoint(experiment: Path, prefect_server: str) -> None:
    table = pd.read_csv(experiment / "results.csv").sort_values("loss")
    best = table.iloc[0]
    shown = run_cli("show", str(experiment), api=prefect_server, columns=100)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 1 + len(table) + 3  # header, a row per trial, counts, the best
    assert max(map(len, lines)) <= 100
    # no column repeats another: the trial's name is its id with the trainable's prefix
    assert lines[0].split() == ["trial", "status", "loss", "iter", "lr", "steps_per_epoch",
                                "epochs", "epoch"]
    rows = [line.split() for line in lines[1:-3]]
    # sorted by the sweep's metric, best first and marked; values rounded for reading
    assert [row[0] for row in rows] == ["*", *table["trial_id"][1:]]
    assert rows[0][1:] == [best["trial_id"], "TERMINATED", f"{best['loss']:.4g}", "8",
                           f"{best['config/lr']:.4g}", str(best["config/steps_per_epoch"]),
                           "8", "7"]
    assert [row[-6] for row in rows[1:]] == [f"{v:.4g}" for v in table["loss"][1:]]
    assert lines[-3] == "4 trials: 4 terminated, 0 errored, 0 stopped"
    best_rows = (experiment / best["trial_name"] / "result.json").read_text().splitlines()
    assert lines[-2:] == [
        f"best trial: {best['trial_name']} with loss={json.loads(best_rows[-1])['loss']}",
        f"checkpoint: {best['best_checkpoint']}",
    ]
    # narrower: the columns that fit, in their order; the rest are named
    narrow = run_cli("show", str(experiment), api=prefect_server, columns=60).stdout
    table_lines = narrow.splitlines()[:6]
    assert max(map(len, table_lines)) <= 60
    assert table_lines[0].split() == ["trial", "status", "loss", "iter", "lr", "epochs"]
    assert table_lines[5].startswith("(not shown: steps_per_epoch, epoch; ")
    printed = run_cli("best", str(experiment), api=prefect_server)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == f"{best['best_checkpoint']}\n"
    # --mode max: the worst trial by loss, and its kept checkpoint with the highest loss
    worst = table.loc[table["loss"].idxmax()]
    kept = json.loads((experiment / worst["trial_name"] / "trial.json").read_text())
    highest = max(kept["checkpoints"], key=lambda c: c["metrics"]["loss"])["index"]
    inverted = run_cli("best", str(experiment), "--mode", "max", api=prefect_server)
    assert inverted.returncode == 0, inverted.stderr
    assert inverted.stdout == \
        f"{experiment / worst['trial_name']}/checkpoint_{highest:06d}\n"
    # --metric epoch --mode min: ranked by another metric, trials and checkpoints alike
    # (every trial ends at the same epoch: the first of equals wins)
    first = pd.read_csv(experiment / "results.csv")["trial_name"][0]
    kept = json.loads((experiment / first / "trial.json").read_text())
    earliest = min(kept["checkpoints"], key=lambda c: c["metrics"]["epoch"])["index"]
    by_epoch = run_cli("best", str(experiment), "--metric", "epoch", "--mode", "min",
                       api=prefect_server)
    assert by_epoch.returncode == 0, by_epoch.stderr
    assert by_epoch.stdout == f"{experiment / first}/checkpoint_{earliest:06d}\n"


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_writes_the_trial_table(
    experiment: Path, prefect_server: str, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"table.{fmt}"
    done = run_cli("export", str(experiment), "--format", fmt, "--output", str(out),
                   api=prefect_server)
    assert done.returncode == 0, done.stderr
    read = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt]
    exported = read(out)
    expected = pd.read_csv(experiment / "results.csv")
    assert list(exported["trial_name"]) == list(expected["trial_name"])
    assert exported["loss"].tolist() == pytest.approx(expected["loss"].tolist())


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_without_output_writes_to_stdout(
    experiment: Path, prefect_server: str, fmt: str
) -> None:
    """CSV (the default format) and JSON go to standard output, the same table as
    results.csv and results.json."""
    done = run_cli("export", str(experiment), *(["--format", fmt] if fmt == "json" else []),
                   api=prefect_server)
    assert done.returncode == 0, done.stderr
    if fmt == "csv":
        exported = pd.read_csv(io.StringIO(done.stdout))
        assert len(exported) == 4
        pd.testing.assert_frame_equal(exported, pd.read_csv(experiment / "results.csv"),
                                      check_exact=True, check_like=True)
    else:
        exported = json.loads(done.stdout)
        assert len(exported) == 4
        assert exported == json.loads((experiment / "results.json").read_text())


def test_export_has_the_columns_of_results_csv_in_their_order(
    experiment: Path, prefect_server: str
) -> None:
    """`export` writes "the trial table, as results.csv has it": the same columns, in the
    same order."""
    done = run_cli("export", str(experiment), api=prefect_server)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    assert header == (experiment / "results.csv").read_text().splitlines()[0]


def test_restore_finishes_an_interrupted_experiment(tmp_path: Path, prefect_server: str) -> None:
    done = run_cli("demo", "--storage-path", str(tmp_path), "--name", "cut", api=prefect_server)
    assert done.returncode == 0, done.stderr
    trial = min(p for p in (tmp_path / "cut").iterdir() if (p / "trial.json").exists())
    # As if the driver died while the trial ran: no trial.json, no outcome cached by Prefect.
    (trial / "trial.json").unlink()
    for cached in (tmp_path / "cut" / ".prefect-results").glob(f"*{trial.name[-11:]}"):
        cached.unlink()
    listed = run_cli("ls", str(tmp_path), api=prefect_server)
    assert listed.returncode == 0, listed.stderr
    row = ls_rows(listed.stdout)["cut"]
    assert (row["trials"], row["statuses"]) == ("4", "RUNNING 1, TERMINATED 3")
    restored = run_cli("restore", str(tmp_path / "cut"), "--trainable",
                       "prefect_tune.flows.demo:train_linear", api=prefect_server)
    assert restored.returncode == 0, restored.stderr
    summary = json.loads(restored.stdout)
    assert summary["experiment_path"] == str(tmp_path / "cut")
    assert summary["trials"] == {"TERMINATED": 4}
    assert json.loads((trial / "trial.json").read_text())["status"] == "TERMINATED"


def test_restore_resume_errored_resumes_from_the_latest_checkpoint(
    tmp_path: Path, prefect_server: str
) -> None:
    """`restore --trainable mod:fn --resume-errored`: the errored trial resumes from its
    checkpoint of step 2 and ends with exactly 3 rows; the finished one is not touched."""
    gate, log = tmp_path / "gate", tmp_path / "calls"
    experiment = tmp_path / "runs" / "flaky"
    grid = Tuner(
        flaky, param_space={"fail": grid_search([False, True]), "gate": str(gate),
                            "log": str(log)},
        tune_config=TuneConfig(metric="loss", mode="min", isolation="thread"),
        run_config=RunConfig(name="flaky", storage_path=str(tmp_path / "runs")),
    ).fit()
    assert [r.status for r in grid] == [TrialStatus.TERMINATED, TrialStatus.ERROR]
    ok, failed = grid
    rows_before = failed.metrics_dataframe
    assert rows_before["step"].tolist() == [1, 2]
    finished = file_bytes(Path(ok.path))
    gate.touch()

    done = run_cli("restore", str(experiment), "--trainable", "tests.flaky_trainable:flaky",
                   "--resume-errored", api=prefect_server, pythonpath=ROOT)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["trials"] == {"TERMINATED": 2}
    after = Tuner.restore(str(experiment), flaky).get_results()
    assert [r.status for r in after] == [TrialStatus.TERMINATED, TrialStatus.TERMINATED]
    resumed = after[1]
    assert resumed.outcome.attempts == 2
    frame = resumed.metrics_dataframe
    assert frame["training_iteration"].tolist() == [1, 2, 3]
    assert frame["step"].tolist() == [1, 2, 3]
    assert frame["checkpoint_dir_name"].tolist() == [f"checkpoint_{i:06d}" for i in range(3)]
    pd.testing.assert_frame_equal(frame.iloc[:2], rows_before)  # kept, not re-reported
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c for c in calls if c[0] == ok.trial_id] == [[ok.trial_id, 1, 1]]
    assert [c for c in calls if c[0] == failed.trial_id] == [
        [failed.trial_id, 1, 1], [failed.trial_id, 2, 3]]  # attempt 2 started after step 2
    assert len(calls) == 3
    assert (Path(resumed.path) / "error.txt").read_text().count("Failure # ") == 1
    assert file_bytes(Path(ok.path)) == finished
    assert list(pd.read_csv(experiment / "results.csv")["status"]) == ["TERMINATED"] * 2


def test_a_missing_experiment_is_one_error_line(tmp_path: Path, prefect_server: str) -> None:
    done = run_cli("show", str(tmp_path / "nope"), api=prefect_server)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"prefect-tune: error: no experiment at '{tmp_path / 'nope'}'")


def test_ls_and_best_read_an_experiment_on_s3(
    prefect_server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from prefect_tune.flows.demo import train_linear
    from tests.conftest import make_backend

    s3 = make_backend("s3", request, tmp_path)
    grid = Tuner(
        train_linear, param_space={"lr": grid_search([0.05, 0.1]), "epochs": 2},
        tune_config=TuneConfig(metric="loss", mode="min", isolation="thread"),
        run_config=RunConfig(name="on-s3", storage_path=s3.url, storage_options=s3.options),
    ).fit()
    options = json.dumps(s3.options)
    listed = run_cli("ls", s3.url, "--storage-options", options, api=prefect_server)
    assert listed.returncode == 0, listed.stderr
    rows = ls_rows(listed.stdout)
    assert list(rows) == ["on-s3"]
    assert (rows["on-s3"]["trials"], rows["on-s3"]["statuses"]) == ("2", "TERMINATED 2")
    printed = run_cli("best", f"{s3.url}/on-s3", "--storage-options", options,
                      api=prefect_server)
    assert printed.returncode == 0, printed.stderr
    best = grid.get_best_result()
    assert printed.stdout.strip() == grid.best_checkpoint(best).path
    assert printed.stdout.startswith(f"{s3.url}/on-s3/")


def exact(config: dict[str, float]) -> None:
    from prefect_tune.tasks import report

    report({"loss": config["x"] / 3, "nested": {"acc": 0.1234567890123456789}})


@pytest.mark.usefixtures("prefect_server")
def test_json_results_keep_full_precision_and_plain_slashes(
    tmp_path: Path, prefect_server: str
) -> None:
    """results.json and `export --format json` hold every float as Python prints it
    (17 significant digits where needed) and nested names as "nested/acc"."""
    grid = Tuner(exact, param_space={"x": grid_search([1.0, 2.0])},
                 tune_config=TuneConfig(isolation="thread"),
                 run_config=RunConfig(name="exact", storage_path=str(tmp_path))).fit()
    stored = (tmp_path / "exact" / "results.json").read_text()
    done = run_cli("export", str(tmp_path / "exact"), "--format", "json", api=prefect_server)

    assert done.returncode == 0, done.stderr
    for text in (stored, done.stdout):
        assert "\\/" not in text and '"nested/acc": 0.12345678901234568' in text
        rows = {row["trial_id"]: row for row in json.loads(text)}
        for result in grid:
            assert rows[result.trial_id]["loss"] == result.metrics["loss"]  # bit for bit
    assert json.loads(done.stdout) == json.loads(stored)


def test_show_of_a_storage_root_says_so_and_suggests_ls(
    experiment: Path, prefect_server: str
) -> None:
    root = experiment.parent
    done = run_cli("show", str(root), api=prefect_server)

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [(
        f"prefect-tune: error: {root} is a storage root with 1 experiments ({experiment.name}),"
        f" not an experiment: list them with prefect-tune ls {root}, or pass one, "
        f"{root}/<name>")]


@pytest.mark.parametrize("command", [["ls", "{root}"], ["show", "{exp}"], ["best", "{exp}"],
                                     ["export", "{exp}", "--format", "json"]])
def test_reading_commands_do_not_import_prefect(
    command: list[str], experiment: Path
) -> None:
    """`ls`, `show`, `best` and `export` read storage only: they start without Prefect
    (a second of imports), its server or the demo."""
    args = [a.format(root=experiment.parent, exp=experiment) for a in command]
    code = (f"import sys; sys.argv = ['prefect-tune', *{args!r}]\n"
            "from prefect_tune.flows.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('\\n', sorted({m.split('.')[0] for m in sys.modules}"
            " & {'prefect', 'optuna', 'mlflow', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].strip() == "[]"
