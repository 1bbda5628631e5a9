"""Start overhead of a trial attempt when the trainable's module imports prefect and
pandas: from the attempt's start in the trial task to its process being ready to run the
trainable, as each attempt logs it; and the wall time of a sweep of such trials.

Variants, interleaved round by round, each a whole process on Prefect's ephemeral API:
- process: isolation="process", each attempt forked from the sweep's warm worker;
- spawn: isolation="spawn", each attempt a new interpreter (the baseline: what every
  attempt paid before warm workers);
- thread: isolation="thread", no process at all (the floor for the sweep's wall time).

Run: python bench/startup.py [--runs 3] [--trials 20] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
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

VARIANTS = ("thread", "spawn", "process")
STARTED = re.compile(r"attempt (\d+): its process started in (\d+) ms")


class Starts(logging.Handler):
    """Collects the milliseconds of every "its process started in" log line."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = STARTED.search(record.getMessage())
        if found:
            self.ms.append(int(found[2]))


def measure(variant: str, trials: int, concurrency: int) -> None:
    sys.path.insert(0, HERE)
    from heavy_trainable import train

    from prefect_tune.flows import TuneConfig, Tuner, grid_search
    from prefect_tune.storage import RunConfig

    starts = Starts()
    logging.getLogger("prefect.task_runs").addHandler(starts)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as root:
        begin = time.perf_counter()
        grid = Tuner(
            train, param_space={"trial": grid_search(list(range(trials)))},
            tune_config=TuneConfig(max_concurrent_trials=concurrency, isolation=variant,
                                   tag_trials=False),  # type: ignore[arg-type]
            run_config=RunConfig(name="startup", storage_path=root),
        ).fit()
        elapsed = time.perf_counter() - begin
    assert grid.num_terminated == trials, grid.errors
    emit({"variant": variant, "sweep_s": elapsed, "starts_ms": sorted(starts.ms)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    out_dir_argument(parser)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.trials, args.concurrency)
        return
    env = clean_env(PREFECT_LOGGING_LEVEL="INFO")
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    run_process([sys.executable, __file__, "--measure", "thread", "--trials", "1"], env)
    for round_ in range(args.runs):
        for variant in VARIANTS:
            result = run_process([sys.executable, __file__, "--measure", variant,
                                  "--trials", str(args.trials),
                                  "--concurrency", str(args.concurrency)], env)
            samples[variant].append(result)
            print(f"round {round_ + 1}/{args.runs} {variant}: {result['sweep_s']:.2f} s",
                  flush=True)
    report(samples, args)


def report(samples: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    sweep = {v: median([s["sweep_s"] for s in runs]) for v, runs in samples.items()}
    rows = []
    for variant, runs in samples.items():
        starts = [ms for s in runs for ms in s["starts_ms"]]
        rows.append([
            variant,
            f"{statistics.median(starts):.0f}" if starts else "",
            f"{statistics.mean(starts):.0f}" if starts else "",
            f"{max(starts)}" if starts else "",
            sweep[variant], f"{sweep[variant] / sweep['thread']:.3f}",
        ])
    markdown = (
        f"Trial start with a trainable module importing prefect and pandas: {args.trials} "
        f"one-report trials, {args.concurrency} at a time, ephemeral API; medians of "
        f"{args.runs} whole-process runs.\n\n"
        + table(["isolation", "start ms, median", "start ms, mean", "start ms, max",
                 "sweep s", "sweep vs thread"], rows)
        + "\n\nThe first attempts of a sweep with warm workers wait for its warm worker to "
        "import the module: they make the maximum, and are in the mean."
    )
    write_outputs(args.out, "startup", {"runs": samples, "median_sweep_s": sweep}, markdown)


if __name__ == "__main__":
    main()
