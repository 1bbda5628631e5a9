"""Search quality and cost of OptunaSearch, side by side with Ray Tune's OptunaSearch and
with plain Optuna (`study.optimize`): Branin and Hartmann-6, TPE seeded alike, one
trial at a time, `--trials` trials per run.

Variants, each a whole process, interleaved seed by seed:
- optuna: `study.optimize` with TPESampler(seed), the baseline of search quality;
- tune: prefect-tune's OptunaSearch(seed) through Tuner.fit (trials in processes forked
  from the warm worker, Prefect's ephemeral API);
- ray: Ray Tune 2.60's OptunaSearch with TPESampler(seed), by the Python of Ray's
  environment.
Each reports the best value found, the wall time (start-up included) and the time per
trial once running (the median gap between consecutive trials' reports); `tune` and
`optuna` also the time spent asking and telling per trial (for `tune`: the sweep's whole
path from a free slot to a started trial and back, the trial's record in storage
included).

Run: python bench/search.py [--seeds 1 2 3] [--trials 50] [--ray-python PATH]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from typing import Any

from common import (
    HERE,
    clean_env,
    emit,
    median,
    out_dir_argument,
    run_process,
    table,
    write_outputs,
)
from functions import PROBLEMS

VARIANTS = ("optuna", "tune", "ray")
DEFAULT_RAY_PYTHON = os.path.join(HERE, ".venv-ray", "bin", "python")


def plain(problem: str, seed: int, trials: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    function, space, _ = PROBLEMS[problem]
    spent = 0.0
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    distributions = {name: optuna.distributions.FloatDistribution(low, high)
                     for name, low, high in space}
    begin, stamps = time.perf_counter(), []
    for _ in range(trials):
        asked = time.perf_counter()
        trial = study.ask(distributions)
        spent += time.perf_counter() - asked
        value = function(trial.params)
        stamps.append(time.time())
        told = time.perf_counter()
        study.tell(trial, value)
        spent += time.perf_counter() - told
    return {"best": study.best_value, "wall_s": time.perf_counter() - begin,
            "trial_ms": gap_ms(stamps), "search_ms": 1000 * spent / trials}


def tune(problem: str, seed: int, trials: int) -> dict[str, Any]:
    from prefect_tune.flows import OptunaSearch, TuneConfig, Tuner, suggest, uniform
    from prefect_tune.storage import RunConfig
    from prefect_tune.tasks import report

    function, space, _ = PROBLEMS[problem]
    spent = [0.0]

    def timed(method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - begin
        return wrapper

    suggest.Suggestions.next = timed(suggest.Suggestions.next)  # type: ignore[method-assign]
    suggest.Suggestions.ended = timed(suggest.Suggestions.ended)  # type: ignore[method-assign]

    def objective(config: dict[str, Any]) -> None:
        report({"value": function(config), "at": time.time()})

    with tempfile.TemporaryDirectory(prefix="bench-search-") as root:
        begin = time.perf_counter()
        grid = Tuner(
            objective, param_space={name: uniform(low, high) for name, low, high in space},
            tune_config=TuneConfig(metric="value", mode="min", num_samples=trials,
                                   max_concurrent_trials=1, tag_trials=False,
                                   search_alg=OptunaSearch(seed=seed)),
            run_config=RunConfig(name="search", storage_path=root),
        ).fit()
        wall = time.perf_counter() - begin
    return {"best": min(r.metrics["value"] for r in grid), "wall_s": wall,
            "trial_ms": gap_ms([r.metrics["at"] for r in grid]),
            "search_ms": 1000 * spent[0] / trials}


def gap_ms(stamps: list[float]) -> float:
    """The median time between consecutive trials' reports, in ms."""
    ordered = sorted(stamps)
    return 1000 * median([b - a for a, b in itertools.pairwise(ordered)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--problem", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    out_dir_argument(parser)
    args = parser.parse_args()
    if args.measure:
        run = plain if args.measure == "optuna" else tune
        emit({"variant": args.measure, **run(args.problem, args.seed, args.trials)})
        return
    variants = list(args.variants)
    if "ray" in variants and not os.path.exists(args.ray_python):
        print(f"Ray Tune skipped: no Ray at {args.ray_python} (see bench/README.md)")
        variants.remove("ray")
    env = clean_env()
    if "tune" in variants:  # creates the Prefect database, outside the measured runs
        run_process([sys.executable, __file__, "--measure", "tune", "--problem", "branin",
                     "--seed", "0", "--trials", "2"], env)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for problem in args.problems:
        for seed in args.seeds:
            for variant in variants:
                argv = ([args.ray_python, os.path.join(HERE, "ray_search.py")]
                        if variant == "ray" else [sys.executable, __file__, "--measure", variant])
                result = run_process([*argv, "--problem", problem, "--seed", str(seed),
                                      "--trials", str(args.trials)], env)
                samples.setdefault(problem, {}).setdefault(variant, []).append(result)
                print(f"{problem} seed {seed} {variant}: best {result['best']:.5f}, "
                      f"{result['wall_s']:.1f} s", flush=True)
    report(samples, args)


def report(samples: dict[str, dict[str, list[dict[str, Any]]]], args: argparse.Namespace
           ) -> None:
    rows = []
    for problem, variants in samples.items():
        minimum = PROBLEMS[problem][2]
        for variant, runs in variants.items():
            search = [r["search_ms"] for r in runs if "search_ms" in r]
            rows.append([problem, variant, median([r["best"] - minimum for r in runs]),
                         " / ".join(f"{r['best'] - minimum:.4f}" for r in runs),
                         median([r["wall_s"] for r in runs]),
                         median([r["trial_ms"] for r in runs]),
                         median(search) if search else ""])
    markdown = (
        f"Search: TPE, {args.trials} trials one at a time, seeds {args.seeds}; regret is "
        "the best value found minus the known minimum (medians, then each seed's).\n\n"
        + table(["problem", "variant", "median regret", "regret by seed", "wall s",
                 "ms per trial (running)", "ask+tell ms per trial"], rows))
    write_outputs(args.out, "search", {"runs": samples}, markdown)


if __name__ == "__main__":
    main()
