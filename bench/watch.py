"""What watching a sweep costs: the standard workload (`common.Workload`, trials in
processes) as a sweep runs it by default ("watched": the watcher thread that reads
running trials' rows for the progress log, Prefect events and callbacks, and a card on
each trial's task run), with the live table drawn as on a terminal ("live": a
120-column terminal console writing to /dev/null at 4 redraws a second), without the
cards ("no cards"), against the same sweep with the watcher replaced by one that does
nothing and no cards ("unwatched"); each a whole process, interleaved run by run, on a running
`prefect server start`. "sweep s" runs from `fit()` to the end of the sweep
inside its flow run; "fit s" to `fit()`'s return, which Prefect quantises to whole
seconds (its flow-run heartbeat, see README.md).

Run: python bench/watch.py [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

from common import (
    Workload,
    clean_env,
    emit,
    median,
    out_dir_argument,
    prefect_server,
    run_process,
    table,
    write_outputs,
)
from sweep import run_tune

VARIANTS = ("watched", "live", "no cards", "unwatched")


class Unwatched:
    """A watcher that watches nothing."""

    running = 0

    def __init__(self, *args: Any) -> None:
        pass

    def started(self, trial: Any) -> None:
        pass

    def ended(self, outcome: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def finish(self, results: Any) -> None:
        pass


def measure(variant: str, workload: Workload) -> None:
    import contextlib
    import os

    from rich.console import Console

    from prefect_tune.flows import engine, tuner
    from prefect_tune.tasks import trial

    if variant == "unwatched":
        engine.Watcher = Unwatched  # type: ignore[assignment, misc]
    if variant in ("unwatched", "no cards"):
        engine.posting = lambda flow_run: contextlib.nullcontext()  # type: ignore[assignment]
        trial.post_card = lambda *args, **kwargs: None
    if variant == "live":
        terminal = open(os.devnull, "w")  # noqa: SIM115 - open for the whole process
        engine.Console = lambda stderr: Console(  # type: ignore[assignment, misc]
            file=terminal, force_terminal=True, width=120)
    ended: list[float] = []
    run_sweep = tuner.run_sweep

    def timed(plan: Any) -> Any:
        try:
            return run_sweep(plan)
        finally:
            ended.append(time.perf_counter())

    tuner.run_sweep = timed  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as root:
        begin = time.perf_counter()
        run_tune(workload, root, "process")
        emit({"variant": variant, "sweep_s": ended[0] - begin,
              "fit_s": time.perf_counter() - begin})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    Workload.add_arguments(parser)
    out_dir_argument(parser)
    args = parser.parse_args()
    workload = Workload.from_args(args)
    if args.measure:
        measure(args.measure, workload)
        return
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with prefect_server() as url:
        env = clean_env(PREFECT_API_URL=url)
        run_process([sys.executable, __file__, "--measure", "unwatched", "--trials", "2",
                     "--iterations", "2"], env)  # warms the server up
        for run in range(args.runs):
            for variant in VARIANTS:
                result = run_process([sys.executable, __file__, "--measure", variant,
                                      *workload.argv()], env)
                samples[variant].append(result)
                print(f"run {run + 1} {variant}: sweep {result['sweep_s']:.2f} s, fit "
                      f"{result['fit_s']:.2f} s", flush=True)
    sweep = {v: median([r["sweep_s"] for r in runs]) for v, runs in samples.items()}
    fit = {v: median([r["fit_s"] for r in runs]) for v, runs in samples.items()}
    markdown = (
        f"Watching a sweep: {workload.trials} trials x {workload.iterations} iterations, "
        f"{workload.concurrency} at a time, in processes, on a running server; medians of "
        f"{args.runs} runs.\n\n"
        + table(["variant", "sweep s", "vs unwatched", "fit s"],
                [[v, sweep[v], f"{sweep[v] / sweep['unwatched']:.3f}", fit[v]]
                 for v in VARIANTS]))
    write_outputs(args.out, "watch", {"runs": samples}, markdown)


if __name__ == "__main__":
    main()
