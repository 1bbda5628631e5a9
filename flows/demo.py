"""A tiny real trainable: linear regression by gradient descent, in pure Python.

`train_linear` checkpoints every epoch and resumes from `get_checkpoint()`;
`LinearModel` is the same as a class trainable, checkpointed when the run's
CheckpointConfig says. Both exercise the whole storage model without an ML framework.
"""

from __future__ import annotations

import random
from typing import Any

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.results import ResultGrid
from prefect_tune.flows.search_space import grid_search, loguniform
from prefect_tune.flows.tuner import Tuner
from prefect_tune.storage import Checkpoint, CheckpointConfig, RunConfig
from prefect_tune.tasks import Trainable, get_checkpoint, report


def _dataset(size: int = 64) -> list[tuple[float, float]]:
    rng = random.Random(7)
    points = [rng.uniform(-1.0, 1.0) for _ in range(size)]
    return [(x, 3.0 * x + 2.0 + rng.gauss(0.0, 0.1)) for x in points]


def _epoch(w: float, b: float, lr: float, steps: int) -> tuple[float, float, float]:
    """`steps` gradient steps on the dataset; returns the new w, b and their loss."""
    data = _dataset()
    for _ in range(steps):
        grad_w = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
        grad_b = sum(2 * (w * x + b - y) for x, y in data) / len(data)
        w, b = w - lr * grad_w, b - lr * grad_b
    return w, b, sum((w * x + b - y) ** 2 for x, y in data) / len(data)


def train_linear(config: dict[str, Any]) -> None:
    """Fit y = w*x + b; report mean squared error each epoch with a checkpoint."""
    w, b, start = 0.0, 0.0, 0
    checkpoint = get_checkpoint()
    if checkpoint is not None:
        state = checkpoint.to_dict()
        w, b, start = state["w"], state["b"], state["epoch"] + 1
    for epoch in range(start, config.get("epochs", 8)):
        w, b, loss = _epoch(w, b, config["lr"], config.get("steps_per_epoch", 20))
        report(
            {"loss": loss, "epoch": epoch},
            checkpoint=Checkpoint.from_dict({"w": w, "b": b, "epoch": epoch}),
        )


class LinearModel(Trainable):
    """`train_linear` as a class: one step is one epoch; it runs until the run's stop
    condition (e.g. RunConfig(stop={"training_iteration": 8}))."""

    def setup(self, config: dict[str, Any]) -> None:
        self.w, self.b = 0.0, 0.0

    def step(self) -> dict[str, Any]:
        self.w, self.b, loss = _epoch(self.w, self.b, self.config["lr"],
                                      self.config.get("steps_per_epoch", 20))
        return {"loss": loss}

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
        return {"w": self.w, "b": self.b}

    def load_checkpoint(self, checkpoint: dict[str, Any] | str) -> None:
        assert isinstance(checkpoint, dict)
        self.w, self.b = checkpoint["w"], checkpoint["b"]


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
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    return tuner.fit()
