"""`Trainer`: one distributed training run as a Prefect flow run.

The run is one trial of an experiment, so it stores, keeps and restores exactly as a
sweep's trials do (`RunConfig`, `CheckpointConfig`, `FailureConfig`, `Tuner.restore`). Its
task starts `ScalingConfig.num_workers` processes, one per rank (see
`prefect_tune.tasks.group`). A Trainer is also a trainable: `Tuner(trainer,
param_space={"train_loop_config": {...}})` sweeps distributed runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import fsspec

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.results import Result
from prefect_tune.flows.tuner import Tuner
from prefect_tune.storage import Checkpoint, ConfigError, RunConfig, ScalingConfig
from prefect_tune.tasks.group import run_group


class Trainer:
    """Run `train_loop(train_loop_config)` on `scaling_config.num_workers` ranks.

    Every rank calls `report(metrics, checkpoint=...)` at the same steps; rank 0's
    metrics are recorded, and the files of every rank's checkpoint are merged into one
    checkpoint per step. `get_context()` gives each rank `world_rank`, `world_size` and
    `local_rank`; RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set for
    `torch.distributed.init_process_group`.

    With `resume_from_checkpoint` (local, or in storage such as an earlier run's
    `result.checkpoint`), every rank's `get_checkpoint()` returns it until the run has
    committed a checkpoint of its own; from then on retries and `Tuner.restore` resume
    from the run's latest. The given checkpoint is only read: it is not one of the
    run's checkpoints, so retention never deletes it, and its filesystem (credentials)
    reaches the ranks in memory only, never a stored file or log.

    Example:
        >>> trainer = Trainer(train_loop, train_loop_config={"lr": 0.1},  # doctest: +SKIP
        ...                   scaling_config=ScalingConfig(num_workers=2))
        >>> result = trainer.fit()  # doctest: +SKIP
    """

    __name__ = "Trainer"  # the trainable name in experiment and trial names

    def __init__(
        self,
        train_loop: Callable[[dict[str, Any]], Any],
        *,
        train_loop_config: Mapping[str, Any] | None = None,
        scaling_config: ScalingConfig | None = None,
        run_config: RunConfig | None = None,
        resume_from_checkpoint: Checkpoint | None = None,
    ) -> None:
        """Check the settings; nothing runs before `fit()`.

        Raises:
            ConfigError: `train_loop` is not callable, `scaling_config` not a
                ScalingConfig, or `resume_from_checkpoint` not a Checkpoint or not an
                existing directory (naming its path).
        """
        if not callable(train_loop):
            raise ConfigError(
                f"train_loop {train_loop!r} is not callable: pass a function that takes the "
                "train_loop_config dict"
            )
        if scaling_config is not None and not isinstance(scaling_config, ScalingConfig):
            raise ConfigError(
                f"scaling_config must be a ScalingConfig, got {type(scaling_config).__name__}"
            )
        if resume_from_checkpoint is not None:
            check_checkpoint(resume_from_checkpoint)
        self.train_loop = train_loop
        self.train_loop_config = dict(train_loop_config or {})
        self.scaling_config = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self.resume_from_checkpoint = resume_from_checkpoint

    def fit(self) -> Result:
        """Run the training in a new flow run and return its result.

        A failing or dying rank fails the whole group; with `FailureConfig(max_failures=N)`
        the group restarts from the latest committed checkpoint, up to N times. The
        result's `error` is set when the run failed.
        """
        grid = Tuner(self, tune_config=TuneConfig(max_concurrent_trials=1),
                     run_config=self.run_config).fit()
        return grid[0]

    def __call__(self, config: dict[str, Any]) -> None:
        """The trainable: `config["train_loop_config"]`, if given (by a Tuner's
        param_space), updates this Trainer's own."""
        loop_config = {**self.train_loop_config, **config.get("train_loop_config", {})}
        run_group(self.train_loop, loop_config, self.scaling_config,
                  start=self.resume_from_checkpoint)


def check_checkpoint(checkpoint: object) -> None:
    """Refuse a `resume_from_checkpoint` that is not a Checkpoint of an existing
    directory.

    Raises:
        ConfigError: naming the type, or the checkpoint's path (never its filesystem's
            options).
    """
    if not isinstance(checkpoint, Checkpoint):
        raise ConfigError(
            f"resume_from_checkpoint must be a Checkpoint, got {type(checkpoint).__name__}: "
            "pass Checkpoint.from_directory(path), or an earlier run's result.checkpoint"
        )
    try:
        found = checkpoint.filesystem.isdir(fsspec.core.strip_protocol(checkpoint.path))
    except OSError as exc:
        raise ConfigError(
            f"resume_from_checkpoint: checkpoint {checkpoint.path} cannot be read: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not found:
        raise ConfigError(
            f"resume_from_checkpoint: checkpoint {checkpoint.path} does not exist (no "
            "such directory); pass an existing checkpoint, e.g. an earlier run's "
            "result.checkpoint"
        )
