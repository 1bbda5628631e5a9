"""The `prefect-tune` command line."""

from __future__ import annotations

import os
import sys

# Offline machines: without this, the ephemeral server's telemetry call fails noisily.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import cyclopts

from prefect_tune.flows.demo import run_demo
from prefect_tune.storage import SweepError

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
    grid = run_demo(storage_path, name)
    best = grid.get_best_result()
    print(f"experiment: {grid.experiment_path}")
    print(f"results:    {grid.experiment_path}/results.csv")
    print(f"trials:     {grid.num_terminated} terminated, {grid.num_errors} errored")
    print(f"best trial: {best.path}")
    print(f"  loss={best.metrics['loss']:.6f} config={best.config}")
    print(f"  checkpoint: {best.checkpoint.path if best.checkpoint else None}")


def main() -> None:
    """Entry point: errors are one clear line and a non-zero exit code."""
    try:
        app()
    except SweepError as exc:
        print(f"prefect-tune: error: {exc}", file=sys.stderr)
        sys.exit(1)
