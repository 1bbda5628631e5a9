"""A sweep that kills itself: run as `python -m tests.flows.crash_driver DIR fit|restore`.

With CRASH_AT="<event>:<n>" in the environment, the whole process group (the driver and
its trials' child processes) is SIGKILLed at the n-th occurrence of <event>, counted
across processes in files under DIR/events. Every call of the trainable is logged to
DIR/calls with the phase (fit or restore), the trial, the attempt and where it started.

Events: created (experiment.json written), state (a trial.json written), report (a
trainable calls report), staged (a checkpoint is complete in its staging directory, not
yet renamed), committed (a checkpoint's row is about to be appended), appended (a row was
appended), deleting (an evicted checkpoint was moved aside, not yet removed), finished
(the sweep processed a finished trial), aggregate (results.csv written, results.json not
yet), publish (results written, artifacts not yet).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.flows.plan import SweepPlan
from prefect_tune.flows.tuner import tune_flow
from prefect_tune.storage import Checkpoint, CheckpointConfig, FailureConfig, RunConfig
from prefect_tune.tasks import get_checkpoint, get_context, report

STEPS = 4
NAME = "crashy"


def score(config: dict[str, Any], step: int) -> float:
    return float(config["x"] * step)


def count_up(config: dict[str, Any]) -> None:
    """Deterministic: reports score = x * step for steps 1..STEPS, a checkpoint each step."""
    install_hooks(child=True)
    checkpoint = get_checkpoint()
    start, intact = 1, True
    if checkpoint is not None:
        intact = os.path.exists(os.path.join(checkpoint.path, ".checkpoint.json"))
        start = checkpoint.to_dict()["step"] + 1
    context = get_context()
    log_call(context.trial_id, context.attempt, start, intact)
    for step in range(start, STEPS + 1):
        maybe_crash("report")
        report({"score": score(config, step), "step": step},
               checkpoint=Checkpoint.from_dict({"step": step}))


def log_call(*values: Any) -> None:
    line = json.dumps([os.environ["CRASH_PHASE"], *values]) + "\n"
    with open(os.path.join(os.environ["CRASH_DIR"], "calls"), "a", encoding="utf-8") as out:
        out.write(line)


def maybe_crash(event: str) -> None:
    """Count `event`; SIGKILL the whole process group at the configured occurrence."""
    target = os.environ.get("CRASH_AT", "")
    name, _, nth = target.partition(":")
    if name != event:
        return
    counter = os.path.join(os.environ["CRASH_DIR"], "events", event)
    os.makedirs(os.path.dirname(counter), exist_ok=True)
    with open(counter, "ab") as out:
        out.write(b".")
    if os.path.getsize(counter) == int(nth):
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _after(owner: Any, name: str, event: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    original = getattr(owner, name)

    def patched(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            maybe_crash(event)
        return result

    setattr(owner, name, patched)


def _before(owner: Any, name: str, event: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    original = getattr(owner, name)

    def patched(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            maybe_crash(event)
        return original(*args, **kwargs)

    setattr(owner, name, patched)


def install_hooks(*, child: bool) -> None:
    """Wrap the storage steps (in every process) and the sweep's steps (in the driver);
    once per process (the mark lives in a module, not in this pickled-by-value one)."""
    from prefect_tune.storage import result_log, store

    if getattr(store, "_crash_hooks", False):
        return
    store._crash_hooks = True  # type: ignore[attr-defined]

    _before(os, "rename", "staged", lambda src, dst: ".tmp-" in str(src))
    _before(shutil, "rmtree", "deleting", lambda path, *a, **k: ".deleting-" in str(path))
    _before(result_log.ResultLog, "append", "committed",
            lambda self, row, **k: row.get("checkpoint_dir_name") is not None)
    _after(result_log.ResultLog, "append", "appended")
    if child:
        return
    from prefect_tune.tasks import bookkeeping

    _after(store.ExperimentStore, "create", "created")
    _after(store.ExperimentStore, "write_trial_state", "state")
    _after(bookkeeping.Progress, "advance", "finished")
    _after(store.ExperimentStore, "write_file", "aggregate",
           lambda self, name, data: name == "results.csv")
    _before(bookkeeping, "publish_results", "publish")


def plan(directory: str) -> SweepPlan:
    """3 trials (x = 1, 2, 3) one at a time; keep the best checkpoint and the latest."""
    return Tuner(
        count_up, param_space={"x": grid_search([1, 2, 3])},
        tune_config=TuneConfig(max_concurrent_trials=1),
        run_config=RunConfig(
            name=NAME, storage_path=os.path.join(directory, "storage"),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="score", checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=2),
        ),
    ).plan()


#: The entrypoint `prefect flow-run retry --entrypoint` loads (CRASH_PHASE=retry).
retry_flow = tune_flow(plan(os.environ["CRASH_DIR"])) \
    if os.environ.get("CRASH_PHASE") == "retry" else None


def main() -> None:
    directory, phase = sys.argv[1], sys.argv[2]
    os.environ.update(CRASH_DIR=directory, CRASH_PHASE=phase)
    install_hooks(child=False)
    if phase == "fit":
        tune_flow(plan(directory))()
    else:
        Tuner.restore(os.path.join(directory, "storage", NAME), count_up).fit()


if __name__ == "__main__":
    main()
