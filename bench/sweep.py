"""Sweep wall time of the standard workload, side by side with its baselines.

Every figure is the median of `--runs` whole-process runs (start-up included), the
variants interleaved round by round so drift hits them alike:
- tune-thread / tune-process / tune-spawn: prefect-tune, trials in threads / in processes
  forked from the sweep's warm worker / each in a new interpreter;
- prefect / prefect-pool: bare Prefect, the same tasks writing the same files with plain
  Python I/O and no bookkeeping, on the ThreadPool / ProcessPool task runner;
- python-pool: plain Python with a process pool (the physical floor);
- ray / ray-reuse: Ray Tune with default settings / reuse_actors=True, run by the Python
  of Ray's own virtual environment (`--ray-python`; skipped when it has no Ray);
- startup: an empty Prefect flow, the start-up every Prefect variant pays.
The Prefect variants run against an ephemeral API and against a `prefect server start`.

Run: python bench/sweep.py [--runs 3] [--api ephemeral server] [--trials 32 ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import (
    HERE,
    Workload,
    clean_env,
    emit,
    median,
    out_dir_argument,
    plain_trial,
    prefect_server,
    run_iterations,
    run_process,
    table,
    write_outputs,
)

PREFECT_VARIANTS = ("startup", "prefect", "tune-thread", "prefect-pool", "tune-process",
                    "tune-spawn")
OTHER_VARIANTS = ("python-pool", "ray", "ray-reuse")
DEFAULT_RAY_PYTHON = os.path.join(HERE, ".venv-ray", "bin", "python")


def run_tune(workload: Workload, root: str, isolation: str) -> None:
    from prefect_tune.flows import TuneConfig, Tuner, grid_search
    from prefect_tune.storage import Checkpoint, CheckpointConfig, RunConfig
    from prefect_tune.tasks import report

    def train(config: dict[str, Any]) -> None:
        run_iterations(workload, config["trial"], report, Checkpoint.from_directory)

    tuner = Tuner(
        train,
        param_space={"trial": grid_search(list(range(workload.trials)))},
        tune_config=TuneConfig(metric="loss", mode="min", max_concurrent_trials=workload.concurrency,
                               isolation=isolation),  # type: ignore[arg-type]
        run_config=RunConfig(name="bench", storage_path=root, checkpoint_config=CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")),
    )
    grid = tuner.fit()
    assert grid.num_terminated == workload.trials, grid.errors


def run_bare_prefect(workload: Workload, root: str, pool: bool) -> None:
    from prefect import flow, task
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    runner = (ProcessPoolTaskRunner if pool else ThreadPoolTaskRunner)(
        max_workers=workload.concurrency)
    trial_task = task(plain_trial)

    @flow(task_runner=runner)
    def bare_sweep() -> list[dict[str, float]]:
        futures = [trial_task.submit(i, root, workload) for i in range(workload.trials)]
        return [f.result() for f in futures]

    assert len(bare_sweep()) == workload.trials


def run_empty_flow() -> None:
    from prefect import flow

    @flow
    def empty() -> int:
        return 0

    assert empty() == 0


def run_python_pool(workload: Workload, root: str) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workload.concurrency) as pool:
        results = pool.starmap(plain_trial, [(i, root, workload) for i in range(workload.trials)])
    assert len(results) == workload.trials


def measure(variant: str, workload: Workload) -> None:
    """Run one variant in this process and emit its timings."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as root:
        begin = time.perf_counter()
        if variant == "startup":
            run_empty_flow()
        elif variant in ("prefect", "prefect-pool"):
            run_bare_prefect(workload, root, pool=variant == "prefect-pool")
        elif variant in ("tune-thread", "tune-process", "tune-spawn"):
            run_tune(workload, root, variant.removeprefix("tune-"))
        elif variant == "python-pool":
            run_python_pool(workload, root)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        emit({"variant": variant, "sweep_s": time.perf_counter() - begin})


def ray_available(python: str) -> bool:
    if not os.path.exists(python):
        return False
    found = subprocess.run([python, "-c", "import ray.tune"], capture_output=True, check=False)
    return found.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--api", nargs="+", choices=("ephemeral", "server"),
                        default=["ephemeral", "server"])
    parser.add_argument("--variants", nargs="+", choices=PREFECT_VARIANTS + OTHER_VARIANTS,
                        default=list(PREFECT_VARIANTS + OTHER_VARIANTS))
    parser.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measured run
    out_dir_argument(parser)
    Workload.add_arguments(parser)
    args = parser.parse_args()
    workload = Workload.from_args(args)
    if args.measure:
        measure(args.measure, workload)
        return

    variants = list(args.variants)
    if {"ray", "ray-reuse"} & set(variants) and not ray_available(args.ray_python):
        print(f"Ray Tune skipped: no Ray at {args.ray_python} (see bench/README.md)")
        variants = [v for v in variants if not v.startswith("ray")]
    samples: dict[str, list[dict[str, Any]]] = {}
    for api in args.api:
        if api == "server":
            with prefect_server() as url:
                collect(samples, api, variants, workload, args, clean_env(PREFECT_API_URL=url))
        else:
            collect(samples, api, variants, workload, args, clean_env())
    report(samples, workload, args)


def collect(samples: dict[str, list[dict[str, Any]]], api: str, variants: list[str],
            workload: Workload, args: argparse.Namespace, env: dict[str, str]) -> None:
    """Append `args.runs` rounds of every variant (Ray's and plain Python's only once),
    after one untimed run that creates the Prefect database."""
    run_process([sys.executable, __file__, "--measure", "startup"], env)
    for round_ in range(args.runs):
        for variant in variants:
            if variant not in PREFECT_VARIANTS and api != args.api[0]:
                continue
            key = f"{variant}@{api}" if variant in PREFECT_VARIANTS else variant
            if variant.startswith("ray"):
                argv = [args.ray_python, os.path.join(HERE, "ray_sweep.py"),
                        *workload.argv(), *(["--reuse-actors"] if variant == "ray-reuse" else [])]
            else:
                argv = [sys.executable, __file__, "--measure", variant, *workload.argv()]
            result = run_process(argv, env)
            samples.setdefault(key, []).append(result)
            print(f"round {round_ + 1}/{args.runs} {key}: {result['process_s']:.2f} s", flush=True)


def report(samples: dict[str, list[dict[str, Any]]], workload: Workload,
           args: argparse.Namespace) -> None:
    wall = {key: median([s["process_s"] for s in runs]) for key, runs in samples.items()}
    inner = {key: median([s["sweep_s"] for s in runs]) for key, runs in samples.items()}
    rows = []
    for key in samples:
        variant, _, api = key.partition("@")
        base = {"tune-thread": "prefect", "tune-process": "prefect-pool",
                "tune-spawn": "prefect-pool"}.get(variant)
        threads = wall.get(f"tune-thread@{api}")
        startup = wall.get(f"startup@{api}") if api else None
        rows.append([
            key, wall[key], inner[key],
            f"{startup / wall[key]:.0%}" if startup and variant != "startup" else "",
            f"{wall[key] / wall[f'{base}@{api}']:.3f}" if base and f"{base}@{api}" in wall else "",
            f"{wall[key] / threads:.3f}" if threads and variant in ("tune-process", "tune-spawn")
            else "",
            *(f"{wall[r] / wall[key]:.2f}x" if r in wall and variant.startswith("tune") else ""
              for r in ("ray", "ray-reuse")),
        ])
    markdown = (
        f"Standard sweep: {workload.trials} trials x {workload.iterations} iterations, "
        f"{workload.checkpoint_kib} KiB checkpoint every {workload.every}, "
        f"{workload.concurrency} at a time; medians of {args.runs} whole-process runs.\n\n"
        + table(["variant@api", "process s", "sweep call s", "start-up share",
                 "vs bare Prefect", "vs tune-thread", "faster than Ray",
                 "faster than Ray reuse"], rows)
    )
    write_outputs(args.out, "sweep", {"workload": workload.__dict__, "runs": samples,
                                      "median_process_s": wall}, markdown)


if __name__ == "__main__":
    main()
