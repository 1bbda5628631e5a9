"""Deterministic learning curves for the scheduler tests: config["curve"] is the loss the
trial reports at each step (a checkpoint with every report). The trial whose curve is
config["kill"] SIGKILLs its whole process group (the driver that runs the sweep, too)
just before reporting step config["kill_at"], once: config["marker"] is the file that
remembers it did."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

from prefect_tune.storage import Checkpoint
from prefect_tune.tasks import Trainable, get_checkpoint, report

A = [5, 4, 3, 2, 1, 1, 1, 1]
B = [4, 4, 4, 4, 4, 4, 4, 4]
C = [6, 2, 2, 2, 2, 2, 2, 2]
D = [7, 6, 5, 4, 3, 2, 1, 0]


def follow(config: dict[str, Any]) -> None:
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] if checkpoint else 0
    for step in range(start + 1, len(config["curve"]) + 1):
        if config.get("kill") == config["curve"] and step == config["kill_at"] \
                and not os.path.exists(config["marker"]):
            open(config["marker"], "w").close()
            os.killpg(os.getpgid(0), signal.SIGKILL)
        report({"loss": config["curve"][step - 1]},
               checkpoint=Checkpoint.from_dict({"step": step}))


class Follow(Trainable):
    def setup(self, config: dict[str, Any]) -> None:
        self.curve = config["curve"]

    def step(self) -> dict[str, Any]:
        return {"loss": self.curve[self.iteration]}


def grow(config: dict[str, Any]) -> None:
    """A population-based training toy: each step adds config["lr"] to a value kept in
    the checkpoint (with the id of the trial that wrote it). With config["marker"], a
    trial that starts from another trial's checkpoint SIGKILLs its process group once."""
    from prefect_tune.tasks import get_context

    me = get_context().trial_id
    checkpoint = get_checkpoint()
    state = checkpoint.to_dict() if checkpoint else {"value": 0.0, "trial": me}
    if state["trial"] != me and config.get("marker") and not os.path.exists(config["marker"]):
        open(config["marker"], "w").close()
        os.killpg(os.getpgid(0), signal.SIGKILL)
    value = state["value"]
    while True:
        value += config["lr"]
        report({"score": value}, checkpoint=Checkpoint.from_dict({"value": value, "trial": me}))


def follow_without_checkpoints(config: dict[str, Any]) -> None:
    for loss in config["curve"]:
        report({"loss": loss})


def grow_then_lose_donors(config: dict[str, Any]) -> None:
    """`grow`, but the second trial first deletes every other trial's checkpoints, as a
    running donor's retention might before an exploit copies one."""
    from pathlib import Path

    from prefect_tune.tasks import get_context

    if config["lr"] == 0.2 and get_checkpoint() is None:
        trial = Path(get_context().trial_path)
        for other in trial.parent.glob("grow_then_lose_donors_*"):
            if other != trial:
                for checkpoint in other.glob("checkpoint_*"):
                    shutil.rmtree(checkpoint)
    grow(config)
