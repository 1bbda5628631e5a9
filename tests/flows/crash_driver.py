"""A sweep that kills itself: run as `python -m tests.flows.crash_driver DIR fit|restore`
from the repository root.

`fit` runs the deployable `sweep` flow (prefect_tune.flows.sweep:sweep) with the
trainable `tests.flows.crash_driver:count_up`; `restore` continues it with
`Tuner.restore`. With CRASH_AT="<event>:<n>" in the environment, the whole process group
(the driver and its trials' child processes) is SIGKILLed at the n-th occurrence of
<event>, counted across processes in files under DIR/events; DIR/killed then records the
event and, when the driver was killed, its flow run id. Every call of the trainable is
logged to DIR/calls with the phase (fit, restore or retry), the trial, the attempt, where
it started and whether its checkpoint was committed.

The events are moments of the documented storage protocol (README, "Layout"), seen as
the file operations that make them, so they name the same moments whatever code
performs them:

- report: the trainable is about to call report()
- staged: a checkpoint is complete in its hidden `.checkpoint_NNNNNN.tmp-<hex>/` staging
  directory, manifest included, and not yet renamed to `checkpoint_NNNNNN/`
- committed: that rename happened; the checkpoint's result row is not written yet
- evicting: a kept-no-longer checkpoint is about to be renamed aside (`.deleting-`); the
  row that evicted it is written
- deleting: it was renamed aside, not yet removed
- experiment-json, trial-json, results-csv, results-json: that file was just replaced
- cached: a trial task's outcome was just written to `.prefect-results/` (Prefect's
  record, by which a retried flow run finds the trial finished)
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

# Light imports only: every trial's child process imports this module for count_up.
from prefect_tune.storage import Checkpoint
from prefect_tune.tasks import get_checkpoint, get_context, report

STEPS = 4
NAME = "crashy"
#: The trainable, as the sweep flow imports it.
TRAINABLE = "tests.flows.crash_driver:count_up"
#: The sweep flow's parameters: 3 trials (x = 1, 2, 3) one at a time, each step
#: checkpointed, keeping the best checkpoint (lowest score: step 1) and the latest.
PARAMETERS: dict[str, Any] = {
    "trainable": TRAINABLE,
    "param_space": {"x": {"grid_search": [1, 2, 3]}},
    "max_concurrent_trials": 1,
    "name": NAME,
    "num_to_keep": 1,
    "checkpoint_score_attribute": "score",
    "checkpoint_score_order": "min",
    "max_failures": 2,
}

_STAGING = re.compile(r"^\.checkpoint_\d{6}\.tmp-[0-9a-f]+$")
_COMMITTED = re.compile(r"^checkpoint_\d{6}$")
_TRASH = re.compile(r"^\.checkpoint_\d{6}\.deleting-")
#: File name -> the event of its replacement.
_REPLACED = {"experiment.json": "experiment-json", "trial.json": "trial-json",
             "results.csv": "results-csv", "results.json": "results-json"}


def score(config: dict[str, Any], step: int) -> float:
    return float(config["x"] * step)


def count_up(config: dict[str, Any]) -> None:
    """Deterministic: reports score = x * step for steps 1..STEPS, a checkpoint each step."""
    install_hooks()
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
    directory = os.environ["CRASH_DIR"]
    counter = os.path.join(directory, "events", event)
    os.makedirs(os.path.dirname(counter), exist_ok=True)
    with open(counter, "ab") as out:
        out.write(b".")
    if os.path.getsize(counter) == int(nth):
        with open(os.path.join(directory, "killed"), "w", encoding="utf-8") as out:
            json.dump({"event": target, "flow_run_id": _flow_run_id()}, out)
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _flow_run_id() -> str | None:
    """The flow run this process runs, if it is the driver (trial processes do not
    import Prefect)."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def _wrap(owner: Any, name: str, before: Callable[..., str | None],
          after: Callable[..., str | None]) -> None:
    """Call maybe_crash(event) before and after `owner.name`, for the events `before`
    and `after` name for its arguments (None: no event)."""
    original = getattr(owner, name)

    def patched(*args: Any, **kwargs: Any) -> Any:
        event = before(*args, **kwargs)
        if event:
            maybe_crash(event)
        result = original(*args, **kwargs)
        event = after(*args, **kwargs)
        if event:
            maybe_crash(event)
        return result

    setattr(owner, name, functools.update_wrapper(patched, original))


def _base(path: Any) -> str:
    return os.path.basename(os.fspath(path).rstrip("/"))


def _before_move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> str | None:
    if _STAGING.match(_base(src)) and _COMMITTED.match(_base(dst)):
        return "staged"
    if _COMMITTED.match(_base(src)) and _TRASH.match(_base(dst)):
        return "evicting"
    return None


def _after_move(src: Any, dst: Any, *args: Any, **kwargs: Any) -> str | None:
    if _STAGING.match(_base(src)) and _COMMITTED.match(_base(dst)):
        return "committed"
    if _base(os.path.dirname(os.fspath(dst))) == ".prefect-results":
        return "cached"
    return _REPLACED.get(_base(dst))


def _before_remove(path: Any, *args: Any, **kwargs: Any) -> str | None:
    return "deleting" if _TRASH.match(_base(path)) else None


def _never(*args: Any, **kwargs: Any) -> None:
    return None


def install_hooks() -> None:
    """Watch the file operations of the storage protocol; once per process."""
    if getattr(os, "_crash_hooks", False):
        return
    os._crash_hooks = True  # type: ignore[attr-defined]
    for name in ("rename", "replace"):
        _wrap(os, name, _before_move, _after_move)
    _wrap(shutil, "rmtree", _before_remove, _never)


def main() -> None:
    directory, phase = sys.argv[1], sys.argv[2]
    os.environ.update(CRASH_DIR=directory, CRASH_PHASE=phase)
    install_hooks()
    storage = os.path.join(directory, "storage")
    if phase == "fit":
        from prefect_tune.flows.sweep import sweep

        sweep(**PARAMETERS, storage_path=storage)
    else:
        from prefect_tune.flows import Tuner
        from tests.flows.crash_driver import count_up as trainable

        Tuner.restore(os.path.join(storage, NAME), trainable).fit()


if __name__ == "__main__":
    main()
