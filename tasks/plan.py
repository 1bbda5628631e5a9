"""`TrialPlan`: what every trial of one sweep shares, built once by the sweep.

The plan is pickled as it is to wherever a trial runs (a child process, a Dask worker);
each layer reads what it needs from it, so nothing is re-packed on the way.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prefect_tune.storage import (
    CheckpointConfig,
    ConfigError,
    ExperimentStore,
    Ranking,
    StorageMarker,
    SyncConfig,
)
from prefect_tune.storage.board import Board
from prefect_tune.storage.config import StopCondition

Isolation = Literal["process", "spawn", "thread"]


@dataclass(frozen=True)
class Resources:
    """What one trial needs: `cpu` cores (its OMP_NUM_THREADS) and `gpu` devices (its own
    CUDA_VISIBLE_DEVICES); 0 asks for none."""

    cpu: float = 0
    gpu: int = 0

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Resources:
        """From {"cpu": n, "gpu": m} (keys in any case).

        Raises:
            ConfigError: another key, a negative count, or a fractional GPU.
        """
        if not isinstance(spec, Mapping):
            raise ConfigError(f"resources {spec!r} must be a dict such as {{'cpu': 2, 'gpu': 1}}")
        counts = {str(k).lower(): v for k, v in spec.items()}
        unknown = set(counts) - {"cpu", "gpu"}
        cpu, gpu = counts.get("cpu", 0), counts.get("gpu", 0)
        if unknown or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                          for v in (cpu, gpu)) or gpu != int(gpu):
            raise ConfigError(
                f"resources {dict(spec)!r} are invalid: use {{'cpu': n, 'gpu': m}} with "
                "counts >= 0 and a whole number of GPUs"
            )
        return cls(float(cpu), int(gpu))

    def environment(self, devices: tuple[str, ...]) -> dict[str, str]:
        """The variables a trial process gets: its GPUs and its CPU threads."""
        env = {"CUDA_VISIBLE_DEVICES": ",".join(devices)} if self.gpu else {}
        if self.cpu:
            env["OMP_NUM_THREADS"] = str(max(int(self.cpu), 1))
        return env


@dataclass(frozen=True)
class Decision:
    """A scheduler ends a trial: stopped early (`early`), or at the end of the budget it
    gives every trial; `reason` says why, in words."""

    reason: str
    early: bool = True


class SchedulerRule(Protocol):
    """What a scheduler decides inside a trial, at the report that caused it, from the
    trial's own (time, metric) history and the records trials share on `board`."""

    metric: str
    time_attr: str

    def decide(self, board: Board, trial_id: str,
               history: Sequence[tuple[float, float]]) -> Decision | None: ...


@dataclass(frozen=True)
class TrialPlan:
    """The trainable, where its trials are stored, and how they run.

    Args:
        trainable: A function of the config dict, or a `Trainable` class.
        store: The experiment.
        checkpoint_config: What to keep, and when a class trainable saves.
        ranking: What ranks checkpoints (retention, best checkpoint, best score).
        max_failures: Retries per trial; -1 without limit.
        isolation: "process" runs each attempt in a process forked from the sweep's
            warm worker, "spawn" in a new interpreter (either way a hard death is a
            retried failure); "thread" in the trial task's thread.
        stop_condition: Ends a trial as finished (RunConfig.stop).
        tensorboard: Trials also write TensorBoard event files.
        sync_config: How trial files reach storage (directly, or staged and synced).
        local_dir: The staging root of a syncer.
        marker: The storage marker every trial checks first.
        resources: What each trial needs (its process gets its GPUs and CPU threads).
        stop: Once set, the sweep's trials stop (fail_fast); never leaves this process.
        sweep: Names this run of the sweep (its warm workers are its own).
        scheduler: Decides at each report whether the trial goes on (None: it does).
        cards: Each attempt puts a card on the trial's task run (`tasks/cards.py`).
    """

    trainable: Callable[[dict[str, Any]], Any]
    store: ExperimentStore
    checkpoint_config: CheckpointConfig = field(default_factory=CheckpointConfig)
    ranking: Ranking = field(default_factory=Ranking)
    max_failures: int = 0
    isolation: Isolation = "process"
    stop_condition: StopCondition = None
    tensorboard: bool = True
    sync_config: SyncConfig = field(default_factory=SyncConfig)
    local_dir: str | None = None
    marker: StorageMarker | None = None
    resources: Resources | None = None
    stop: threading.Event = field(default_factory=threading.Event, compare=False)
    sweep: str = field(default_factory=lambda: uuid.uuid4().hex)
    scheduler: SchedulerRule | None = None
    cards: bool = True

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the stop event, which cannot leave this process: a plan sent to
        another process gets an event of its own, never set."""
        return {k: v for k, v in self.__dict__.items() if k != "stop"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, stop=threading.Event())
