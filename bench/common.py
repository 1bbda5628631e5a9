"""What every benchmark shares: the standard workload, whole-process runs, a Prefect
server, and the output files (JSON, markdown).

Standard library only: Ray Tune's virtual environment imports this module too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
#: Loop length of one iteration's CPU work: ~2 ms of pure Python on the reference machine.
LOOP = 45_000


def burn(loop: int = LOOP) -> int:
    """Deterministic pure-Python CPU work (a loop, not a sleep)."""
    x = 0
    for i in range(loop):
        x = (x * 31 + i) % 1_000_003
    return x


def payload(kib: int) -> bytes:
    """`kib` KiB of fixed bytes: every run writes the same data."""
    return bytes(range(256)) * (4 * kib)


@dataclass(frozen=True)
class Workload:
    """The standard workload by default: 32 trials x 20 iterations, a 64 KiB checkpoint
    every iteration, num_to_keep=2 by loss, 2 trials at a time."""

    trials: int = 32
    iterations: int = 20
    checkpoint_kib: int = 64
    every: int = 1  # checkpoint every k iterations; 0: never
    concurrency: int = 2
    loop: int = LOOP  # CPU work per iteration; 0: none

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, **defaults: int) -> None:
        for field in fields(Workload):
            default = defaults.get(field.name, field.default)
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=default)

    @staticmethod
    def from_args(args: argparse.Namespace) -> Workload:
        return Workload(**{f.name: getattr(args, f.name) for f in fields(Workload)})

    def argv(self) -> list[str]:
        return [part for name, value in asdict(self).items()
                for part in (f"--{name.replace('_', '-')}", str(value))]

    def checkpoints_at(self, iteration: int) -> bool:
        """Whether 1-based `iteration` reports a checkpoint."""
        return self.every > 0 and iteration % self.every == 0

    def metrics(self, trial: int, iteration: int) -> dict[str, float]:
        return {"loss": 1.0 / (iteration + trial), "acc": iteration / (iteration + trial + 1)}


def run_process(argv: Sequence[str], env: dict[str, str] | None = None,
                timeout: float = 1800) -> dict[str, Any]:
    """Run one whole process; returns the JSON object it printed last, plus its wall time
    from spawn to exit as "process_s"."""
    begin = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    wall = time.perf_counter() - begin
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(argv)} printed no JSON result:\n{done.stdout[-2000:]}")
    return {**json.loads(lines[-1]), "process_s": wall}


def emit(result: dict[str, Any]) -> None:
    """The last line a measured process prints: what `run_process` returns."""
    print(json.dumps(result), flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a measured process: no developer Prefect profile, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bench-prefect-home-")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def prefect_server() -> Iterator[str]:
    """A `prefect server start` on 127.0.0.1 with its own home; yields its API URL."""
    port = _free_port()
    env = clean_env(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    log = open(os.path.join(env["PREFECT_HOME"], "server.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_http(f"{url}/health", proc, f"prefect server (see {log.name})")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@contextmanager
def ray_cluster(ray_python: str, cpus: int) -> Iterator[str]:
    """A local Ray cluster (`ray start --head`) from Ray's environment; yields its
    address for `RAY_ADDRESS` ("auto": Ray binds its head to the host's address, whatever
    `--node-ip-address` says, and `auto` finds it)."""
    ray = os.path.join(os.path.dirname(ray_python), "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray, "start", "--head", f"--num-cpus={cpus}", "--include-dashboard=false",
                    "--disable-usage-stats"],
                   env=env, check=True, capture_output=True)
    try:
        yield "auto"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, check=True, capture_output=True)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_outputs(out_dir: str, name: str, data: dict[str, Any], markdown: str) -> None:
    """`<name>.json` (every figure and the machine) and `<name>.md` in `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as handle:
        json.dump({"machine": machine(), **data}, handle, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as handle:
        handle.write(markdown + "\n")
    print(markdown)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats get 3 significant figures."""
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def out_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.path.join(HERE, "out"),
                        help="where the JSON and markdown go (default: bench/out)")


def run_iterations(workload: Workload, trial: int, report: Any,
                   checkpoint_from_directory: Any) -> None:
    """The workload's iterations inside a tuning library's trial: `report(metrics)`, or
    `report(metrics, checkpoint=...)` with a fresh directory holding the checkpoint file."""
    data = payload(workload.checkpoint_kib)
    for iteration in range(1, workload.iterations + 1):
        burn(workload.loop)
        metrics = workload.metrics(trial, iteration)
        if not workload.checkpoints_at(iteration):
            report(metrics)
            continue
        with tempfile.TemporaryDirectory() as directory:
            with open(os.path.join(directory, "model.bin"), "wb") as handle:
                handle.write(data)
            report(metrics, checkpoint=checkpoint_from_directory(directory))


def wait_for_http(url: str, proc: subprocess.Popen[Any], what: str, timeout: float = 120) -> None:
    """Poll `url` until it answers; fail if `proc` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


def plain_trial(trial: int, root: str, workload: Workload) -> dict[str, float]:
    """One trial of the workload with plain Python I/O and no bookkeeping: the rows go to
    result.json, each checkpoint to checkpoint_NNNNNN/model.bin, nothing is deleted."""
    trial_dir = os.path.join(root, f"trial_{trial:05d}")
    os.makedirs(trial_dir, exist_ok=True)
    data = payload(workload.checkpoint_kib)
    metrics: dict[str, float] = {}
    with open(os.path.join(trial_dir, "result.json"), "a") as log:
        for iteration in range(1, workload.iterations + 1):
            burn(workload.loop)
            metrics = workload.metrics(trial, iteration)
            if workload.checkpoints_at(iteration):
                checkpoint = os.path.join(trial_dir, f"checkpoint_{iteration:06d}")
                os.makedirs(checkpoint)
                with open(os.path.join(checkpoint, "model.bin"), "wb") as handle:
                    handle.write(data)
            log.write(json.dumps({**metrics, "training_iteration": iteration}) + "\n")
            log.flush()
    return metrics


def target_table(samples: dict[str, list[dict[str, Any]]]) -> str:
    """The time-to-target table of `samples` (runs by variant, each with to_target_s,
    steps, sweep_s): medians, and each variant against "ray"'s time. A variant that
    missed the target in some runs shows how many runs reached it."""
    def reached(runs: list[dict[str, Any]]) -> float | None:
        hits = [s["to_target_s"] for s in runs if s["to_target_s"] is not None]
        return median(hits) if hits and len(hits) == len(runs) else None

    ray = reached(samples["ray"]) if "ray" in samples else None
    rows = []
    for variant, runs in samples.items():
        to_target = reached(runs)
        hits = sum(s["to_target_s"] is not None for s in runs)
        rows.append([variant, to_target if to_target is not None else f"{hits}/{len(runs)}",
                     median([s["steps"] for s in runs]), median([s["sweep_s"] for s in runs]),
                     f"{to_target / ray:.2f}" if ray and to_target is not None else ""])
    return table(["variant", "to target s", "steps trained", "sweep s", "vs Ray"], rows)


def run_seeds(seeds: Sequence[int], variants: Sequence[str],
              argv_of: Callable[[str], list[str]], flags: list[str],
              env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Run `argv_of(variant) + --seed N + flags` for every seed and variant, variants
    interleaved seed by seed; the time-to-target results, by variant."""
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for seed in seeds:
        for variant in variants:
            result = run_process([*argv_of(variant), "--seed", str(seed), *flags], env)
            samples[variant].append(result)
            print(f"seed {seed} {variant}: target at {result['to_target_s']} s, "
                  f"{result['steps']} steps, sweep {result['sweep_s']:.1f} s", flush=True)
    return samples
