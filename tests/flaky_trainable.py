"""A trainable that commands load by import path: `tests.flaky_trainable:flaky` (with the
repository root on PYTHONPATH)."""

from __future__ import annotations

import json
import os
from typing import Any

from prefect_tune.storage import Checkpoint
from prefect_tune.tasks import get_checkpoint, get_context, report

STEPS = 3


def flaky(config: dict[str, Any]) -> None:
    """Steps 1..STEPS with a checkpoint each, resuming after its checkpoint's step. While
    the file config["gate"] is missing, a config with "fail" raises at the last step.
    Appends [trial id, attempt, first step] to the file config["log"] per call."""
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint is not None else 1
    context = get_context()
    with open(config["log"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps([context.trial_id, context.attempt, start]) + "\n")
    for step in range(start, STEPS + 1):
        if config["fail"] and step == STEPS and not os.path.exists(config["gate"]):
            raise RuntimeError("fails until the gate opens")
        report({"loss": 1.0 / step, "step": step}, checkpoint=Checkpoint.from_dict({"step": step}))
