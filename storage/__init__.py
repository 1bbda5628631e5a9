"""Storage: configuration, checkpoints, the experiment directory and its records."""

from prefect_tune.storage.block import TuneStorage, storage_from_block
from prefect_tune.storage.checkpoint import Checkpoint
from prefect_tune.storage.config import CheckpointConfig, FailureConfig, RunConfig
from prefect_tune.storage.errors import (
    CheckpointError,
    ConfigError,
    MetricError,
    OutsideTrialError,
    StorageError,
    SweepError,
    TrialError,
)
from prefect_tune.storage.filesystem import Storage, resolve_storage
from prefect_tune.storage.records import CheckpointRecord, TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.storage.store import ExperimentStore, ResumePoint

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointRecord",
    "ConfigError",
    "ExperimentStore",
    "FailureConfig",
    "MetricError",
    "OutsideTrialError",
    "ResumePoint",
    "RunConfig",
    "Storage",
    "StorageError",
    "SweepError",
    "TrialError",
    "TrialOutcome",
    "TrialSpec",
    "TrialStatus",
    "TuneStorage",
    "resolve_storage",
    "storage_from_block",
]
