"""The `prefect-tune` command line."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Annotated, Any, Literal, cast

import cyclopts
import pandas as pd
from rich.console import Console
from rich.progress import track

# Only what reading an experiment needs: `ls`, `show`, `best` and `export` start without
# importing Prefect; `demo` and `restore` import it when they run.
from prefect_tune.flows.experiments import (
    Experiment,
    list_experiments,
    open_experiment,
    read_experiment,
)
from prefect_tune.flows.results import describe
from prefect_tune.flows.table import trial_table
from prefect_tune.storage import ConfigError, SweepError, resolve_storage
from prefect_tune.storage.records import records_json

app = cyclopts.App(
    name="prefect-tune",
    help="Hyperparameter sweeps on Prefect with checkpoints in any fsspec storage.",
)


@app.command
def demo(storage_path: str | None = None, name: str | None = None) -> None:
    """Run a small real sweep (4 trials of a pure-Python model) and print the best trial.

    Args:
        storage_path: Where the experiment goes; default ~/prefect_tune_results.
        name: Experiment name; default train_linear_<date>.
    """
    from prefect_tune.flows.demo import run_demo

    grid = run_demo(storage_path, name)
    best = grid.get_best_result()
    print(f"experiment: {grid.experiment_path}")
    print(f"results:    {grid.experiment_path}/results.csv")
    print(f"trials:     {describe(grid).split(': ', 1)[1]}")
    print(f"best trial: {best.path}")
    print(f"  loss={best.metrics['loss']:.6f} config={best.config}")
    print(f"  checkpoint: {best.checkpoint.path if best.checkpoint else None}")


Options = Annotated[
    str | None,
    cyclopts.Parameter(help="fsspec storage options as JSON, e.g. '{\"anon\": false}'"),
]
_console = Console()


def _options(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:  # its message names a position, never the text
        raise ConfigError(f"--storage-options is not valid JSON ({exc.msg} at line "
                          f"{exc.lineno} column {exc.colno}); pass a JSON object") from None
    if not isinstance(options, dict):
        raise ConfigError(f"--storage-options must be a JSON object, not a JSON "
                          f"{type(options).__name__}")
    return options


@app.command(name="ls")
def list_command(storage: str, /, *, storage_options: Options = None) -> None:
    """List the experiments in STORAGE: trial counts by status and last update (a plain
    table, wide rather than cut, so that scripts can read it).

    Args:
        storage: A storage path or URL (the storage_path of the sweeps).
    """
    where = resolve_storage(storage, _options(storage_options))
    if not where.isdir(where.root):
        raise ConfigError(
            f"{where.url} is {'a file' if where.exists(where.root) else 'not there'}: pass "
            "the directory (or bucket prefix) the sweeps' storage_path named"
        )
    stores = list(list_experiments(where))
    if not stores:
        print(f"no experiments in {where.url}")
        return
    rows = []
    for store in track(stores, description="reading experiments", console=_console,
                       transient=True, disable=len(stores) < 2):
        experiment = read_experiment(store)
        rows.append({
            "experiment": store.name,
            "trials": len(experiment.outcomes),
            "statuses": ", ".join(f"{s} {n}" for s, n in sorted(experiment.statuses.items())),
            "last update": f"{experiment.updated:%Y-%m-%d %H:%M:%S %Z}"
            if experiment.updated else "",
        })
    print(pd.DataFrame(rows).to_string(index=False))


@app.command
def show(experiment: str, /, *, storage_options: Options = None) -> None:
    """Show EXPERIMENT's trials, best first and marked "*", values rounded (full
    precision: `export`), as many columns as the terminal fits; then its best trial.

    Args:
        experiment: The experiment directory: <storage_path>/<name>.
    """
    found = open_experiment(experiment, _options(storage_options))
    _warn_missing(found)
    grid = found.grid()
    width = shutil.get_terminal_size((100, 24)).columns
    for line in trial_table(grid, width):
        print(line)
    for error in grid:
        if error.outcome.error_summary:
            print(f"{error.trial_id} failed: {error.outcome.error_summary}"[:width])
    print(describe(grid))
    best = grid.summary().get("best")
    if best:
        print(f"best trial: {best['trial']} with {best['metric']}={best['value']}")
        print(f"checkpoint: {best['checkpoint']}")


@app.command
def best(
    experiment: str, /, *, metric: str | None = None, mode: Literal["min", "max"] | None = None,
    storage_options: Options = None,
) -> None:
    """Print the URI of the best trial's best checkpoint (for scripts).

    Without --metric and --mode: the trial best by the sweep's metric and mode, and its
    checkpoint best by the sweep's checkpoint ranking. With either: the trial and its
    kept checkpoint best by that metric and mode (NaN never wins).

    Args:
        experiment: The experiment directory: <storage_path>/<name>.
        metric: Ranks trials and checkpoints; default: the sweep's metric.
        mode: "min" or "max"; default: the sweep's mode.
    """
    found = open_experiment(experiment, _options(storage_options))
    _warn_missing(found)
    grid = found.grid()
    result = grid.get_best_result(metric, mode)
    if metric is None and mode is None:
        checkpoint = grid.best_checkpoint(result)
        if checkpoint is None:
            raise ConfigError(f"the best trial, {result.path}, kept no checkpoint")
    else:
        checkpoint = result.get_best_checkpoint(
            cast(str, metric or grid.metric), cast(Literal["min", "max"], mode or grid.mode))
    print(checkpoint.path)


@app.command
def restore(
    experiment: str, /, *, trainable: str, resume_errored: bool = False,
    restart_errored: bool = False, storage_options: Options = None,
) -> None:
    """Continue EXPERIMENT: run its unfinished trials (and errored ones, if asked).

    Args:
        experiment: The experiment directory: <storage_path>/<name>.
        trainable: The trainable it was created with: "package.module:function".
        resume_errored: Also resume errored trials from their latest checkpoint.
        restart_errored: Also restart errored trials from scratch.
    """
    from prefect_tune.flows.sweep import load_trainable
    from prefect_tune.flows.tuner import Tuner

    tuner = Tuner.restore(
        experiment, load_trainable(trainable), resume_errored=resume_errored,
        restart_errored=restart_errored, storage_options=_options(storage_options),
    )
    with _console.status("running the remaining trials"):
        summary = tuner.fit().summary()
    print(json.dumps(summary, indent=2))


@app.command
def export(
    experiment: str, /, *, format: Literal["csv", "json", "parquet"] = "csv",
    output: str | None = None, storage_options: Options = None,
) -> None:
    """Write EXPERIMENT's trial table (one row per trial) as CSV, JSON or Parquet.

    Args:
        experiment: The experiment directory: <storage_path>/<name>.
        format: csv, json (an array of rows) or parquet.
        output: The file to write; default: standard output (csv and json only).
    """
    frame = open_experiment(experiment, _options(storage_options)).frame()
    if output is not None and (os.path.isdir(output)
                               or not os.path.isdir(os.path.dirname(os.path.abspath(output)))):
        raise ConfigError(
            f"--output {output!r} is a directory; name a file" if os.path.isdir(output) else
            f"--output {output!r}: the directory {os.path.dirname(os.path.abspath(output))} "
            "does not exist; create it first"
        )
    if format == "parquet":
        if output is None:
            raise ConfigError("--format parquet needs --output FILE (Parquet is binary)")
        try:
            frame.to_parquet(output, index=False)
        except ImportError as exc:
            raise ConfigError(
                f"--format parquet needs pyarrow ({exc}); pip install 'prefect-tune[parquet]'"
            ) from None
        return
    text = frame.to_csv(index=False) if format == "csv" else records_json(frame)
    if output is None:
        sys.stdout.write(text)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)


def _warn_missing(found: Experiment) -> None:
    if found.missing:
        print(f"prefect-tune: warning: {len(found.missing)} recorded checkpoints are gone "
              f"from storage: {', '.join(found.missing)}", file=sys.stderr)


def main() -> None:
    """Entry point: errors are one clear line and a non-zero exit code.

    Prefect's anonymous usage analytics are off for these commands (its client notice
    and the ephemeral server's calls, which fail noisily offline) unless the user set
    DO_NOT_TRACK or PREFECT_SERVER_ANALYTICS_ENABLED: set before Prefect is imported,
    which only `demo` and `restore` do.
    """
    if "DO_NOT_TRACK" not in os.environ and \
            "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        os.environ["DO_NOT_TRACK"] = "1"
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    try:
        app()
    except SweepError as exc:
        print(f"prefect-tune: error: {exc}", file=sys.stderr)
        sys.exit(1)
