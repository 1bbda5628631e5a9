"""Deterministic learning curves for the scheduler tests: config["curve"] is the loss the
trial reports at each step (a checkpoint with every report). The trial whose curve is
config["kill"] SIGKILLs its whole process group (the driver that runs the sweep, too)
just before reporting step config["kill_at"], once: config["marker"] is the file that
remembers it did."""

from __future__ import annotations

import os
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
