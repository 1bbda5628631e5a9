"""Storage: configuration, checkpoints, the experiment directory and its records.

The Prefect block is imported on first use, so that a trial's child process, which
needs only the storage, does not pay for importing Prefect.
"""

from typing import TYPE_CHECKING, Any

from prefect_tune.storage.callbacks import Callback
from prefect_tune.storage.checkpoint import Checkpoint
from prefect_tune.storage.config import (
    CheckpointConfig,
    CLIReporter,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from prefect_tune.storage.errors import (
    CheckpointError,
    ConfigError,
    ExperimentBusy,
    MetricError,
    NoResultError,
    OutsideTrialError,
    RankFailed,
    StorageError,
    StorageNotShared,
    SweepError,
    TrialCrashed,
    TrialError,
    TrialStopped,
)
from prefect_tune.storage.filesystem import Storage, resolve_storage
from prefect_tune.storage.ranking import Ranking
from prefect_tune.storage.records import CheckpointRecord, TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.storage.store import ExperimentStore, StorageMarker
from prefect_tune.storage.sync import SyncConfig, SyncError
from prefect_tune.storage.trial_dir import ResumePoint, TrialDir

if TYPE_CHECKING:
    from prefect_tune.storage.block import TuneStorage, storage_from_block

__all__ = [
    "CLIReporter",
    "Callback",
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointRecord",
    "ConfigError",
    "ExperimentBusy",
    "ExperimentStore",
    "FailureConfig",
    "MetricError",
    "NoResultError",
    "OutsideTrialError",
    "RankFailed",
    "Ranking",
    "ResumePoint",
    "RunConfig",
    "ScalingConfig",
    "Storage",
    "StorageError",
    "StorageMarker",
    "StorageNotShared",
    "SweepError",
    "SyncConfig",
    "SyncError",
    "TrialCrashed",
    "TrialDir",
    "TrialError",
    "TrialOutcome",
    "TrialSpec",
    "TrialStatus",
    "TrialStopped",
    "TuneStorage",
    "resolve_storage",
    "storage_from_block",
]


def __getattr__(name: str) -> Any:
    if name in ("TuneStorage", "storage_from_block"):
        from prefect_tune.storage import block

        return getattr(block, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so that `prefect block register -m prefect_tune.storage` finds
    the block (it scans the module's members)."""
    return sorted(set(globals()) | set(__all__))
