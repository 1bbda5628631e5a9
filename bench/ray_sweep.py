"""The standard workload on Ray Tune, for `bench/sweep.py` to compare against.

Run by the Python of Ray's own virtual environment (see bench/README.md), never by
prefect-tune's: `python bench/ray_sweep.py [--reuse-actors] [workload flags]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from common import Workload, emit, run_iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse-actors", action="store_true")
    Workload.add_arguments(parser)
    args = parser.parse_args()
    workload = Workload.from_args(args)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from ray import tune

    def train(config: dict[str, Any]) -> None:
        run_iterations(workload, config["trial"], tune.report, tune.Checkpoint.from_directory)

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as root:
        ray.init(include_dashboard=False, log_to_driver=False)
        tuner = tune.Tuner(
            train,
            param_space={"trial": tune.grid_search(list(range(workload.trials)))},
            tune_config=tune.TuneConfig(metric="loss", mode="min",
                                        max_concurrent_trials=workload.concurrency,
                                        reuse_actors=args.reuse_actors),
            run_config=tune.RunConfig(
                name="bench", storage_path=root, verbose=0,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute="loss",
                    checkpoint_score_order="min")),
        )
        grid = tuner.fit()
        assert len(grid) == workload.trials and not grid.errors, grid.errors
        ray.shutdown()
    emit({"variant": "ray-reuse" if args.reuse_actors else "ray",
          "sweep_s": time.perf_counter() - begin})


if __name__ == "__main__":
    main()
