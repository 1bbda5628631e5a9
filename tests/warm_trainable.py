"""Trainables of the warm-worker tests. Importing this module imports prefect, as a
user's training script does, and appends the importing process's id to the file named by
$WARM_IMPORTS (when set)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import numpy
from prefect import flow  # noqa: F401 - costs seconds in a new interpreter; sets up logging

from prefect_tune.storage import Checkpoint
from prefect_tune.tasks import get_checkpoint, get_context, report

if os.environ.get("WARM_IMPORTS"):
    with open(os.environ["WARM_IMPORTS"], "a") as imports:
        imports.write(f"{os.getpid()}\n")

TOUCHED = {"count": 0}


def where() -> dict[str, int]:
    """The parent of this process; every row has this process's id as "pid" already."""
    return {"ppid": os.getppid()}


def quick(config: dict[str, Any]) -> None:
    logging.getLogger(__name__).info("trial %s says hello through logging", config["i"])
    report(where())


def probe(config: dict[str, Any]) -> None:
    """Report what this process found, then leave things behind for a next trial to find:
    a changed global, an environment variable, a thread still running, an open file."""
    found = {
        **where(),
        "global": TOUCHED["count"],
        "env": int("WARM_LEFT" in os.environ),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "draw": float(numpy.random.rand()),
    }
    TOUCHED["count"] += 1
    os.environ["WARM_LEFT"] = "1"
    threading.Thread(target=threading.Event().wait, name="left-behind").start()
    globals()["left_open"] = open(__file__)  # noqa: SIM115 - left open on purpose
    report(found)


def killed_once(config: dict[str, Any]) -> None:
    """Checkpoint step 1, then (first attempt only) die by SIGKILL before step 2."""
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint else 1
    for step in range(start, 3):
        if step == 2 and get_context().attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        report({**where(), "step": step}, checkpoint=Checkpoint.from_dict({"step": step}))


def kills_its_warm_worker(config: dict[str, Any]) -> None:
    """SIGKILL the warm worker that forked this process, then finish normally."""
    os.kill(os.getppid(), signal.SIGKILL)
    report({"ppid": os.getppid(), "killed": 1})


class Loaded:
    """A shared object that appends the id of each process unpickling it to `log`."""

    def __init__(self, log: str) -> None:
        self.log = log

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        with open(self.log, "a") as loads:
            loads.write(f"{os.getpid()}\n")


def uses_shared(config: dict[str, Any], *, shared: Loaded) -> None:
    report(where())
