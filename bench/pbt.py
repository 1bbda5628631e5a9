"""Time to reach a target with population-based training, side by side with Ray Tune's
PBT: Ray's triangle-wave toy (`triangle.py`, seeded noise), a population of 4 starting
far from the best learning rate, 2 at a time, perturbation interval 5, lr mutated within
uniform(0.0001, 0.02), a fixed CPU loop per step; each trial stops at the target
accuracy (or 1,000 steps).

Variants, each a whole process, interleaved seed by seed:
- tune: prefect-tune's PopulationBasedTraining, process isolation;
- ray: Ray Tune 2.60's PopulationBasedTraining, by the Python of Ray's own environment,
  keeping every checkpoint (its workaround for retention deleting a donor's checkpoint);
- ray-keep2: the same with num_to_keep=2, as prefect-tune runs (Ray's trials fail:
  "Could not recover from checkpoint as it does not exist on storage anymore").
"Time to target": from the start of the sweep call to the first report at or above it.

Run: python bench/pbt.py [--seeds 1 2 3] [--ray-python PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from common import (
    HERE,
    burn,
    clean_env,
    emit,
    out_dir_argument,
    run_seeds,
    target_table,
    write_outputs,
)
from ray_pbt import reached
from triangle import LRS, MAX_STEPS, TARGET, step

VARIANTS = ("tune", "ray", "ray-keep2")
DEFAULT_RAY_PYTHON = os.path.join(HERE, ".venv-ray", "bin", "python")


def measure(seed: int, concurrency: int, loop: int) -> None:
    from prefect_tune.flows import PopulationBasedTraining, TuneConfig, Tuner, grid_search, uniform
    from prefect_tune.storage import Checkpoint, CheckpointConfig, RunConfig
    from prefect_tune.tasks import get_checkpoint, report

    def train(config: dict[str, Any]) -> None:
        checkpoint = get_checkpoint()
        accuracy, number = checkpoint.to_dict()["state"] if checkpoint else (0.0, 0)
        while True:
            number += 1
            burn(loop)
            accuracy = step(accuracy, config["lr"], seed, number)
            report({"mean_accuracy": accuracy, "at": time.time()},
                    checkpoint=Checkpoint.from_dict({"state": [accuracy, number]}))

    with tempfile.TemporaryDirectory(prefix="bench-pbt-") as root:
        begin = time.time()
        grid = Tuner(
            train, param_space={"lr": grid_search(LRS)},
            tune_config=TuneConfig(
                metric="mean_accuracy", mode="max", max_concurrent_trials=concurrency,
                tag_trials=False, scheduler=PopulationBasedTraining(
                    perturbation_interval=5, seed=seed,
                    hyperparam_mutations={"lr": uniform(0.0001, 0.02)})),
            run_config=RunConfig(name="pbt", storage_path=root,
                                 stop={"mean_accuracy": TARGET, "training_iteration": MAX_STEPS},
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        ).fit()
        rows = [row for result in grid for row in result.metrics_dataframe.to_dict("records")]
    emit(reached("tune", begin, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--loop", type=int, default=45_000)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    out_dir_argument(parser)
    args = parser.parse_args()
    if args.measure:
        measure(args.seed, args.concurrency, args.loop)
        return
    variants = list(args.variants)
    if not os.path.exists(args.ray_python):
        print(f"Ray Tune skipped: no Ray at {args.ray_python} (see bench/README.md)")
        variants = [v for v in variants if not v.startswith("ray")]
    env = clean_env()
    def argv_of(variant: str) -> list[str]:
        if variant.startswith("ray"):
            return [args.ray_python, os.path.join(HERE, "ray_pbt.py"), "--num-to-keep",
                    "2" if variant == "ray-keep2" else "0"]
        return [sys.executable, __file__, "--measure"]

    samples = run_seeds(args.seeds, variants, argv_of,
                        ["--concurrency", str(args.concurrency), "--loop", str(args.loop)], env)
    markdown = (
        f"PBT time to target: Ray's triangle-wave toy, population {len(LRS)}, "
        f"{args.concurrency} at a time, accuracy {TARGET}, a {args.loop}-step CPU loop per "
        f"step; medians over seeds {args.seeds}.\n\n" + target_table(samples)
    )
    write_outputs(args.out, "pbt", {"runs": samples}, markdown)


if __name__ == "__main__":
    main()
