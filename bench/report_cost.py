"""What `report()` and a checkpoint cost inside a trial.

8 trials x 500 iterations (flags), 2 at a time, trials in threads, in one process with
one Prefect API, in `--runs` interleaved rounds of four sweeps:
- none: the same work without any report() (the baseline);
- report: report() of {loss, acc} every iteration, no checkpoint;
- report+tensorboard: the same, also writing TensorBoard events (needs tensorboardX or
  tensorboard installed; every other case runs with RunConfig(tensorboard=False));
- every-1 / every-10: plus a 64 KiB checkpoint every iteration / every 10th.
Two views of the cost, both printed:
- per call: each report() timed in the trial, median and 95th percentile over all calls;
- by subtraction: (sweep - none sweep) / reports, the mean cost including everything a
  report brings with it (medians of the rounds).

Run: python bench/report_cost.py [--runs 3] [--trials 8 --iterations 500]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

from common import Workload, burn, median, out_dir_argument, payload, table, write_outputs

#: case -> (checkpoint every k iterations, -1: no report at all; TensorBoard events)
CASES = {"none": (-1, False), "report": (0, False), "report+tensorboard": (0, True),
         "every-1": (1, False), "every-10": (10, False)}


def sweep(workload: Workload, every: int, root: str,
          tensorboard: bool = False) -> tuple[float, list[float]]:
    """Run one sweep; returns its wall time and every report() call's duration."""
    from prefect_tune.flows import TuneConfig, Tuner, grid_search
    from prefect_tune.storage import Checkpoint, CheckpointConfig, RunConfig
    from prefect_tune.tasks import report

    data = payload(workload.checkpoint_kib)
    timings_dir = os.path.join(root, "timings")
    os.makedirs(timings_dir)

    def train(config: dict[str, Any]) -> None:
        spent = []
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "model.bin"), "wb") as handle:
                handle.write(data)
            checkpoint = Checkpoint.from_directory(directory)
            for iteration in range(1, workload.iterations + 1):
                burn(workload.loop)
                if every < 0:
                    continue
                metrics = workload.metrics(config["trial"], iteration)
                with_checkpoint = every > 0 and iteration % every == 0
                tick = time.perf_counter()
                report(metrics, checkpoint=checkpoint if with_checkpoint else None)
                spent.append(time.perf_counter() - tick)
        with open(os.path.join(timings_dir, f"{config['trial']}.json"), "w") as handle:
            json.dump(spent, handle)

    tuner = Tuner(
        train,
        param_space={"trial": grid_search(list(range(workload.trials)))},
        tune_config=TuneConfig(isolation="thread", max_concurrent_trials=workload.concurrency),
        run_config=RunConfig(name="bench", storage_path=os.path.join(root, "storage"),
                             tensorboard=tensorboard, checkpoint_config=CheckpointConfig(
                                 num_to_keep=2, checkpoint_score_attribute="loss",
                                 checkpoint_score_order="min")),
    )
    begin = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - begin
    assert grid.num_terminated == workload.trials, grid.errors
    calls: list[float] = []
    for name in os.listdir(timings_dir):
        with open(os.path.join(timings_dir, name)) as handle:
            calls += json.load(handle)
    return wall, calls


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    out_dir_argument(parser)
    Workload.add_arguments(parser, trials=8, iterations=500)
    args = parser.parse_args()
    workload = Workload.from_args(args)
    walls: dict[str, list[float]] = {case: [] for case in CASES}
    calls: dict[str, list[float]] = {case: [] for case in CASES}
    sweep(workload, -1, tempfile.mkdtemp(prefix="bench-warm-"))  # Prefect start-up, not timed
    for round_ in range(args.runs):
        for case, (every, tensorboard) in CASES.items():
            with tempfile.TemporaryDirectory(prefix="bench-report-") as root:
                wall, spent = sweep(workload, every, root, tensorboard)
            walls[case].append(wall)
            calls[case] += spent
            print(f"round {round_ + 1}/{args.runs} {case}: {wall:.2f} s", flush=True)

    reports = workload.trials * workload.iterations
    base = median(walls["none"])
    rows = []
    figures = {}
    for case, (every, _) in CASES.items():
        if every < 0:
            rows.append([case, median(walls[case]), "", "", ""])
            continue
        subtracted = (median(walls[case]) - base) / reports * 1e6
        per_call = median(calls[case]) * 1e6
        rows.append([case, median(walls[case]), per_call,
                     percentile(calls[case], 0.95) * 1e6, subtracted])
        figures[case] = {"median_us": per_call, "subtracted_mean_us": subtracted}
    markdown = (
        f"report() cost: {workload.trials} trials x {workload.iterations} iterations, "
        f"{workload.concurrency} at a time, {workload.checkpoint_kib} KiB checkpoints, local "
        f"storage; medians of {args.runs} rounds.\n\n"
        + table(["case", "sweep s", "report() median us", "p95 us",
                 "(sweep - none) / reports, us"], rows)
    )
    write_outputs(args.out, "report_cost", {"workload": workload.__dict__, "walls": walls,
                                            "figures": figures}, markdown)


if __name__ == "__main__":
    main()
