"""A tiny real trainable: linear regression by gradient descent, in pure Python.

It checkpoints every epoch and resumes from `get_checkpoint()`, so it exercises the
whole storage model without any ML framework.
"""

from __future__ import annotations

import random
from typing import Any

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.results import ResultGrid
from prefect_tune.flows.search_space import grid_search, loguniform
from prefect_tune.flows.tuner import Tuner
from prefect_tune.storage import Checkpoint, CheckpointConfig, RunConfig
from prefect_tune.tasks import get_checkpoint, report


def _dataset(size: int = 64) -> list[tuple[float, float]]:
    rng = random.Random(7)
    points = [rng.uniform(-1.0, 1.0) for _ in range(size)]
    return [(x, 3.0 * x + 2.0 + rng.gauss(0.0, 0.1)) for x in points]


def train_linear(config: dict[str, Any]) -> None:
    """Fit y = w*x + b; report mean squared error each epoch with a checkpoint."""
    data = _dataset()
    w, b, start = 0.0, 0.0, 0
    checkpoint = get_checkpoint()
    if checkpoint is not None:
        state = checkpoint.to_dict()
        w, b, start = state["w"], state["b"], state["epoch"] + 1
    lr = config["lr"]
    for epoch in range(start, config.get("epochs", 8)):
        for _ in range(config.get("steps_per_epoch", 20)):
            grad_w = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
            grad_b = sum(2 * (w * x + b - y) for x, y in data) / len(data)
            w, b = w - lr * grad_w, b - lr * grad_b
        loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
        report(
            {"loss": loss, "epoch": epoch},
            checkpoint=Checkpoint.from_dict({"w": w, "b": b, "epoch": epoch}),
        )


def run_demo(storage_path: str | None = None, name: str | None = None) -> ResultGrid:
    """Sweep the learning rate of `train_linear`: 2 grid points x 2 samples of a second axis."""
    tuner = Tuner(
        train_linear,
        param_space={
            "lr": loguniform(0.005, 0.2),
            "steps_per_epoch": grid_search([10, 20]),
            "epochs": 8,
        },
        tune_config=TuneConfig(metric="loss", mode="min", num_samples=2, seed=0,
                               max_concurrent_trials=2),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"
            ),
        ),
    )
    return tuner.fit()
