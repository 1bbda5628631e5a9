"""PBT time to target on Ray Tune, for `pbt.py` to compare against: run by the Python of
Ray's own virtual environment (see bench/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from typing import Any

from common import burn, emit
from triangle import LRS, MAX_STEPS, TARGET, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--loop", type=int, default=45_000)
    parser.add_argument("--num-to-keep", type=int, default=0, help="0: keep every checkpoint")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    def train(config: dict[str, Any]) -> None:
        accuracy, number = 0.0, 0
        checkpoint = tune.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as directory, \
                    open(os.path.join(directory, "state.json")) as handle:
                accuracy, number = json.load(handle)
        while True:
            number += 1
            burn(args.loop)
            accuracy = step(accuracy, config["lr"], args.seed, number)
            with tempfile.TemporaryDirectory() as directory:
                with open(os.path.join(directory, "state.json"), "w") as handle:
                    json.dump([accuracy, number], handle)
                tune.report({"mean_accuracy": accuracy, "at": time.time()},
                            checkpoint=tune.Checkpoint.from_directory(directory))

    random.seed(args.seed)
    begin = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-ray-pbt-") as root:
        ray.init(include_dashboard=False, log_to_driver=False)
        grid = tune.Tuner(
            train, param_space={"lr": tune.grid_search(LRS)},
            tune_config=tune.TuneConfig(
                metric="mean_accuracy", mode="max", max_concurrent_trials=args.concurrency,
                scheduler=PopulationBasedTraining(  # it draws from `random`, seeded above
                    time_attr="training_iteration", perturbation_interval=5,
                    hyperparam_mutations={"lr": tune.uniform(0.0001, 0.02)})),
            run_config=tune.RunConfig(
                name="pbt", storage_path=root, verbose=0,
                stop={"mean_accuracy": TARGET, "training_iteration": MAX_STEPS},
                checkpoint_config=tune.CheckpointConfig(num_to_keep=args.num_to_keep or None)),
        ).fit()
        rows = [row for result in grid for row in result.metrics_dataframe.to_dict("records")]
        ray.shutdown()
    emit(reached("ray-keep2" if args.num_to_keep == 2 else "ray", begin, rows))


def reached(variant: str, begin: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Time from `begin` to the first row at or above the target, the steps trained, and
    the whole sweep's time."""
    hits = [row["at"] for row in rows if row["mean_accuracy"] >= TARGET]
    return {"variant": variant, "to_target_s": min(hits) - begin if hits else None,
            "steps": len(rows), "sweep_s": time.time() - begin}


if __name__ == "__main__":
    main()
