"""What a sweep runs, decided before it runs: the plan, and which trials a resume runs.

Pure functions of their arguments (no storage, no Prefect API): `SweepPlan` holds the
storage resolved once per run and, for a restore, the stored experiment; `plan_trials`
decides from the trials' stored outcomes and the `Resume` policy what each trial does.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any

from prefect_tune.flows.config import TuneConfig, stored_configs
from prefect_tune.flows.resources import (
    capacity,
    check_isolation,
    cluster_capacity,
    on_dask,
    resources_of,
)
from prefect_tune.flows.search import Searcher
from prefect_tune.flows.search_space import space_to_json
from prefect_tune.storage import (
    ConfigError,
    Ranking,
    RunConfig,
    Storage,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    resolve_storage,
    storage_from_block,
)
from prefect_tune.storage.config import DEFAULT_STORAGE_PATH, StopCondition
from prefect_tune.storage.layout import new_trial_prefix
from prefect_tune.storage.state import ExperimentRecord
from prefect_tune.tasks.devices import visible_gpus
from prefect_tune.tasks.plan import Resources
from prefect_tune.tasks.trial import TrialWork


@dataclass(frozen=True)
class Resume:
    """Which trials a restore runs again, by their stored status.

    Finished (TERMINATED) trials are kept unless `finished`, which resubmits them so that
    Prefect returns their cached outcome (a flow-run retry shows them as Cached).
    Unfinished ones run again unless `unfinished=False`, which records them STOPPED.
    """

    unfinished: bool = True
    errored: bool = False
    restart_errored: bool = False
    finished: bool = False


@dataclass(frozen=True)
class StoredExperiment:
    """An experiment read back from storage, and how to continue it."""

    record: ExperimentRecord
    resume: Resume


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep, ready to run in `storage`; `stored` set: continue that one."""

    name: str
    trainable: Callable[[dict[str, Any]], Any]
    trainable_name: str
    param_space: Mapping[str, Any]
    tune_config: TuneConfig
    run_config: RunConfig
    storage: Storage
    stored: StoredExperiment | None = None

    @property
    def resources(self) -> Resources | None:
        """What each trial needs: TuneConfig's resources_per_trial, else the trainable's."""
        spec = self.tune_config.resources_per_trial
        return Resources.parse(spec) if spec is not None else resources_of(self.trainable)

    @cached_property
    def concurrency(self) -> int:
        """max_concurrent_trials (default: the CPU count), at most as many as fit on this
        machine, or on the Dask cluster.

        Raises:
            ConfigError: a trial asks for more than this machine (any Dask worker) has.
        """
        tune = self.tune_config
        wanted = tune.max_concurrent_trials or os.cpu_count() or 1
        resources = self.resources
        if resources is None:
            return wanted
        if on_dask(tune.task_runner):
            check_isolation(resources, tune.isolation)
            return min(wanted, cluster_capacity(tune.task_runner, resources) or wanted)
        return min(wanted, capacity(resources, visible_gpus(), tune.isolation))

    @property
    def ranking(self) -> Ranking:
        tune = self.tune_config
        return Ranking.of(self.run_config.checkpoint_config, tune.metric, tune.mode)


@dataclass(frozen=True)
class TrialsPlan:
    """Every trial of a run: `kept` as stored, `stopped` to be recorded STOPPED (not
    resumed), `work` to submit."""

    kept: tuple[TrialOutcome, ...] = ()
    stopped: tuple[TrialOutcome, ...] = ()
    work: tuple[TrialWork, ...] = ()


def resolve_run_storage(run_config: RunConfig) -> Storage:
    """The storage a RunConfig names: its block, its path, or the default path."""
    if run_config.storage_block is not None:
        return storage_from_block(run_config.storage_block)
    return resolve_storage(run_config.target or DEFAULT_STORAGE_PATH,
                           run_config.storage_options)


def plan_trials(specs: Sequence[TrialSpec], stored: Sequence[TrialOutcome | None],
                resume: Resume | None) -> TrialsPlan:
    """What each trial does in this run, from its stored outcome (None: never recorded)
    and the policy; without a policy (a new experiment) every trial runs.

    TERMINATED: kept (resubmitted with `finished`). ERROR: kept, or resumed from its
    latest checkpoint (`errored`), or restarted from scratch (`restart_errored`). Any
    other (never started, running or stopped when the last run ended): resumed, or with
    `unfinished=False` recorded STOPPED, keeping what its record holds.
    """
    if resume is None:
        return TrialsPlan(work=tuple(TrialWork(spec) for spec in specs))
    kept: list[TrialOutcome] = []
    stopped: list[TrialOutcome] = []
    work: list[TrialWork] = []
    for spec, outcome in zip(specs, stored, strict=True):
        status = outcome.status if outcome is not None else TrialStatus.PENDING
        if outcome is not None and status is TrialStatus.TERMINATED and not resume.finished or outcome is not None and status is TrialStatus.ERROR and not (
            resume.errored or resume.restart_errored
        ):
            kept.append(outcome)
        elif status is TrialStatus.ERROR and resume.restart_errored:
            work.append(TrialWork(spec, outcome, restart=True))
        elif status.is_finished() or resume.unfinished:
            work.append(TrialWork(spec, outcome))
        else:
            base = outcome or TrialOutcome(spec.trial_id, spec.trial_name, spec.config,
                                           TrialStatus.STOPPED, attempts=0)
            stopped.append(replace(base, status=TrialStatus.STOPPED))
    return TrialsPlan(tuple(kept), tuple(stopped), tuple(work))


def new_record(plan: SweepPlan, flow_run_id: str | None) -> ExperimentRecord:
    """The state of a new experiment: its settings, seed and trial id prefix; its trials
    are added as the search suggests them."""
    tune = plan.tune_config
    seed = tune.seed if tune.seed is not None else random.SystemRandom().randrange(2**32)
    return ExperimentRecord(
        trainable=plan.trainable_name,
        seed=seed,
        param_space=space_to_json(plan.param_space),
        trials=(),
        tune=tune.stored(),
        run={
            "checkpoint_config": asdict(plan.run_config.checkpoint_config),
            "failure_config": asdict(plan.run_config.failure_config),
            "stop": stop_to_json(plan.run_config.stop),
            "flow_run_id": flow_run_id,
        },
        trial_prefix=new_trial_prefix(),
    )


def stop_to_json(stop: StopCondition) -> dict[str, Any] | None:
    """How experiment.json records a stop condition: its thresholds, or the name of its
    function (which a restore must be given again)."""
    if stop is None or isinstance(stop, Mapping):
        return None if stop is None else {"thresholds": dict(stop)}
    return {"function": getattr(stop, "__qualname__", repr(stop))}


def continued_settings(
    record: ExperimentRecord, trainable_name: str, run_config: RunConfig,
    task_runner: Any = None, search_alg: Searcher | None = None,
) -> tuple[TuneConfig, RunConfig]:
    """The settings that continue `record`: its own (search, sampling, checkpoints,
    failures, stop thresholds), with `run_config`'s name, storage and stop function and
    the given task runner.

    Raises:
        ConfigError: the experiment was created with another trainable, or with a stop
            function `run_config` lacks.
    """
    if trainable_name != record.trainable:
        raise ConfigError(
            f"experiment {run_config.name!r} was created with trainable "
            f"{record.trainable!r}, not {trainable_name!r}; pass the same trainable"
        )
    tune_config, checkpoint_config, failure_config = stored_configs(record, search_alg,
                                                                     search=True)
    stored_stop = record.run.get("stop") or {}
    stop = run_config.stop
    if "function" in stored_stop and not callable(stop):
        raise ConfigError(
            f"experiment {run_config.name!r} was created with the stop function "
            f"{stored_stop['function']!r}; pass it again: Tuner.restore(path, trainable, "
            "stop=...)"
        )
    if "function" not in stored_stop:
        stop = stored_stop.get("thresholds")
    return (
        replace(tune_config, task_runner=task_runner),
        replace(run_config, checkpoint_config=checkpoint_config,
                failure_config=failure_config, stop=stop),
    )
