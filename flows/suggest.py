"""`Suggestions`: the sweep's new trials, asked of its searcher one free slot at a time.

Each trial is recorded in the experiment (`ExperimentStore.add_trial`) before it is
handed out, so a sweep killed at any point loses no suggestion and a restore runs none
twice. The searcher hears of every trial's end through `ended`; a restore replays the
stored trials into a fresh searcher first (`replay`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import get_run_logger

from prefect_tune.flows.search import BasicVariantGenerator
from prefect_tune.flows.search_space import validate_space
from prefect_tune.flows.searcher import RestoredState, Searcher
from prefect_tune.storage import (
    ConfigError,
    ExperimentStore,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
)
from prefect_tune.storage.layout import trial_id, trial_name
from prefect_tune.tasks.trial import TrialWork


class Suggestions:
    """New trials of `searcher` for the experiment in `store`, numbered after its
    `known` ones, until `budget` trials exist (None: no limit) or the searcher
    finishes."""

    def __init__(self, searcher: Searcher, store: ExperimentStore, trainable: str,
                 prefix: str, known: int, budget: int | None) -> None:
        self.searcher, self.store = searcher, store
        self.trainable, self.prefix = trainable, prefix
        self.count, self.budget = known, budget
        self.added: list[TrialSpec] = []
        self._finished = False

    @property
    def exhausted(self) -> bool:
        """Whether no trial will be added any more."""
        return self._finished or (self.budget is not None and self.count >= self.budget)

    def next(self) -> TrialWork | None:
        """A new trial, recorded; None: none now (or none any more: `exhausted`).

        Raises:
            ConfigError: the searcher suggested something that is not a config.
        """
        if self.exhausted:
            return None
        tid = trial_id(self.prefix, self.count)
        config = self.searcher.suggest(tid)
        if config is None:
            return None
        if config == Searcher.FINISHED:
            self._finished = True
            return None
        if not isinstance(config, dict):
            raise ConfigError(
                f"{type(self.searcher).__name__}.suggest({tid!r}) returned {config!r:.80}; "
                "a searcher returns a config dict, None (nothing now) or Searcher.FINISHED")
        try:
            validate_space(config)
        except ConfigError as exc:
            raise ConfigError(f"{type(self.searcher).__name__}.suggest({tid!r}) returned a "
                              f"config that is not plain JSON data: {exc}") from None
        spec = TrialSpec(tid, trial_name(self.trainable, tid), config)
        self.store.add_trial(self.count, spec)
        self.count += 1
        self.added.append(spec)
        return TrialWork(spec)

    def rest(self, limit: int = 1000) -> list[TrialWork]:
        """The trials grid and random search has yet to start (at most `limit`), each
        recorded now: fail_fast records them STOPPED, so that the results list them and a
        restore runs them. Adaptive searchers have none (their trials depend on results
        not yet in)."""
        if not isinstance(self.searcher, BasicVariantGenerator):
            return []
        rest: list[TrialWork] = []
        while len(rest) < limit and (item := self.next()) is not None:
            rest.append(item)
        return rest

    def close(self) -> None:
        """No trial runs and the searcher suggested none: the search is over."""
        if not self.exhausted:
            get_run_logger().warning(
                "%s suggested no trial while none ran; the sweep ends with %d trials",
                type(self.searcher).__name__, self.count)
        self._finished = True

    def ended(self, outcome: TrialOutcome) -> None:
        """Tell the searcher of a trial's (or a segment's) end."""
        searcher, trial = self.searcher, outcome.trial_id
        last = dict(outcome.last_metrics) or None
        if outcome.status is TrialStatus.PAUSED:
            if last:
                searcher.on_trial_result(trial, last)
        elif outcome.status is TrialStatus.TERMINATED and outcome.stopped_early:
            searcher.on_trial_pruned(trial, last)
        elif outcome.status is TrialStatus.TERMINATED:
            if last:
                searcher.on_trial_result(trial, last)
            searcher.on_trial_complete(trial, last)
        elif outcome.status is TrialStatus.ERROR:
            searcher.on_trial_complete(trial, last, error=True)


def replay(searcher: Searcher, specs: Sequence[TrialSpec],
           outcomes: Mapping[str, TrialOutcome | None], rerun: set[str]) -> None:
    """Tell a fresh `searcher` of the experiment's trials `specs`, in the order they were
    added: those in `rerun` as running, the others as they ended (a trial never recorded
    as ended counts as running)."""
    for spec in specs:
        outcome = outcomes.get(spec.trial_id)
        state: RestoredState = "running"
        result: dict[str, Any] | None = None
        if outcome is not None and spec.trial_id not in rerun:
            result = dict(outcome.last_metrics) or None
            if outcome.status is TrialStatus.ERROR:
                state = "error"
            elif outcome.status is TrialStatus.TERMINATED:
                state = "pruned" if outcome.stopped_early else "complete"
        searcher.on_trial_restored(spec.trial_id, dict(spec.config), state, result)
