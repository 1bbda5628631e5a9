"""What a metric name new in every report costs, against a fixed name, in the same run.

One trial (in a thread, local storage, TensorBoard events off) reports `--reports` rows:
- fixed: {"loss": x} every time (the baseline);
- new-name: {f"m{i}": x}, a name never seen before in every report, as per-layer or
  per-class metrics do; progress.csv ends `--reports` + 4 columns wide.
Printed per case: the report() calls (median, p95, total) and the trial's whole time
(reports plus closing its files), medians of `--runs` interleaved rounds, and the ratio
new-name / fixed.

Run: python bench/metric_names.py [--reports 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from common import median, out_dir_argument, table, write_outputs

CASES = ("fixed", "new-name")


def sweep(case: str, reports: int, root: str) -> tuple[float, list[float]]:
    """Run one trial; returns the sweep's trial time (first report to files closed, as
    the trial task measured it) and every report() call's duration."""
    from prefect_tune.flows import TuneConfig, Tuner
    from prefect_tune.storage import RunConfig
    from prefect_tune.tasks import report

    calls: list[float] = []
    spans: list[float] = []

    def train(config: dict[str, Any]) -> None:
        spans.append(time.time())  # compared with file modification times
        for i in range(reports):
            metrics = {"loss": float(i)} if case == "fixed" else {f"m{i}": float(i)}
            tick = time.perf_counter()
            report(metrics)
            calls.append(time.perf_counter() - tick)

    grid = Tuner(train, tune_config=TuneConfig(isolation="thread"),
                 run_config=RunConfig(name=case, storage_path=root, tensorboard=False)).fit()
    assert grid.num_terminated == 1, grid.errors
    trial = grid[0].path
    done = max(os.path.getmtime(os.path.join(trial, name))
               for name in ("result.json", "progress.csv"))
    with open(os.path.join(trial, "progress.csv")) as handle:
        width = len(handle.readline().split(","))
    assert width == (5 if case == "fixed" else reports + 4), width
    return done - spans[0], calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    out_dir_argument(parser)
    args = parser.parse_args()
    trial: dict[str, list[float]] = {case: [] for case in CASES}
    calls: dict[str, list[list[float]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="bench-names-") as root:
        for run in range(args.runs):
            for case in CASES:
                spent, durations = sweep(case, args.reports, os.path.join(root, str(run)))
                trial[case].append(spent)
                calls[case].append(durations)
                print(f"round {run + 1}/{args.runs} {case}: trial {spent:.2f} s", flush=True)
    rows, figures = [], {}
    for case in CASES:
        every = sorted(d for durations in calls[case] for d in durations)
        figures[case] = {
            "trial_s": median(trial[case]),
            "calls_total_s": median([sum(d) for d in calls[case]]),
            "call_median_us": every[len(every) // 2] * 1e6,
            "call_p95_us": every[int(len(every) * 0.95)] * 1e6,
        }
    base = figures["fixed"]
    for case in CASES:
        f = figures[case]
        rows.append([case, f["call_median_us"], f["call_p95_us"], f["calls_total_s"],
                     f["trial_s"], f["trial_s"] / base["trial_s"]])
    markdown = (
        f"A new metric name in each of {args.reports} reports against a fixed name; one "
        f"trial, local storage, medians of {args.runs} rounds.\n\n"
        + table(["case", "report() median us", "p95 us", "reports total s", "trial s",
                 "trial / fixed"], rows)
    )
    write_outputs(args.out, "metric_names", {"reports": args.reports, "figures": figures},
                  markdown)


if __name__ == "__main__":
    main()
