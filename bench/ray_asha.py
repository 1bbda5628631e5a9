"""ASHA time to target on Ray Tune, for `asha.py` to compare against: run by the
Python of Ray's own virtual environment (see bench/README.md)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from common import burn, emit
from hartmann import MAX_T, configs, loss, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--loop", type=int, default=45_000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    points = configs(args.seed)

    import ray
    from ray import tune

    def train(config: dict[str, Any]) -> None:
        x = points[config["i"]]
        for step in range(1, MAX_T + 1):
            burn(args.loop)
            tune.report({"loss": loss(x, step), "at": time.time()})

    begin = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-ray-asha-") as root:
        # RAY_ADDRESS set: join that running cluster; else start one, as Ray does
        ray.init(log_to_driver=False, **({} if "RAY_ADDRESS" in os.environ
                                         else {"include_dashboard": False}))
        grid = tune.Tuner(
            train, param_space={"i": tune.grid_search(list(range(len(points))))},
            tune_config=tune.TuneConfig(
                metric="loss", mode="min", max_concurrent_trials=args.concurrency,
                scheduler=tune.schedulers.ASHAScheduler(max_t=MAX_T, grace_period=1,
                                                        reduction_factor=3)),
            run_config=tune.RunConfig(name="asha", storage_path=root, verbose=0),
        ).fit()
        rows = [row for result in grid for row in result.metrics_dataframe.to_dict("records")]
        ray.shutdown()
    emit(summary("ray", begin, rows, target(points)))


def summary(variant: str, begin: float, rows: list[dict[str, Any]], goal: float
            ) -> dict[str, Any]:
    """Time from `begin` to the first row at or below `goal`, the steps trained, and the
    whole sweep's time."""
    reached = [row["at"] for row in rows if row["loss"] <= goal]
    return {"variant": variant, "to_target_s": min(reached) - begin if reached else None,
            "steps": len(rows), "sweep_s": time.time() - begin}


if __name__ == "__main__":
    main()
