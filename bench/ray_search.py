"""`search.py`'s problems on Ray Tune's OptunaSearch, for the comparison: run by the
Python of Ray's own virtual environment (see bench/README.md)."""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from typing import Any

from common import emit
from functions import PROBLEMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problem", required=True, choices=list(PROBLEMS))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    function, space, _ = PROBLEMS[args.problem]

    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def objective(config: dict[str, Any]) -> None:
        tune.report({"value": function(config), "at": time.time()})

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ray-search-") as root:
        ray.init(include_dashboard=False, log_to_driver=False)
        grid = tune.Tuner(
            objective, param_space={name: tune.uniform(low, high) for name, low, high in space},
            tune_config=tune.TuneConfig(
                metric="value", mode="min", num_samples=args.trials, max_concurrent_trials=1,
                search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(seed=args.seed))),
            run_config=tune.RunConfig(name="search", storage_path=root, verbose=0),
        ).fit()
        best = min(r.metrics["value"] for r in grid)
        stamps = sorted(r.metrics["at"] for r in grid)
        ray.shutdown()
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    emit({"variant": "ray", "best": best, "wall_s": time.perf_counter() - begin,
          "trial_ms": 1000 * gaps[len(gaps) // 2]})


if __name__ == "__main__":
    main()
