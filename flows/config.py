"""`TuneConfig`: how a sweep searches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from prefect_tune.flows.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    Scheduler,
    scheduler_from_json,
)
from prefect_tune.flows.search import BasicVariantGenerator, Searcher, searcher_from_json
from prefect_tune.storage import (
    CheckpointConfig,
    ConfigError,
    FailureConfig,
    Ranking,
    StorageError,
)
from prefect_tune.storage.state import ExperimentRecord
from prefect_tune.tasks.plan import Resources

if TYPE_CHECKING:  # Prefect is imported where a sweep runs, not where one is read
    from prefect.task_runners import TaskRunner

SCHEDULERS = (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
              PopulationBasedTraining)


@dataclass(frozen=True)
class TuneConfig:
    """How many trials to run, how to rank them, how many at once.

    Args:
        metric: Metric that ranks trials ("a/b" for nested); needs `mode`.
        mode: "min" or "max"; needs `metric`.
        num_samples: The trial budget: for the default BasicVariantGenerator, how often
            the search space is sampled (repeating the whole grid); for any other
            searcher, the number of trials. -1: until the searcher says it is finished
            or `time_budget_s` runs out.
        max_concurrent_trials: Trials running at once; default: the CPU count.
        seed: Makes sampling reproducible.
        isolation: How each trial attempt runs: "process" (default) in a process of its
            own, forked in milliseconds from the sweep's warm worker, which imported the
            trainable's module once; "spawn" in a new interpreter that imports it again
            (for modules that start threads or CUDA at import, or must not be forked);
            either way a hard death (SIGKILL, out of memory, a segfault) is a retried
            failure, and nothing one attempt changes reaches another. "thread" runs it
            in the task's thread: no isolation at all. Trials on memory:// storage, which
            lives in one process, always run in a thread.
        tag_trials: Tag each trial's task run with the experiment name (the flow run is
            always tagged). Prefect acquires tag concurrency slots through its API for
            every tagged task run, a round trip that waits behind the server's event
            processing: on Prefect's ephemeral server, 1,000 tiny trials took 34 s tagged
            and 12 s untagged. Turn it off for sweeps of many short trials.
        trial_cards: Put a card on each trial's task run for each attempt (a markdown
            artifact: config, how the attempt ended, its last result). Posted by a
            background thread, but each costs Prefect's server about 8 ms of work (see
            the README's Performance): turn it off for sweeps of many trials that last
            under a second.
        resources_per_trial: {"cpu": n, "gpu": m} each trial needs (see `with_resources`,
            which attaches the same to a trainable; this setting wins). Stored with the
            experiment.
        scheduler: Stops trials that are doing badly (`prefect_tune.flows.schedulers`:
            ASHAScheduler, MedianStoppingRule); default: FIFOScheduler, every trial runs
            to its end. Stored with the experiment, so a restore goes on with it.
        search_alg: Where each new trial's config comes from (`prefect_tune.flows.search`:
            OptunaSearch, ConcurrencyLimiter, Repeater, or your own `Searcher`); default:
            BasicVariantGenerator, grid and random sampling. Stored with the experiment
            (a custom searcher by name only: pass it again to `Tuner.restore`).
        time_budget_s: After this many seconds of the run no new trial starts, and those
            running end STOPPED (a restore resumes them).
        task_runner: The Prefect task runner the trials run on; default: a thread pool
            of `max_concurrent_trials` in the flow's process. For trials on several
            machines use prefect-dask's `DaskTaskRunner(address="tcp://scheduler:8786")`
            with storage every machine sees (cloud storage or a shared mount), and set
            `max_concurrent_trials` to the cluster's size. Not stored with the experiment.
    """

    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    seed: int | None = None
    isolation: Literal["process", "spawn", "thread"] = "process"
    tag_trials: bool = True
    trial_cards: bool = True
    resources_per_trial: Mapping[str, float] | None = None
    scheduler: Scheduler | None = None
    search_alg: Searcher | None = field(default=None, compare=False)
    time_budget_s: float | None = None
    task_runner: TaskRunner[Any] | None = field(default=None, compare=False)

    def stored(self) -> dict[str, Any]:
        """The settings experiment.json keeps: all but the task runner."""
        stored = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("task_runner", "scheduler", "search_alg")}
        if self.scheduler is not None:
            stored["scheduler"] = self.scheduler.to_json()
        if self.search_alg is not None:
            stored["search_alg"] = self.search_alg.to_json()
        return stored

    def searcher(self) -> Searcher:
        """The searcher the sweep asks: search_alg, or a BasicVariantGenerator seeded
        with the experiment's seed."""
        return self.search_alg if self.search_alg is not None else BasicVariantGenerator()

    def bound_scheduler(self) -> Scheduler | None:
        """The scheduler with TuneConfig's metric and mode where it has none; None for
        FIFO (what it decides inside each trial is its `SchedulerRule`)."""
        if self.scheduler is None:
            return None
        return self.scheduler.bind(self.metric, self.mode)

    def __post_init__(self) -> None:
        if self.mode not in (None, "min", "max"):
            raise ConfigError(f'mode={self.mode!r} is invalid: use "min" or "max"')
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ConfigError(f'metric={self.metric!r} is invalid: use a metric name like "loss"')
        if (self.metric is None) != (self.mode is None):
            raise ConfigError(
                f"metric={self.metric!r} and mode={self.mode!r}: set both or neither"
            )
        for name, value, minimum in (
            ("num_samples", self.num_samples, 1),
            ("max_concurrent_trials", self.max_concurrent_trials, 1),
        ):
            if value is None and name == "max_concurrent_trials" or value == -1 and \
                    name == "num_samples":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name}={value!r} is invalid: use an integer >= {minimum}"
                                  + (" (or -1: no limit)" if name == "num_samples" else ""))
        budget = self.time_budget_s
        if budget is not None and (isinstance(budget, bool) or not isinstance(
                budget, int | float) or not budget > 0):
            raise ConfigError(f"time_budget_s={budget!r} is invalid: use a number of "
                              "seconds > 0, or None")
        if isinstance(self.search_alg, Mapping):  # as experiment.json keeps it
            object.__setattr__(self, "search_alg", searcher_from_json(self.search_alg))
        if self.search_alg is not None and not isinstance(self.search_alg, Searcher):
            raise ConfigError(
                f"search_alg={self.search_alg!r} is not a searcher; use one of "
                "prefect_tune.flows.search (OptunaSearch, BasicVariantGenerator, "
                "ConcurrencyLimiter, Repeater) or a subclass of Searcher")
        for name in ("tag_trials", "trial_cards"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.isolation not in ("process", "spawn", "thread"):
            raise ConfigError(
                f'isolation={self.isolation!r} is invalid: use "process", "spawn" or "thread"'
            )
        if self.task_runner is not None:
            from prefect.task_runners import TaskRunner
            if not isinstance(self.task_runner, TaskRunner):
                raise ConfigError(
                    f"task_runner={self.task_runner!r} is not a Prefect task runner; pass "
                    "one such as prefect_dask.DaskTaskRunner(address=...)"
                )
        if self.resources_per_trial is not None:
            Resources.parse(self.resources_per_trial)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed={self.seed!r} is invalid: use an integer")
        if isinstance(self.scheduler, Mapping):  # as experiment.json keeps it
            object.__setattr__(self, "scheduler", scheduler_from_json(self.scheduler))
        if self.scheduler is not None and not isinstance(self.scheduler, SCHEDULERS):
            raise ConfigError(
                f"scheduler={self.scheduler!r} is not a scheduler; use one of "
                "prefect_tune.flows.schedulers: ASHAScheduler, HyperBandScheduler, "
                "MedianStoppingRule, PopulationBasedTraining, FIFOScheduler"
            )
        self.bound_scheduler()  # a scheduler without a metric or mode fails here


def stored_configs(record: ExperimentRecord, search_alg: Searcher | None = None, *,
                   search: bool = False) -> tuple[TuneConfig, CheckpointConfig, FailureConfig]:
    """The settings a stored experiment was created with; with `search`, its searcher
    too (`search_alg` if given: a custom searcher is stored by name only), else none.

    Raises:
        StorageError: a setting this version does not know or accept, naming the file.
        ConfigError: `search` for an experiment with a custom searcher, and no
            `search_alg`.
    """
    tune = dict(record.tune)
    stored = tune.pop("search_alg", None)
    if search and (search_alg is not None or stored is not None):
        tune["search_alg"] = search_alg if search_alg is not None else \
            searcher_from_json(stored)
    try:
        return (
            TuneConfig(**tune),
            CheckpointConfig(**record.run["checkpoint_config"]),
            FailureConfig(**record.run["failure_config"]),
        )
    except (TypeError, KeyError, ConfigError) as exc:
        raise StorageError(
            f"{record.where or 'experiment.json'} holds settings this prefect-tune cannot "
            f"use ({exc}); it was written by another version, or damaged"
        ) from exc


def stored_ranking(record: ExperimentRecord) -> Ranking:
    tune, checkpoints, _ = stored_configs(record)
    return Ranking.of(checkpoints, tune.metric, tune.mode)
