"""Run, checkpoint and failure configuration: frozen, validated on construction."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from prefect_tune.storage.callbacks import Callback
from prefect_tune.storage.errors import ConfigError
from prefect_tune.storage.sync import SyncConfig

DEFAULT_STORAGE_PATH = "~/prefect_tune_results"

#: When a trial ends early: metric thresholds (any metric reaching its value), or a
#: function of (trial id, result row) returning True to stop.
StopCondition = Mapping[str, float] | Callable[[str, dict[str, Any]], bool] | None


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid: use an integer >= {minimum}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Which checkpoints a trial keeps.

    Args:
        num_to_keep: None keeps every checkpoint; 0 persists none (metrics are still
            recorded); N >= 1 keeps the best N by score (newest N without a score
            attribute), plus the latest, which is never deleted.
        checkpoint_score_attribute: Metric that ranks checkpoints; nested as "a/b".
        checkpoint_score_order: "max" or "min".
        checkpoint_frequency: Save every k iterations (class trainables only).
        checkpoint_at_end: Save when the trial ends (class trainables only).
    """

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: Literal["min", "max"] = "max"
    checkpoint_frequency: int = 0
    checkpoint_at_end: bool | None = None

    def __post_init__(self) -> None:
        if self.num_to_keep is not None:
            _check_int("num_to_keep", self.num_to_keep, 0)
        if self.checkpoint_score_order not in ("min", "max"):
            raise ConfigError(
                f"checkpoint_score_order={self.checkpoint_score_order!r} is invalid: "
                'use "min" or "max"'
            )
        attribute = self.checkpoint_score_attribute
        if attribute is not None and (not isinstance(attribute, str) or not attribute):
            raise ConfigError(
                f"checkpoint_score_attribute={attribute!r} is invalid: use a metric name "
                'such as "loss" or "val/loss"'
            )
        _check_int("checkpoint_frequency", self.checkpoint_frequency, 0)
        if self.checkpoint_at_end not in (None, True, False):
            raise ConfigError(f"checkpoint_at_end={self.checkpoint_at_end!r} must be a bool")


@dataclass(frozen=True)
class ScalingConfig:
    """How many worker processes train one `Trainer` run, one per rank.

    Args:
        num_workers: Ranks (processes) on the trial's machine.
        use_gpu: Give rank i the GPU i (CUDA_VISIBLE_DEVICES); use the "nccl" backend.
        resources_per_worker: {"CPU": n} sets each rank's OMP_NUM_THREADS to n.
    """

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        _check_int("num_workers", self.num_workers, 1)
        if not isinstance(self.use_gpu, bool):
            raise ConfigError(f"use_gpu={self.use_gpu!r} must be True or False")
        resources = self.resources_per_worker
        if resources is not None and (
            not isinstance(resources, Mapping) or set(resources) - {"CPU", "GPU"}
            or not all(isinstance(v, (int, float)) and v > 0 for v in resources.values())
        ):
            raise ConfigError(
                f"resources_per_worker={resources!r} is invalid: use {{\"CPU\": n}} (and "
                '"GPU") with positive numbers'
            )


@dataclass(frozen=True)
class FailureConfig:
    """How a sweep treats failing trials.

    Args:
        max_failures: Retries per trial; -1 retries without limit.
        fail_fast: Stop the sweep once a trial has exhausted its retries.
    """

    max_failures: int = 0
    fail_fast: bool = False

    def __post_init__(self) -> None:
        _check_int("max_failures", self.max_failures, -1)
        if not isinstance(self.fail_fast, bool):
            raise ConfigError(f"fail_fast={self.fail_fast!r} must be True or False")


def validate_experiment_name(name: str) -> str:
    """Return `name` if it is usable as one directory name, else raise ConfigError."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"experiment name {name!r} is invalid: use a non-empty string")
    bad = [part for part in ("/", "\\", "..") if part in name]
    if bad or name.startswith(".") or any(ord(c) < 32 for c in name) or len(name) > 200:
        raise ConfigError(
            f"experiment name {name!r} is invalid: it must be one directory name (no '/', "
            "'\\', '..', leading '.' or control characters, at most 200 characters); "
            "for a sub-folder put it in storage_path instead"
        )
    return name


@dataclass(frozen=True)
class CLIReporter:
    """How a sweep shows its progress where it runs (Ray's `CLIReporter`).

    On an interactive terminal: a live table, redrawn `refresh_per_second` times a second,
    of trial counts by status, elapsed time, the best trial and the running and latest
    trials with their metrics and config. Elsewhere (CI, a worker's log): a summary line
    every `max_report_frequency` seconds. Either way, a line per finished trial in the
    flow run's log (the terminal and the Prefect UI).

    Args:
        max_report_frequency: Seconds between two summary lines in the log (> 0).
        refresh_per_second: Redraws of the live table a second (0.1 to 10).
        metric_columns: Metrics in the table ("a/b" for nested); default: the sweep's
            metric, or without one the first three a trial reports.
        parameter_columns: Config keys in the table; default: all, as many as fit.
        max_progress_rows: Trials in the table: the running ones, then those that ended
            last.
        live: The live table: None on an interactive terminal, True always, False never.
    """

    max_report_frequency: float = 10.0
    refresh_per_second: float = 4.0
    metric_columns: Sequence[str] | None = None
    parameter_columns: Sequence[str] | None = None
    max_progress_rows: int = 20
    live: bool | None = None

    def __post_init__(self) -> None:
        for name, low, high in (("max_report_frequency", 0.0, math.inf),
                                ("refresh_per_second", 0.1, 10.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not low <= value <= high or value == 0:
                raise ConfigError(f"CLIReporter({name}={value!r}) is invalid: use a number "
                                  f"{'> 0' if high == math.inf else f'from {low} to {high}'}")
        for name in ("metric_columns", "parameter_columns"):
            columns = getattr(self, name)
            if columns is None:
                continue
            if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
                raise ConfigError(f"CLIReporter({name}={columns!r}) is invalid: use a list "
                                  "of names")
            object.__setattr__(self, name, tuple(columns))
        if isinstance(self.max_progress_rows, bool) or not isinstance(
                self.max_progress_rows, int) or self.max_progress_rows < 1:
            raise ConfigError(f"CLIReporter(max_progress_rows={self.max_progress_rows!r}) "
                              "is invalid: use a whole number >= 1")
        if self.live not in (None, True, False):
            raise ConfigError(f"CLIReporter(live={self.live!r}) is invalid: use None (on an "
                              "interactive terminal), True or False")


@dataclass(frozen=True)
class RunConfig:
    """Where and how an experiment is stored.

    Args:
        name: Experiment directory name; default "<trainable>_<YYYY-MM-DD_HH-MM-SS>".
        storage_path: Local path, NFS mount or fsspec URL (s3://, gs://, file://, memory://);
            default ~/prefect_tune_results.
        storage_options: Keyword arguments for the fsspec filesystem (endpoint, keys).
            Never logged, repr'd or written to storage.
        storage_block: A saved Prefect block ("slug/name") or a block instance:
            TuneStorage, RemoteFileSystem, LocalFileSystem, or prefect-aws's S3Bucket
            and prefect-gcp's GcsBucket with their credentials blocks.
        checkpoint_config: Which checkpoints to keep.
        failure_config: How failing trials are treated.
        stop: Ends each trial early: {"training_iteration": 10, "acc": 0.99} stops it
            once any of these metrics reaches its value (every result must report
            them), or a function `stop(trial_id, result) -> bool`.
        tensorboard: Trials also write TensorBoard event files of their metrics when
            tensorboardX (or tensorboard) is installed; about 17 us per report.
        sync_config: How trial files reach storage: directly (default), or staged in
            `local_dir` and copied by a syncer command or function.
        local_dir: The staging directory of a syncer, on the machine each trial runs on;
            default: prefect-tune/staging in the user's cache directory.
        progress: How the sweep shows its progress: a `CLIReporter` (a live table on an
            interactive terminal, else a summary line in the log every 10 s, and a line
            per finished trial), or a number: the seconds between the summary lines;
            None: nothing.
        callbacks: Tracking tools the sweep tells of each trial's start, results and
            end (`Callback` subclasses, such as MLflowLoggerCallback), in its process.
            Not stored with the experiment: pass them again to `Tuner.restore`.
    """

    name: str | None = None
    storage_path: str | os.PathLike[str] | None = None
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    storage_block: Any = None
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    failure_config: FailureConfig = field(default_factory=FailureConfig)
    stop: StopCondition = None
    tensorboard: bool = True
    sync_config: SyncConfig = field(default_factory=SyncConfig)
    local_dir: str | os.PathLike[str] | None = None
    progress: CLIReporter | float | None = field(default_factory=CLIReporter)
    callbacks: Sequence[Callback] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for name in ("storage_path", "local_dir"):  # pathlib paths are paths too
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        self._check_sync()
        _check_stop(self.stop)
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"tensorboard={self.tensorboard!r} must be True or False")
        if self.name is not None:
            validate_experiment_name(self.name)
        if self.storage_path is not None and self.storage_block is not None:
            raise ConfigError(
                f"both storage_path={self.storage_path!r} and storage_block="
                f"{_block_label(self.storage_block)!r} are set: give exactly one"
            )
        if self.storage_block is not None and self.storage_options is not None:
            raise ConfigError(
                "storage_options cannot be combined with storage_block: the block holds "
                "its own options"
            )
        if self.storage_path is not None and (
            not isinstance(self.storage_path, str) or not self.storage_path
        ):
            raise ConfigError(f"storage_path={self.storage_path!r} must be a non-empty string")
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise ConfigError("storage_options must be a mapping of fsspec keyword arguments")
        if not isinstance(self.checkpoint_config, CheckpointConfig):
            raise ConfigError("checkpoint_config must be a CheckpointConfig")
        if not isinstance(self.failure_config, FailureConfig):
            raise ConfigError("failure_config must be a FailureConfig")
        if self.progress is not None and not isinstance(self.progress, CLIReporter):
            if isinstance(self.progress, bool) or not isinstance(self.progress, int | float) \
                    or not self.progress > 0:
                raise ConfigError(f"progress={self.progress!r} is invalid: use a CLIReporter, "
                                  "seconds between summaries (> 0), or None for none")
            object.__setattr__(self, "progress", CLIReporter(max_report_frequency=self.progress))
        object.__setattr__(self, "callbacks", tuple(self.callbacks))
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError(f"callbacks: {callback!r} is not a Callback; subclass "
                                  "prefect_tune.storage.Callback")

    @property
    def target(self) -> str | None:
        """Where results go when no block is given: storage_path, or upload_dir."""
        return cast(str | None, self.storage_path) or self.sync_config.upload_dir

    def _check_sync(self) -> None:
        sync = self.sync_config
        if not isinstance(sync, SyncConfig):
            raise ConfigError("sync_config must be a SyncConfig")
        upload = sync.upload_dir
        if upload is not None and self.storage_block is not None:
            raise ConfigError(
                f"both SyncConfig(upload_dir={upload!r}) and storage_block are set: give one"
            )
        if upload is not None and self.storage_path not in (None, upload):
            raise ConfigError(
                f"SyncConfig(upload_dir={upload!r}) and storage_path={self.storage_path!r} "
                "differ: upload_dir is the older name of storage_path; give one"
            )
        if self.local_dir is not None and not sync.stages:
            raise ConfigError(
                f"local_dir={self.local_dir!r} is the staging directory of a syncer, but "
                "there is none: trials write straight to storage_path. Remove local_dir, "
                "or set SyncConfig(syncer=...)"
            )


def _check_stop(stop: object) -> None:
    if stop is None or callable(stop):
        return
    if isinstance(stop, Mapping) and stop and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in stop.items()
    ):
        return
    raise ConfigError(
        f"stop={stop!r} is invalid: use a dict of metric thresholds such as "
        '{"training_iteration": 10}, or a function stop(trial_id, result) -> bool'
    )


def _block_label(block: object) -> str:
    return block if isinstance(block, str) else type(block).__name__
