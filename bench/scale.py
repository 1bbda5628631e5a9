"""Scale: sweeps of 100, 1,000 and 10,000 tiny trials, and what experiment state costs.

Each size runs in its own process (so peak memory is that sweep's): `Tuner.fit()` on local
storage against an ephemeral Prefect API, trials in threads, 4 at a time, untagged (as
the README advises for many short trials: a tag costs an API round trip per trial, which
waits behind the server's event processing and made these figures vary by 2x from run to
run); a trial reports once, with a small checkpoint. Per size:
- wall time of the sweep call; the ratio to the size before shows whether time grows
  linearly (10,000 / 1,000 <= 11);
- state: thread CPU time of the experiment state writes (experiment.json once, trial.json
  at each trial's start and end) as a share of wall time, and bytes per trial event
  (must stay flat as the sweep grows);
- baseline: the same sweep with the state writes switched off, in a process of its own
  (`--no-baseline` skips it); "wall ratio" is with / without;
- snapshot share: what one whole-experiment snapshot per event would cost instead
  (Ray's way), estimated from 50 evenly spaced snapshot writes;
- peak RSS of the process (it holds the Prefect client, the trials' futures and outcomes);
- the time `Tuner.restore()` + `get_results()` takes to load the experiment.
A PNG of wall time, state time and memory against trials goes beside the JSON.

Run: python bench/scale.py [--sizes 100 1000 10000] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from common import median, out_dir_argument, run_process, table, write_outputs

SPENT = {"seconds": 0.0, "bytes": 0, "events": 0}
SWITCHED_OFF = {"state": False}


def instrument() -> None:
    """Time the store's state writes; the switch turns trial.json writes into no-ops."""
    from prefect_tune.storage import ExperimentStore
    from prefect_tune.storage.state import outcome_to_json

    def timed(method: Callable[..., Any], event: bool) -> Callable[..., Any]:
        def wrapper(self: ExperimentStore, *args: Any, **kwargs: Any) -> Any:
            if SWITCHED_OFF["state"] and event:
                return None
            tick = time.thread_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                SPENT["seconds"] += time.thread_time() - tick
                if event:
                    SPENT["bytes"] += len(outcome_to_json(args[0]))
                    SPENT["events"] += 1

        return wrapper

    ExperimentStore.create = timed(ExperimentStore.create, False)  # type: ignore[method-assign]
    ExperimentStore.write_trial_state = timed(  # type: ignore[method-assign]
        ExperimentStore.write_trial_state, True)


def train(config: dict[str, Any]) -> None:
    from prefect_tune.storage import Checkpoint
    from prefect_tune.tasks import report

    report({"loss": 1.0 / (1 + config["i"])}, checkpoint=Checkpoint.from_dict({"i": config["i"]}))


def sweep(size: int, root: str) -> tuple[float, Any]:
    from prefect_tune.flows import TuneConfig, Tuner, grid_search
    from prefect_tune.storage import CheckpointConfig, RunConfig

    tuner = Tuner(
        train, param_space={"i": grid_search(list(range(size)))},
        tune_config=TuneConfig(metric="loss", mode="min", max_concurrent_trials=4,
                               isolation="thread", tag_trials=False),
        run_config=RunConfig(name="exp", storage_path=root, checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="loss", checkpoint_score_order="min")),
    )
    begin = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - begin
    assert grid.num_terminated == size, grid.errors
    return wall, grid


def snapshot_cost(store: Any, states: list[Any], samples: int = 50) -> float:
    """Estimated seconds to rewrite a snapshot of every trial's state at each of the 2
    events per trial: `samples` evenly spaced snapshot writes, their mean scaled to all
    events (a snapshot grows linearly, so the mean over even samples is the mean)."""
    from prefect_tune.storage.state import outcome_to_json

    entries = [json.loads(outcome_to_json(s)) for s in states]
    events = 2 * len(entries)
    picked = [events * k // samples for k in range(samples)] if events > samples \
        else list(range(events))
    tick = time.perf_counter()
    for event in picked:
        store.write_file("snapshot.json", json.dumps(entries[: event // 2 + 1]).encode())
    return (time.perf_counter() - tick) / len(picked) * events


def measure(size: int, state: bool) -> dict[str, Any]:
    """One sweep of `size` trials in this process, after a 1-trial sweep that pays the
    API start-up. Every measured sweep gets a process of its own: the ephemeral server
    digests a sweep's events for seconds after it ends, which would slow the next one."""
    from prefect_tune.flows import Tuner
    from prefect_tune.storage import ExperimentStore

    instrument()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as root:
        sweep(1, os.path.join(root, "warm"))
        SWITCHED_OFF["state"] = not state
        SPENT.update(seconds=0.0, bytes=0, events=0)
        wall, grid = sweep(size, os.path.join(root, "exp"))
        figures = {"trials": size, "wall_s": wall,
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if not state:
            return figures
        tick = time.perf_counter()
        restored = Tuner.restore(os.path.join(root, "exp", "exp"), train).get_results()
        figures["restore_s"] = time.perf_counter() - tick
        assert restored.num_terminated == size
        store = ExperimentStore(grid[0].store.storage, "exp")
        states = store.read_trial_states(store.read_experiment().trials)
        figures["snapshot_s"] = snapshot_cost(store, [s for s in states if s is not None])
    return {**figures, "state_s": SPENT["seconds"],
            "bytes_per_event": SPENT["bytes"] / SPENT["events"]}


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [r["trials"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(trials, [r["wall_s"] for r in rows], "o-", label="sweep wall s")
    left.loglog(trials, [r["state_s"] for r in rows], "o-", label="state write s")
    left.loglog(trials, [r["restore_s"] for r in rows], "o-", label="restore + get_results s")
    left.loglog(trials, [rows[0]["wall_s"] * t / trials[0] for t in trials],
                ":", color="grey", label="linear from the smallest")
    left.set_xlabel("trials")
    left.legend()
    right.semilogx(trials, [r["peak_rss_mib"] for r in rows], "o-", label="peak RSS MiB")
    right.semilogx(trials, [r["bytes_per_event"] for r in rows], "o-", label="state bytes/event")
    right.set_xlabel("trials")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--runs", type=int, default=1,
                        help="whole-process runs per size (medians are reported)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # internal: one sweep
    parser.add_argument("--state", choices=("on", "off"), help=argparse.SUPPRESS)
    out_dir_argument(parser)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.state == "on")))
        return
    from common import clean_env

    rows = []
    for size in args.sizes:
        on, off = [], []
        for _ in range(args.runs):  # alternating, so that drift hits both alike
            if not args.no_baseline:
                off.append(run_process([sys.executable, __file__, "--measure", str(size),
                                        "--state", "off"], clean_env()))
            on.append(run_process([sys.executable, __file__, "--measure", str(size),
                                   "--state", "on"], clean_env()))
        row = {key: median([r[key] for r in on]) for key in on[0]}
        row["no_state_s"] = median([r["wall_s"] for r in off]) if off else float("nan")
        rows.append(row)
        print(row, flush=True)
    lines = []
    for before, row in zip([None, *rows], rows, strict=False):
        growth = f"{row['wall_s'] / before['wall_s']:.1f}" if before else ""
        lines.append([int(row["trials"]), row["wall_s"], growth, row["no_state_s"],
                      f"{row['wall_s'] / row['no_state_s']:.3f}", row["state_s"],
                      f"{row['state_s'] / row['wall_s']:.2%}", f"{row['bytes_per_event']:.0f}",
                      f"{row['snapshot_s'] / row['wall_s']:.1%}", row["restore_s"],
                      f"{row['peak_rss_mib']:.0f}"])
    markdown = (
        "Scale: tiny trials (1 report with a checkpoint), 4 at a time, trials in threads "
        "and untagged, ephemeral API, local storage.\n\n"
        + table(["trials", "wall s", "x previous", "no-state s", "wall ratio", "state s",
                 "state share", "B/event", "snapshot share", "restore s", "peak RSS MiB"],
                lines)
    )
    write_outputs(args.out, "scale", {"rows": rows}, markdown)
    plot(rows, os.path.join(args.out, "scale.png"))


if __name__ == "__main__":
    main()
