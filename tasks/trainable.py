"""The class trainable API: `Trainable`, and the loop that drives one through a trial.

A class trainable is run one `step()` at a time; prefect-tune decides when it saves:
when a step's result says `"should_checkpoint": True`, every `checkpoint_frequency`
iterations, and at the end with `checkpoint_at_end`. A trial ends when a step's result
says `"done": True` or the run's stop condition is met. A retried or restored trial
starts with `load_checkpoint` of its latest checkpoint and counts on from its iteration.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Mapping
from typing import Any

from prefect_tune.storage import Checkpoint, CheckpointError, MetricError
from prefect_tune.storage.checkpoint import holds_dict, write_dict
from prefect_tune.storage.scratch import scratch_dir
from prefect_tune.tasks.session import TrialSession

#: Keys of a step's result that steer the trial and are not recorded as metrics.
SHOULD_CHECKPOINT = "should_checkpoint"
DONE = "done"


class Trainable:
    """Subclass it and override `setup`, `step`, `save_checkpoint`, `load_checkpoint` and,
    if needed, `cleanup`. Do not override `__init__`: put set-up in `setup`.

    Attributes:
        config: The trial's config (a copy).
        iteration: Steps completed so far, across retries and restores.

    Example:
        >>> class Counter(Trainable):
        ...     def setup(self, config):
        ...         self.total = 0
        ...     def step(self):
        ...         self.total += self.config["add"]
        ...         return {"total": self.total}
        ...     def save_checkpoint(self, checkpoint_dir):
        ...         return {"total": self.total}
        ...     def load_checkpoint(self, checkpoint):
        ...         self.total = checkpoint["total"]
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = copy.deepcopy(dict(config))
        self.iteration = 0
        self.setup(copy.deepcopy(self.config))

    def setup(self, config: dict[str, Any]) -> None:
        """Build what the trial trains (model, data) from its config."""

    def step(self) -> dict[str, Any]:
        """Train one iteration and return its metrics."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any] | str | None:
        """Save the state to resume from: write files into `checkpoint_dir` (and return
        None or `checkpoint_dir`), or return a dict (stored as JSON, else pickled)."""
        raise NotImplementedError(f"{type(self).__name__} must implement save_checkpoint()")

    def load_checkpoint(self, checkpoint: dict[str, Any] | str) -> None:
        """Restore what `save_checkpoint` saved: its dict, or a local directory with its
        files (a temporary copy, removed when this returns)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_checkpoint()")

    def cleanup(self) -> None:
        """Release resources; called when the trial ends, fails or is stopped."""


def is_class_trainable(trainable: object) -> bool:
    return isinstance(trainable, type) and issubclass(trainable, Trainable)


def drive(cls: type[Trainable], config: dict[str, Any], session: TrialSession) -> None:
    """Run `cls` as the session's trial until its stop condition (or `"done"`) holds."""
    checkpoints = session.plan.checkpoint_config
    trainable = cls(config)
    try:
        trainable.iteration = session.iteration
        if session.restored is not None:
            _load(trainable, session.restored)
        while True:
            result = trainable.step()
            if not isinstance(result, Mapping):
                raise MetricError(
                    f"{cls.__name__}.step() returned {type(result).__name__}; return a dict "
                    "of metrics"
                )
            metrics = dict(result)
            manual = bool(metrics.pop(SHOULD_CHECKPOINT, False))
            done = bool(metrics.pop(DONE, False)) or session.stop_reached(metrics)
            iteration = session.iteration + 1
            every = checkpoints.checkpoint_frequency
            save = manual or (every > 0 and iteration % every == 0) or (
                done and bool(checkpoints.checkpoint_at_end)
            )
            trainable.iteration = iteration  # save_checkpoint sees the step it saves
            if save:
                directory = scratch_dir("save-")
                try:
                    _save(trainable, directory)
                    session.record(metrics, Checkpoint.from_directory(directory))
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
            else:
                session.record(metrics, None)
            if done:
                return
            session.consult()
    finally:
        trainable.cleanup()


def _save(trainable: Trainable, directory: str) -> None:
    returned = trainable.save_checkpoint(directory)
    if isinstance(returned, Mapping):
        write_dict(directory, returned)
    elif returned is not None and not (
        isinstance(returned, (str, os.PathLike))
        and os.path.abspath(os.fspath(returned)) == directory
    ):
        raise CheckpointError(
            f"{type(trainable).__name__}.save_checkpoint() returned {returned!r}; return a "
            f"dict, None, or the checkpoint_dir it was given ({directory!r})"
        )


def _load(trainable: Trainable, checkpoint: Checkpoint) -> None:
    with checkpoint.as_directory() as local:
        local_checkpoint = Checkpoint.from_directory(local)
        if holds_dict(local):
            trainable.load_checkpoint(local_checkpoint.to_dict(allow_pickle=True))
        else:
            trainable.load_checkpoint(local)
