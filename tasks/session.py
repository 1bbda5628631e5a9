"""The trial side: `report`, `get_checkpoint`, `get_context` and the session behind them.

A `TrialSession` is bound to the running trial through a ContextVar. `report()` writes
straight to storage before it returns (no Prefect API call, no background sync): the
checkpoint is committed, the row appended, then retention deletes what is no longer kept.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from prefect_tune.storage import (
    Checkpoint,
    CheckpointError,
    CheckpointRecord,
    MetricError,
    OutsideTrialError,
    ResumePoint,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TrialStopped,
)
from prefect_tune.storage.records import AUTO_KEYS, checkpoint_dir_name, flatten, to_json_value
from prefect_tune.tasks.plan import SchedulerRule, TrialPlan
from prefect_tune.tasks.workdir import WorkingDir


@dataclass(frozen=True)
class TrialContext:
    """Who and where the running trial is; its local working directory (the cwd of a
    trial in a process of its own, see `prefect_tune.tasks.workdir`); in a `Trainer`'s
    worker, which rank of how many (`world_rank`, `world_size`, and `local_rank` on its
    machine)."""

    trial_id: str
    trial_name: str
    trial_path: str
    experiment_name: str
    experiment_path: str
    attempt: int
    world_rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    working_dir: str = ""


class Session(Protocol):
    """What `report`, `get_checkpoint` and `get_context` reach: a trial's own session, or
    a distributed training worker's link to its trial."""

    restored: Checkpoint | None
    context: TrialContext

    def report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None) -> None: ...


class TrialDone(BaseException):
    """Raised by `report()` once the stop condition holds: it ends the trainable as
    finished. A BaseException, so that a trainable's `except Exception` lets it through."""


class TrialPaused(BaseException):
    """Raised by `report()` once the trial reached the milestone its scheduler gave this
    segment: it ends the trainable, to be resumed from its latest checkpoint."""


#: Where a row was reported: the host name and process id of the process running the
#: trainable (a `Trainer`'s rank 0).
Origin = tuple[str, int]


class TrialSession:
    """The bookkeeping of one trial attempt: result rows, checkpoints, retention.

    Every row gets the AUTO_KEYS: `time_total_s` goes on from the row of the checkpoint
    the attempt resumed from (rows after it are cut), `iterations_since_restore` counts
    this attempt's reports from 1, and `pid` and `hostname` are this process's unless
    `report(origin=...)` names another.
    """

    def __init__(
        self, plan: TrialPlan, spec: TrialSpec, attempt: int,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        resume: ResumePoint | None = None, until: float | None = None,
    ) -> None:
        self.plan = plan
        self.until = until
        self.spec = spec
        self.logger = logger
        self.trial = plan.store.trial(spec.trial_name)
        self.workdir = WorkingDir(plan.store.name, self.trial)
        self.context = TrialContext(
            trial_id=spec.trial_id,
            trial_name=spec.trial_name,
            trial_path=self.trial.uri,
            experiment_name=plan.store.name,
            experiment_path=plan.store.path,
            attempt=attempt,
            working_dir=self.workdir.path,
        )
        self.restored: Checkpoint | None = None
        self.records: list[CheckpointRecord] = []
        self.best: tuple[CheckpointRecord, ...] = ()
        self.next_index = 0
        self.iteration = 0
        self.last_metrics: dict[str, Any] = {}
        self.best_score: float | None = None
        self.stopped_early: str | None = None
        self.history: list[tuple[float, float]] = []  # the scheduler's (time, metric)
        self._unreclaimed: set[int] = set()
        rows: tuple[dict[str, Any], ...] = ()
        if resume is not None:
            rows, self.records, self.next_index = resume.rows, list(resume.records), \
                resume.next_index
            _, self.best = plan.ranking.retain(self.records, plan.checkpoint_config.num_to_keep)
            if resume.latest is not None:
                self.restored = self.trial.checkpoint(resume.latest.index)
            for row in rows:
                self._track_best(row)
                if plan.scheduler is not None:
                    self.history.append(_point(plan.scheduler, row, self.history))
            if rows:
                self.iteration = int(rows[-1]["training_iteration"])
                self.last_metrics = dict(rows[-1])
        self.origin: Origin = (socket.gethostname(), os.getpid())
        #: training_iteration when this attempt began, and time_total_s up to then.
        self.restored_iteration = self.iteration
        self.restored_time = _seconds(rows[-1].get("time_total_s")) if rows else 0.0
        self.staged = self.trial.stage(plan.sync_config, plan.local_dir, logger)
        self.log = self.trial.open_log(rows, staged=self.staged, tensorboard=plan.tensorboard)
        if self.staged is not None:
            self.staged.start()
        self.started = self.last_report = time.monotonic()

    def report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None, *,
               origin: Origin | None = None) -> None:
        """`record` the row, then end the trial (TrialDone) if the stop condition holds
        or the scheduler says so."""
        self.record(metrics, checkpoint, origin=origin)
        if self._stops(self.last_metrics):
            raise TrialDone
        self.consult()

    def consult(self) -> None:
        """Ask the sweep's scheduler about the row just recorded; TrialDone if it ends
        the trial (`stopped_early` then says why, unless it reached its budget)."""
        rule = self.plan.scheduler
        if rule is None:
            return
        self.history.append(_point(rule, self.last_metrics, self.history))
        decision = rule.decide(self.plan.store.board, self.spec.trial_id, self.history)
        if decision is None:
            if self.until is not None and self.history[-1][0] >= self.until:
                raise TrialPaused
            return
        if decision.early:
            self.stopped_early = decision.reason
        self.logger.info("trial %s %s: %s", self.spec.trial_name,
                         "stopped early" if decision.early else "finished", decision.reason)
        raise TrialDone

    def stop_reached(self, metrics: Mapping[str, Any]) -> bool:
        """Whether the stop condition holds for `metrics` as the next row."""
        return self._stops({**metrics, **self._auto_fields(self.iteration + 1, None,
                                                           time.monotonic(), None)})

    def _stops(self, row: Mapping[str, Any]) -> bool:
        condition = self.plan.stop_condition
        if condition is None:
            return False
        if callable(condition):
            return bool(condition(self.spec.trial_id, dict(row)))
        flat = flatten(row)
        for key, threshold in condition.items():
            if key not in flat:
                raise MetricError(
                    f"stop condition {key!r} is not among the reported metrics "
                    f"{sorted(flat)}; report it in every result, or change RunConfig(stop=...)"
                )
            value = flat[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and value >= threshold:
                return True
        return False

    def record(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None, *,
               origin: Origin | None = None) -> None:
        """Write one result row and its checkpoint (committed, then retention applied);
        the row's `pid` and `hostname` are `origin`'s, if given."""
        now = time.monotonic()  # the report's time: its checkpoint's upload is the next's
        if self.plan.stop.is_set():
            raise TrialStopped(f"trial {self.spec.trial_name} was stopped by the sweep")
        if self.staged is not None:
            self.staged.check()  # a periodic sync that failed ends the trial here
        clean = self._clean(metrics)
        persist = checkpoint is not None and self.plan.checkpoint_config.num_to_keep != 0
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise CheckpointError(
                f"report(checkpoint=...) got {type(checkpoint).__name__}; pass a Checkpoint "
                "made with Checkpoint.from_directory() or Checkpoint.from_dict()"
            )
        ranking = self.plan.ranking
        score = ranking.score(clean)  # a non-numeric score fails before any write
        if persist and ranking.required and score is None:
            raise MetricError(
                f"report() with a checkpoint has no {ranking.attribute!r} metric (got "
                f"{sorted(clean) or 'none'}); checkpoints are ranked by "
                f"checkpoint_score_attribute={ranking.attribute!r}, so report it with every "
                "checkpoint"
            )
        dir_name = None
        if persist:
            assert checkpoint is not None
            index = self.next_index
            self.next_index += 1
            dir_name = checkpoint_dir_name(index)
            with checkpoint.as_directory() as local:
                if self.staged is not None:  # committed by the sync below
                    self.staged.stage_checkpoint(dir_name, local)
                else:
                    self.trial.commit_checkpoint(index, local)
        self.iteration += 1
        row = {**clean, **self._auto_fields(self.iteration, dir_name, now, origin)}
        self.last_report = now
        self.log.append(row, durable=persist)
        if persist and self.staged is not None:
            self.staged.sync()
        self.last_metrics = row
        self._track_best(clean)
        if persist:
            self.records.append(CheckpointRecord(self.next_index - 1, clean))
            self._retain()
            sync = self.plan.sync_config
            if sync.sync_artifacts and sync.sync_artifacts_on_checkpoint:
                self.workdir.sync()
        elif self._unreclaimed:
            self._reclaim()

    def _auto_fields(self, iteration: int, dir_name: str | None, now: float,
                     origin: Origin | None) -> dict[str, Any]:
        """The AUTO_KEYS of row `iteration` reported at `now` (time.monotonic())."""
        wall = time.time()
        hostname, pid = origin or self.origin
        return {
            "training_iteration": iteration,
            "trial_id": self.spec.trial_id,
            "timestamp": round(wall, 3),
            "checkpoint_dir_name": dir_name,
            "done": False,
            "date": time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(wall)),
            "time_this_iter_s": round(now - self.last_report, 6),
            "time_total_s": round(self.restored_time + now - self.started, 6),
            "iterations_since_restore": iteration - self.restored_iteration,
            "pid": pid,
            "hostname": hostname,
        }

    def _clean(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(metrics, Mapping):
            raise MetricError(f"report() needs a dict of metrics, got {type(metrics).__name__}")
        clean = {}
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise MetricError(f"metric name {key!r} is not a string")
            if key in AUTO_KEYS:
                ending = " (a trial ends when its trainable returns, or by RunConfig(stop=" \
                    "...))" if key == "done" else ""
                raise MetricError(
                    f"metric {key!r} is set by prefect-tune on every row; rename yours"
                    f"{ending}. Reserved: {', '.join(AUTO_KEYS)}"
                )
            clean[key] = to_json_value(value, f"metric {key!r}")
        return clean

    def _track_best(self, metrics: Mapping[str, Any]) -> None:
        score = self.plan.ranking.score(metrics)
        if self.plan.ranking.better(score, self.best_score):
            self.best_score = score

    def _retain(self) -> None:
        """Drop what retention no longer keeps: records first, then files."""
        kept, self.best = self.plan.ranking.retain(self.records,
                                                   self.plan.checkpoint_config.num_to_keep)
        kept_indexes = {r.index for r in kept}
        self._unreclaimed |= {r.index for r in self.records if r.index not in kept_indexes}
        self.records = list(kept)
        self._reclaim()

    def _reclaim(self) -> None:
        """Delete evicted checkpoints; a failed delete is logged and retried later."""
        for index in sorted(self._unreclaimed):
            try:
                self.trial.delete_checkpoint(index)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.logger.warning(
                    "could not delete %s of %s (will retry): %s",
                    checkpoint_dir_name(index), self.spec.trial_name, exc,
                )
                continue
            self._unreclaimed.discard(index)

    def close(self) -> None:
        """Copy the working directory (with `sync_artifacts`; an empty one is removed),
        flush the result log, sync the staging directory a last time (and remove it), and
        retry any failed deletes."""
        if self.plan.sync_config.sync_artifacts:
            self.workdir.sync()
        self.workdir.close()
        self.log.close()
        if self.staged is not None:
            self.staged.close()
        self._reclaim()

    def outcome(self, status: TrialStatus, error: str | None = None) -> TrialOutcome:
        return TrialOutcome(
            trial_id=self.spec.trial_id,
            trial_name=self.spec.trial_name,
            config=self.spec.config,
            status=status,
            last_metrics=self.last_metrics,
            num_reports=self.iteration,
            checkpoints=tuple(self.records),
            best_checkpoints=self.best,
            best_score=self.best_score,
            error=error,
            attempts=self.context.attempt,
            stopped_early=self.stopped_early,
        )


def _seconds(value: Any) -> float:
    """A stored time_total_s; 0 for a row without one (written by an older version)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        return 0.0
    return float(value)


def _point(rule: SchedulerRule, row: Mapping[str, Any],
           history: list[tuple[float, float]]) -> tuple[float, float]:
    """The (time, metric) the scheduler reads from `row`.

    Raises:
        MetricError: either is missing or not a number, or time did not increase.
    """
    flat = flatten(row)
    point = []
    for role, name in (("time_attr", rule.time_attr), ("metric", rule.metric)):
        value = flat.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MetricError(
                f"the scheduler's {role} {name!r} is "
                + (f"{value!r}, not a number" if name in flat else
                   f"not among the reported metrics {sorted(flat)}")
                + f"; report it with every result, or set the scheduler's {role}"
            )
        point.append(float(value))
    if history and point[0] <= history[-1][0]:
        raise MetricError(
            f"the scheduler's time_attr {rule.time_attr!r} went from {history[-1][0]:g} to "
            f"{point[0]:g}; it must increase with every report (training_iteration does)"
        )
    return point[0], point[1]


_SESSION: ContextVar[Session | None] = ContextVar("prefect_tune_trial", default=None)


def _session(caller: str) -> Session:
    session = _SESSION.get()
    if session is None:
        raise OutsideTrialError(
            f"{caller}() was called outside a trial; call it from the trainable that "
            "Tuner.fit() runs"
        )
    return session


def report(metrics: Mapping[str, Any], *, checkpoint: Checkpoint | None = None) -> None:
    """Record one result row of the running trial, with an optional checkpoint.

    The checkpoint is committed to storage and old ones deleted per CheckpointConfig
    before this returns. Once the row meets `RunConfig(stop=...)`, it does not return:
    the trial ends there as TERMINATED.

    Raises:
        OutsideTrialError: not inside a trial.
        MetricError: a metric is not JSON-serialisable or lacks the score attribute.
    """
    _session("report").report(metrics, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint to resume from, or None on a fresh start."""
    return _session("get_checkpoint").restored


def get_context() -> TrialContext:
    """Identity and storage location of the running trial."""
    return _session("get_context").context
