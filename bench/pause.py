"""What schedulers cost a trial: the latency of a pause and its resume, and `report()`.

- pause: one trial of 128 steps under ASHAScheduler(promotion=True, grace_period=1,
  reduction_factor=2, max_t=128), which pauses it at steps 1, 2, 4, ... 64 and (no other
  trial competing) resumes it at once. Each pause and resume shows as the gap between
  the timestamps of the rows on either side of it; the baseline is the median gap
  between the rows of one segment. Process and thread isolation.
- report: 500 reports of one trial, each call timed inside the trainable, with no
  scheduler, ASHAScheduler (storage touched at its rungs only) and MedianStoppingRule
  (a listing and an empty write at every report); thread isolation, local storage, 4
  trials so that the median rule has others to compare with.

Run: python bench/pause.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any

from common import clean_env, emit, median, out_dir_argument, run_process, table, write_outputs

STEPS, REPORTS = 128, 500
MILESTONES = [2 ** k for k in range(7)]


def measure_pause(isolation: str) -> None:
    from prefect_tune.flows import ASHAScheduler, TuneConfig, Tuner
    from prefect_tune.storage import Checkpoint, RunConfig
    from prefect_tune.tasks import get_checkpoint, report

    def train(config: dict[str, Any]) -> None:
        checkpoint = get_checkpoint()
        for step in range((checkpoint.to_dict()["step"] if checkpoint else 0) + 1, STEPS + 1):
            report({"loss": 1 / step}, checkpoint=Checkpoint.from_dict({"step": step}))

    with tempfile.TemporaryDirectory(prefix="bench-pause-") as root:
        grid = Tuner(train, tune_config=TuneConfig(
            metric="loss", mode="min", isolation=isolation,  # type: ignore[arg-type]
            scheduler=ASHAScheduler(max_t=STEPS, grace_period=1, reduction_factor=2,
                                    promotion=True)),
            run_config=RunConfig(name="pause", storage_path=root)).fit()
        stamps = grid[0].metrics_dataframe["timestamp"].tolist()
    gaps = {step: stamps[step] - stamps[step - 1] for step in range(1, STEPS)}  # after step
    pauses = [gaps[m] for m in MILESTONES]
    steady = [g for step, g in gaps.items() if step not in MILESTONES]
    emit({"variant": f"pause-{isolation}", "pause_gaps_s": pauses,
          "steady_gap_s": statistics.median(steady)})


def measure_report(scheduler_name: str) -> None:
    from prefect_tune.flows import ASHAScheduler, MedianStoppingRule, TuneConfig, Tuner, grid_search
    from prefect_tune.storage import RunConfig
    from prefect_tune.tasks import report

    def train(config: dict[str, Any]) -> dict[str, float]:
        calls = []
        for step in range(1, REPORTS):
            begin = time.perf_counter()
            report({"loss": 1 / step + config["i"] * 1e-6})  # never stopped: the best...
            calls.append(time.perf_counter() - begin)
        return {"loss": 0.0, "median_s": statistics.median(calls),
                "p95_s": statistics.quantiles(calls, n=20)[-1]}

    scheduler = {"none": None,
                 "asha": ASHAScheduler(max_t=REPORTS + 1, reduction_factor=2),
                 "median": MedianStoppingRule(min_samples_required=1)}[scheduler_name]
    with tempfile.TemporaryDirectory(prefix="bench-report-") as root:
        grid = Tuner(train, param_space={"i": grid_search([0, 0, 0, 0])},
                     tune_config=TuneConfig(metric="loss", mode="min", isolation="thread",
                                            scheduler=scheduler, max_concurrent_trials=4),
                     run_config=RunConfig(name="report", storage_path=root)).fit()
    emit({"variant": f"report-{scheduler_name}",
          "median_s": statistics.median(r.metrics["median_s"] for r in grid),
          "p95_s": statistics.median(r.metrics["p95_s"] for r in grid)})


VARIANTS = ("pause-process", "pause-thread", "report-none", "report-asha", "report-median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    out_dir_argument(parser)
    args = parser.parse_args()
    if args.measure:
        kind, _, what = args.measure.partition("-")
        (measure_pause if kind == "pause" else measure_report)(what)
        return
    env = clean_env()
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for round_ in range(args.runs):
        for variant in VARIANTS:
            samples[variant].append(run_process([sys.executable, __file__, "--measure",
                                                 variant], env))
            print(f"round {round_ + 1}/{args.runs} {variant}", flush=True)
    rows = []
    for variant in VARIANTS[:2]:
        runs = samples[variant]
        gaps = [g for s in runs for g in s["pause_gaps_s"]]
        steady = median([s["steady_gap_s"] for s in runs])
        rows.append([variant, f"{statistics.median(gaps) * 1000:.0f} ms",
                     f"{steady * 1000:.1f} ms",
                     f"{(statistics.median(gaps) - steady) * 1000:.0f} ms"])
    pause = table(["isolation", "gap across a pause (median)", "gap between reports",
                   "pause + resume costs"], rows)
    base = median([s["median_s"] for s in samples["report-none"]])
    rows = [[v.removeprefix("report-"), f"{median([s['median_s'] for s in samples[v]]) * 1e6:.0f} us",
             f"{median([s['p95_s'] for s in samples[v]]) * 1e6:.0f} us",
             f"{median([s['median_s'] for s in samples[v]]) / base:.2f}"]
            for v in VARIANTS[2:]]
    markdown = (
        f"Pause and resume: one trial of {STEPS} steps paused at {MILESTONES}; medians of "
        f"{args.runs} runs.\n\n{pause}\n\n`report()` without a checkpoint, {REPORTS} calls "
        "in each of 4 trials in threads, local storage:\n\n"
        + table(["scheduler", "per call (median)", "p95", "vs none"], rows)
    )
    write_outputs(args.out, "pause", {"runs": samples}, markdown)


if __name__ == "__main__":
    main()
