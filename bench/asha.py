"""Time to reach a target with ASHA, side by side with Ray Tune's ASHA: 81 fixed
configs of a Hartmann-6 multi-fidelity problem (`hartmann.py`), max_t 27 steps of a
fixed CPU loop each, grace period 1, reduction factor 3, 2 trials at a time.

Variants, each a whole process, interleaved seed by seed (a seed fixes the configs):
- tune: prefect-tune's ASHAScheduler (stopping variant, as Ray's), process isolation;
- tune-promotion: prefect-tune's ASHAScheduler(promotion=True), the paper's algorithm;
- tune-fifo: prefect-tune without a scheduler (what the schedulers save);
- ray: Ray Tune 2.60's ASHAScheduler, by the Python of Ray's own environment.
With `--services running` each sweep joins services started before it (a `prefect
server start`; a `ray start --head` cluster), as deployed sweeps do, instead of starting
its own (Prefect's ephemeral API server; Ray's in-process cluster start).
"Time to target": from the start of the sweep call to the first report at or below the
third-best full-fidelity loss of the 81 configs.

Run: python bench/asha.py [--seeds 1 2 3] [--services own|running] [--ray-python PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

from common import (
    HERE,
    burn,
    clean_env,
    emit,
    out_dir_argument,
    prefect_server,
    ray_cluster,
    run_process,
    run_seeds,
    target_table,
    write_outputs,
)
from hartmann import MAX_T, configs, loss, target
from ray_asha import summary

VARIANTS = ("tune", "tune-promotion", "tune-fifo", "ray")
DEFAULT_RAY_PYTHON = os.path.join(HERE, ".venv-ray", "bin", "python")


def measure(variant: str, seed: int, concurrency: int, loop: int) -> None:
    from prefect_tune.flows import ASHAScheduler, TuneConfig, Tuner, grid_search
    from prefect_tune.storage import RunConfig
    from prefect_tune.tasks import report

    points = configs(seed)

    def train(config: dict[str, Any]) -> None:
        x = points[config["i"]]
        for step in range(1, MAX_T + 1):
            burn(loop)
            report({"loss": loss(x, step), "at": time.time()})

    scheduler = None if variant == "tune-fifo" else ASHAScheduler(
        max_t=MAX_T, grace_period=1, reduction_factor=3, promotion=variant == "tune-promotion")
    with tempfile.TemporaryDirectory(prefix="bench-asha-") as root:
        begin = time.time()
        grid = Tuner(
            train, param_space={"i": grid_search(list(range(len(points))))},
            tune_config=TuneConfig(metric="loss", mode="min", scheduler=scheduler,
                                   max_concurrent_trials=concurrency, tag_trials=False),
            run_config=RunConfig(name="asha", storage_path=root),
        ).fit()
        rows = [row for result in grid for row in result.metrics_dataframe.to_dict("records")]
    emit(summary(variant, begin, rows, target(points)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--loop", type=int, default=45_000)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--services", choices=("own", "running"), default="own")
    parser.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    out_dir_argument(parser)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.seed, args.concurrency, args.loop)
        return
    variants = list(args.variants)
    if "ray" in variants and not os.path.exists(args.ray_python):
        print(f"Ray Tune skipped: no Ray at {args.ray_python} (see bench/README.md)")
        variants.remove("ray")
    with ExitStack() as services:
        env = clean_env()
        if args.services == "running":
            env["PREFECT_API_URL"] = services.enter_context(prefect_server())
            if "ray" in variants:
                env["RAY_ADDRESS"] = services.enter_context(
                    ray_cluster(args.ray_python, args.concurrency))
        report(sweeps(variants, args, env), args)


def sweeps(variants: list[str], args: argparse.Namespace, env: dict[str, str]
           ) -> dict[str, list[dict[str, Any]]]:
    run_process([sys.executable, __file__, "--measure", "tune-fifo", "--seed", "0",
                 "--loop", "0"], env)  # creates the Prefect database

    def argv_of(variant: str) -> list[str]:
        if variant == "ray":
            return [args.ray_python, os.path.join(HERE, "ray_asha.py")]
        return [sys.executable, __file__, "--measure", variant]

    return run_seeds(args.seeds, variants, argv_of,
                     ["--concurrency", str(args.concurrency), "--loop", str(args.loop)], env)


def report(samples: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    markdown = (
        f"ASHA time to target: 81 Hartmann-6 configs, max_t {MAX_T}, grace 1, reduction "
        f"factor 3, {args.concurrency} at a time, a {args.loop}-step CPU loop per step, "
        f"services {args.services}; "
        f"medians over seeds {args.seeds}.\n\n" + target_table(samples)
    )
    write_outputs(args.out, "asha", {"runs": samples}, markdown)


if __name__ == "__main__":
    main()
