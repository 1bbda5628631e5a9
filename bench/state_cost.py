"""What saving experiment state costs in real sweeps of 100, 1,000 and 10,000 trials.

Each size runs `Tuner.fit()` against a Prefect API (PREFECT_API_URL, else an ephemeral
one) on local storage, with trials in threads (the cheapest trials there are, so the
state share is at its largest): 5 reports, a checkpoint with the last. State writes
(experiment.json once; trial.json when each trial starts and ends) are timed by wrapping
the store's state methods. Printed per size:
- state share: CPU time of the state writes (thread time, so threads waiting for the
  GIL are not counted) / the sweep's wall time (Ray's budget is 5 %);
- the baseline, measured in the same run: the same sweep with the state writes switched
  off; "wall ratio" is with / without (the end-to-end cost of the state);
- bytes of state per trial event: must not grow with the number of trials;
- snapshot share: what one whole-experiment snapshot per event would cost (Ray's way;
  what per-trial records avoid), as a share of the same wall time;
- restore read: reading every trial's state back, as a restore does.

Run: python bench/state_cost.py [--sizes 100 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import Checkpoint, CheckpointConfig, ExperimentStore, RunConfig
from prefect_tune.storage.state import outcome_to_json
from prefect_tune.tasks import report

REPORTS = 5
SPENT = {"seconds": 0.0, "bytes": 0, "events": 0}
SWITCHED_OFF = {"state": False}


def timed(method: Callable[..., Any], event: bool) -> Callable[..., Any]:
    def wrapper(self: ExperimentStore, *args: Any) -> Any:
        if SWITCHED_OFF["state"] and event:
            return None
        tick = time.thread_time()
        try:
            return method(self, *args)
        finally:
            SPENT["seconds"] += time.thread_time() - tick
            if event:
                SPENT["bytes"] += len(outcome_to_json(args[0]))
                SPENT["events"] += 1

    return wrapper


ExperimentStore.create = timed(ExperimentStore.create, False)  # type: ignore[method-assign]
ExperimentStore.write_trial_state = timed(  # type: ignore[method-assign]
    ExperimentStore.write_trial_state, True
)


def train(config: dict[str, Any]) -> None:
    for step in range(1, REPORTS + 1):
        last = step == REPORTS
        report({"loss": config["i"] / step},
               checkpoint=Checkpoint.from_dict({"step": step}) if last else None)


def sweep(size: int, root: str) -> tuple[float, Any]:
    tuner = Tuner(
        train, param_space={"i": grid_search(list(range(size)))},
        tune_config=TuneConfig(metric="loss", mode="min", max_concurrent_trials=4,
                               isolation="thread"),
        run_config=RunConfig(name="exp", storage_path=root, checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="loss", checkpoint_score_order="min")),
    )
    begin = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - begin
    assert grid.num_terminated == size
    return wall, grid


def run(size: int, root: str) -> dict[str, float]:
    SWITCHED_OFF["state"] = True
    baseline, _ = sweep(size, os.path.join(root, "off"))
    SWITCHED_OFF["state"] = False
    SPENT.update(seconds=0.0, bytes=0, events=0)
    wall, grid = sweep(size, os.path.join(root, "on"))
    store = ExperimentStore(grid[0].store.storage, "exp")
    record = store.read_experiment()
    tick = time.perf_counter()
    states = store.read_trial_states(record.trials)
    restore = time.perf_counter() - tick
    return {
        "trials": size, "wall": wall, "baseline": baseline, "state": SPENT["seconds"],
        "bytes": SPENT["bytes"] / SPENT["events"],
        "snapshot": snapshot_cost(store, [s for s in states if s is not None]),
        "restore": restore,
    }


def snapshot_cost(store: ExperimentStore, states: list[Any]) -> float:
    """Rewrite a snapshot of every trial's state at each of the 2 events per trial."""
    entries = [json.loads(outcome_to_json(s)) for s in states]
    tick = time.perf_counter()
    for event in range(2 * len(entries)):
        store.write_file("snapshot.json", json.dumps(entries[: event // 2 + 1]).encode())
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-state-") as root:
        for size in args.sizes:
            rows.append(run(size, os.path.join(root, str(size))))
    print(f"{'trials':>7} {'wall s':>8} {'no-state s':>10} {'wall ratio':>10} {'state s':>8} "
          f"{'share':>7} {'B/event':>8} {'snapshot share':>15} {'restore read s':>15}")
    for row in rows:
        print(f"{row['trials']:>7} {row['wall']:>8.1f} {row['baseline']:>10.1f} "
              f"{row['wall'] / row['baseline']:>10.3f} {row['state']:>8.3f} "
              f"{row['state'] / row['wall']:>7.2%} {row['bytes']:>8.0f} "
              f"{row['snapshot'] / row['wall']:>15.1%} {row['restore']:>15.3f}")


if __name__ == "__main__":
    main()
