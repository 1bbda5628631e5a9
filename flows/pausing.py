"""What the sweep runs next: every trial in turn (`Queue`), or, for a scheduler that
pauses trials at milestones, the segment it chooses (`Promotion`: ASHA with promotion,
`Bracketed`: HyperBand, `Population`: population-based training).

A segment is one task run of a trial that trains until a milestone of the scheduler's
time_attr (`TrialWork.until`), then pauses: its latest checkpoint is committed and it
is recorded PAUSED with the row it reached. A planner resumes a paused trial as the next
segment, from that checkpoint, or ends it. Every decision is written before it is acted
on, as trial states and board records (`prefect_tune.storage.board`), so a restored
sweep rebuilds the planner from storage alone and goes on as the interrupted one would.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from prefect import get_run_logger

from prefect_tune.flows.schedulers import (
    ASHAScheduler,
    HyperBandScheduler,
    PopulationBasedTraining,
    Scheduler,
)
from prefect_tune.storage import (
    CheckpointError,
    ExperimentStore,
    StorageError,
    TrialOutcome,
    TrialStatus,
)
from prefect_tune.storage.board import Board
from prefect_tune.storage.records import checkpoint_dir_name, flatten
from prefect_tune.storage.scratch import scratch_dir
from prefect_tune.tasks.trial import TrialWork

#: Board keys of the decisions a planner writes.
UNTIL, SEGMENT = "until", "segment"


class Source(Protocol):
    """Where new trials come from (`prefect_tune.flows.suggest.Suggestions`)."""

    @property
    def exhausted(self) -> bool:
        """Whether no trial will come any more."""

    def next(self) -> TrialWork | None:
        """A new trial; None: none now."""


class Planner(Protocol):
    def next(self) -> TrialWork | None:
        """The segment to run in a free slot; None: nothing now."""

    def ended(self, outcome: TrialOutcome) -> list[TrialOutcome]:
        """A segment ended with `outcome`; returns the paused trials this ends
        (TERMINATED, `stopped_early` saying why), to be recorded."""

    def finish(self) -> list[TrialOutcome]:
        """Once nothing runs and `next` has nothing: the paused trials it ends, which it
        would never resume."""

    def unstarted(self) -> list[TrialWork]:
        """The trials it has not started (recorded STOPPED when the sweep stops)."""

    def restored(self) -> list[TrialOutcome]:
        """The trials it ended as it was rebuilt from storage (decisions an interrupted
        sweep took but did not record)."""


class Queue:
    """Every trial to its end, in order: those to resume, then new ones."""

    def __init__(self, work: Iterable[TrialWork], source: Source) -> None:
        self._work, self._source = deque(work), source

    def next(self) -> TrialWork | None:
        return self._work.popleft() if self._work else self._source.next()

    def ended(self, outcome: TrialOutcome) -> list[TrialOutcome]:
        return []

    def finish(self) -> list[TrialOutcome]:
        return []

    def unstarted(self) -> list[TrialWork]:
        return list(self._work)

    def restored(self) -> list[TrialOutcome]:
        return []


def planner_for(scheduler: Scheduler | None, work: Sequence[TrialWork],
                store: ExperimentStore, trials: Sequence[str], source: Source,
                kept: Sequence[TrialOutcome] = ()) -> Planner:
    """The planner `scheduler` (bound to its metric and mode) needs for `work`, out of
    the experiment's `trials` so far (ids, in the order they were added), of which those
    that ended in an earlier run are `kept`; new trials come from `source`."""
    if isinstance(scheduler, ASHAScheduler) and scheduler.promotion:
        return Promotion(scheduler, work, store.board, trials, source)
    if isinstance(scheduler, HyperBandScheduler):
        return Bracketed(scheduler, work, store.board, trials, source)
    if isinstance(scheduler, PopulationBasedTraining):
        return Population(scheduler, work, store, trials, source, kept)
    return Queue(work, source)


class _Segments:
    """What both pausing planners share: trials to start, paused trials, segments to
    run, and the journal of decisions on the board."""

    def __init__(self, scheduler: ASHAScheduler | HyperBandScheduler | PopulationBasedTraining,
                 work: Sequence[TrialWork], board: Board, trials: Sequence[str],
                 source: Source) -> None:
        self.scheduler, self.board, self.source = scheduler, board, source
        self.order = {t: i for i, t in enumerate(trials)}
        self.work = {w.spec.trial_id: replace(w, restart=False) for w in work}
        self.paused: dict[str, TrialOutcome] = {}
        self.queued: deque[TrialWork] = deque()  # decided, to run before anything new
        self.new: deque[TrialWork] = deque()
        until = board.values(UNTIL)
        self.segments = {t: int(s) for t, s in board.values(SEGMENT).items()}
        for item in work:
            trial, prior = item.spec.trial_id, item.prior
            if prior is not None and prior.status is TrialStatus.PAUSED and \
                    not self._decided(prior, until.get(trial)):
                self.paused[trial] = prior
            elif trial in until:  # its segment began before the sweep was interrupted
                self.queued.append(self._segment(item, until[trial] or None))
            else:
                self.new.append(item)

    @property
    def more(self) -> bool:
        """Whether a trial is left to start (one may come from the source)."""
        return bool(self.new) or not self.source.exhausted

    def take_new(self) -> TrialWork | None:
        """The next trial to start: left from an earlier run, else a new one."""
        if self.new:
            return self.new.popleft()
        item = self.source.next()
        if item is not None:
            trial = item.spec.trial_id
            self.order[trial] = len(self.order)
            self.work[trial] = item
        return item

    def _decided(self, paused: TrialOutcome, until: float | None) -> bool:
        """Whether a resume of `paused` was decided (its next milestone recorded)."""
        return until is not None and (until == 0 or until > self.point(paused)[0])

    def point(self, outcome: TrialOutcome) -> tuple[float, float]:
        """(time, metric) of the row a trial reached."""
        flat = flatten(outcome.last_metrics)
        scheduler = self.scheduler
        return float(flat[scheduler.time_attr]), float(flat[str(scheduler.metric)])

    def rank(self, trials: Iterable[str], values: dict[str, float]) -> list[str]:
        """`trials` best first (earliest first among equals)."""
        sign = 1 if self.scheduler.mode == "max" else -1
        return sorted(trials, key=lambda t: (-sign * values[t], self.order[t]))

    def start(self, item: TrialWork, until: float | None) -> TrialWork:
        """Record, then return, the next segment of `item`, to pause at `until` (None:
        to max_t, its end)."""
        trial = item.spec.trial_id
        self.segments[trial] = self.segments.get(trial, -1) + 1
        self.board.post(SEGMENT, trial, self.segments[trial])
        self.board.post(UNTIL, trial, until or 0)
        return self._segment(item, until)

    def resume(self, trial: str, until: float | None) -> TrialWork:
        prior = self.paused.pop(trial)
        return self.start(replace(self.work[trial], prior=prior), until)

    def _segment(self, item: TrialWork, until: float | None) -> TrialWork:
        if until is not None and until >= self.scheduler.max_t:
            until = None
        return replace(item, until=until, segment=self.segments.get(item.spec.trial_id, 0))

    def end(self, trial: str, reason: str) -> TrialOutcome:
        outcome = self.paused.pop(trial)
        return replace(outcome, status=TrialStatus.TERMINATED, stopped_early=reason)

    def unstarted(self) -> list[TrialWork]:
        return list(self.new)

    def restored(self) -> list[TrialOutcome]:
        return []


class Promotion(_Segments):
    """ASHA as its paper has it: a trial pauses at each rung; a free slot first resumes
    the best paused trial that is in the best 1/reduction_factor of its rung, from the
    highest rung down, else starts a new trial. Once no trial is left to start, each
    rung promotes at least its best trial, so the best trials reach max_t; when nothing
    more qualifies, the paused trials end (TERMINATED, stopped early)."""

    scheduler: ASHAScheduler

    def __init__(self, scheduler: ASHAScheduler, work: Sequence[TrialWork],
                 board: Board, trials: Sequence[str], source: Source) -> None:
        super().__init__(scheduler, work, board, trials, source)
        #: Each (bracket, rung)'s values: of the trials paused there and of those promoted.
        self.reached = {(b, k): board.values(self._key(b, k))
                        for b in range(scheduler.brackets)
                        for k in range(len(scheduler.rungs(b)))}
        for trial in self.paused:
            self._arrive(trial)

    def _key(self, bracket: int, rung: int) -> str:
        return f"asha-b{bracket}-{self.scheduler.rungs(bracket)[rung]:g}"

    def _rung(self, trial: str) -> tuple[int, int]:
        """The (bracket, rung) paused trial `trial` is at."""
        bracket = self.scheduler.bracket(trial)
        time = self.point(self.paused[trial])[0]
        return bracket, sum(m <= time for m in self.scheduler.rungs(bracket)) - 1

    def _arrive(self, trial: str) -> None:
        bracket, rung = self._rung(trial)
        value = self.point(self.paused[trial])[1]
        self.reached[bracket, rung][trial] = value
        self.board.post(self._key(bracket, rung), trial, value)

    def next(self) -> TrialWork | None:
        if self.queued:
            return self.queued.popleft()
        for (bracket, rung), values in sorted(self.reached.items(), key=lambda kv: -kv[0][1]):
            count = int(len(values) // self.scheduler.reduction_factor)
            if not self.more:  # nothing left to start: each rung promotes its best at least
                count = max(count, 1)
            top = self.rank(values, values)[:count]
            for trial in top:
                if trial in self.paused and self._rung(trial) == (bracket, rung):
                    rungs = self.scheduler.rungs(bracket)
                    return self.resume(trial, rungs[rung + 1] if rung + 1 < len(rungs) else None)
        item = self.take_new()
        if item is None:
            return None
        return self.start(item, self.scheduler.rungs(self.scheduler.bracket(
            item.spec.trial_id))[0])

    def ended(self, outcome: TrialOutcome) -> list[TrialOutcome]:
        if outcome.status is TrialStatus.PAUSED:
            self.paused[outcome.trial_id] = outcome
            self._arrive(outcome.trial_id)
        return []

    def finish(self) -> list[TrialOutcome]:
        ended = []
        for trial in sorted(self.paused, key=self.order.__getitem__):
            bracket, rung = self._rung(trial)
            ended.append(self.end(trial, (
                f"not promoted past rung {self.scheduler.rungs(bracket)[rung]:g}: outside "
                f"the best 1/{self.scheduler.reduction_factor:g} of the "
                f"{len(self.reached[bracket, rung])} trials there when no trial was left "
                "to start")))
        return ended


class Bracketed(_Segments):
    """HyperBand: trials fill brackets in order; in a bracket every live trial trains to
    the same milestone and pauses; once all have, the best 1/reduction_factor resume to
    the next milestone and the others end (stopped early). A bracket waits only for
    trials that run or are about to start, so no sweep hangs with every trial paused."""

    scheduler: HyperBandScheduler

    def __init__(self, scheduler: HyperBandScheduler, work: Sequence[TrialWork],
                 board: Board, trials: Sequence[str], source: Source) -> None:
        super().__init__(scheduler, work, board, trials, source)
        self.bracket = scheduler.assign(trials)
        self.members = Counter(self.bracket.values())
        #: Trials to run or resume: neither ended, nor past their last milestone.
        self.live = {t for t, w in self.work.items()
                     if w.prior is None or w.prior.status is not TrialStatus.TERMINATED}
        self._restored = [ended for bracket in sorted({self.bracket[t] for t in self.paused})
                          for ended in self._settle(bracket)]

    def restored(self) -> list[TrialOutcome]:
        ended, self._restored = self._restored, []
        return ended

    def next(self) -> TrialWork | None:
        if self.queued:
            return self.queued.popleft()
        item = self.take_new()
        if item is None:
            return None
        trial = item.spec.trial_id
        if trial not in self.bracket:
            self.bracket[trial] = self.scheduler.bracket_at(len(self.bracket))
            self.members[self.bracket[trial]] += 1
            self.live.add(trial)
        milestones = self.scheduler.milestones(self.bracket[trial])
        return self.start(item, milestones[0] if milestones else None)

    def ended(self, outcome: TrialOutcome) -> list[TrialOutcome]:
        if outcome.status is TrialStatus.PAUSED:
            self.paused[outcome.trial_id] = outcome
        else:
            self.live.discard(outcome.trial_id)
        return self._settle(self.bracket[outcome.trial_id])

    def _settle(self, bracket: int) -> list[TrialOutcome]:
        """Once `bracket` has all its trials (or no more will come) and every live one
        paused at its milestone, queue the best to resume and end the rest; returns those
        it ended."""
        members = [t for t in self.live if self.bracket[t] == bracket]
        full = self.members[bracket] >= self.scheduler.bracket_size(bracket) or not self.more
        if not full or not members or any(t not in self.paused for t in members):
            return []
        values = {t: self.point(self.paused[t])[1] for t in members}
        time = max(self.point(self.paused[t])[0] for t in members)
        keep = max(int(len(members) // self.scheduler.reduction_factor), 1)
        ranked = self.rank(members, values)
        later = [m for m in self.scheduler.milestones(bracket) if m > time]
        for trial in ranked[:keep]:
            self.queued.append(self.resume(trial, later[0] if later else None))
        ended = []
        for trial in ranked[keep:]:
            self.live.discard(trial)
            ended.append(self.end(trial, (
                f"outside the best {keep} of the {len(members)} trials of its HyperBand "
                f"bracket at {self.scheduler.time_attr}={time:g}")))
        return ended

    def finish(self) -> list[TrialOutcome]:
        """Settle the brackets no trial will join any more; once none is left to settle,
        end the paused trials."""
        ended = [e for b in sorted({self.bracket[t] for t in self.paused})
                 for e in self._settle(b)]
        if ended or self.queued:
            return ended
        return [self.end(t, "its HyperBand bracket ended") for t in list(self.paused)]


class Population(_Segments):
    """Population-based training: each trial pauses every perturbation interval; one in
    the worst quantile of the population (by each trial's latest score) then exploits
    one in the best, drawn from the scheduler's seed, the trial and the time: the donor's
    latest checkpoint is copied into the trial's own latest (so the donor's retention
    cannot take it away), its config explored, and the exploit added to the trial's
    perturbations.json before it resumes; any other trial resumes as it was."""

    scheduler: PopulationBasedTraining

    def __init__(self, scheduler: PopulationBasedTraining, work: Sequence[TrialWork],
                 store: ExperimentStore, trials: Sequence[str], source: Source,
                 kept: Sequence[TrialOutcome]) -> None:
        work = [_current(store, item) for item in work]
        super().__init__(scheduler, work, store.board, trials, source)
        self.store = store
        #: Each trial's latest outcome with a score: the population, and the donors.
        self.latest: dict[str, TrialOutcome] = {
            o.trial_id: o for o in [*kept, *(w.prior for w in work if w.prior)]
            if _scored(o, scheduler)}
        for outcome in list(self.paused.values()):
            self.queued.append(self._perturb(outcome))

    def next(self) -> TrialWork | None:
        if self.queued:
            return self.queued.popleft()
        item = self.take_new()
        return None if item is None else self.start(item, self.scheduler.next_point(0))

    def ended(self, outcome: TrialOutcome) -> list[TrialOutcome]:
        if _scored(outcome, self.scheduler):
            self.latest[outcome.trial_id] = outcome
        if outcome.status is TrialStatus.PAUSED:
            self.paused[outcome.trial_id] = outcome
            self.queued.append(self._perturb(outcome))
        return []

    def finish(self) -> list[TrialOutcome]:
        return []

    def _quantiles(self) -> tuple[list[str], list[str]]:
        """The worst and the best trials of the population by their latest scores."""
        values = {t: self.point(o)[1] for t, o in self.latest.items()}
        ranked = self.rank(values, values)  # best first
        if len(ranked) <= 1:
            return [], []
        count = min(math.ceil(len(ranked) * self.scheduler.quantile_fraction),
                    len(ranked) // 2)
        return ranked[len(ranked) - count:], ranked[:count]

    def _perturb(self, paused: TrialOutcome) -> TrialWork:
        """The next segment of `paused`: exploiting a better trial if it is among the
        worst (or if it was decided before the sweep was interrupted), else as it is."""
        trial = paused.trial_id
        time = self.point(paused)[0]
        history = self.store.trial(paused.trial_name).read_perturbations()
        entry: dict[str, Any] | None
        if history and history[-1]["time"] == time and "donor" in history[-1]:  # finish it
            entry = history[-1]
        else:
            worst, best = self._quantiles()
            entry = self._choose(paused, best) if trial in worst and best else None
        if entry is not None:
            paused = self._exploit(paused, entry, fresh=not history or history[-1] != entry)
            self.paused[trial] = paused
            self.work[trial] = replace(self.work[trial],
                                       spec=replace(self.work[trial].spec, config=paused.config))
        return self.resume(trial, self.scheduler.next_point(time))

    def _choose(self, paused: TrialOutcome, best: list[str]) -> dict[str, Any] | None:
        time = self.point(paused)[0]
        rng = self.scheduler.rng(paused.trial_id, time)
        donor = self.latest[rng.choice(best)]
        checkpoint = donor.latest_checkpoint
        if checkpoint is None or paused.latest_checkpoint is None:
            return None  # nothing to copy, or nothing to copy into: it goes on as it is
        return {"time": time, "donor": donor.trial_id, "donor_name": donor.trial_name,
                "donor_checkpoint": checkpoint_dir_name(checkpoint.index),
                "donor_index": checkpoint.index,
                "config": self.scheduler.explore(donor.config, rng)}

    def _exploit(self, paused: TrialOutcome, entry: dict[str, Any], fresh: bool
                 ) -> TrialOutcome:
        """Copy the donor's checkpoint here, record the exploit (when `fresh`), then make
        the copy the trial's latest checkpoint; returns the trial with its new config.

        A donor checkpoint that is gone (a running donor's retention took it) leaves the
        trial as it is, with a warning; an exploit recorded before (the sweep died while
        carrying it out) is then called off in the record. A storage fault after the
        record fails the sweep: a restore carries the recorded exploit out."""
        trial = self.store.trial(paused.trial_name)
        latest = paused.latest_checkpoint
        assert latest is not None
        local = scratch_dir("exploit-")
        try:
            try:
                self.store.trial(entry["donor_name"]).checkpoint(entry["donor_index"]) \
                    .to_directory(local)
            except (CheckpointError, StorageError, OSError) as exc:
                if not fresh:
                    trial.append_perturbation({"time": entry["time"], "cancelled": True,
                                               "config": dict(paused.config)})
                get_run_logger().warning("trial %s could not exploit %s (%s); it goes on as "
                                         "it is", paused.trial_name, entry["donor"], exc)
                return paused
            if fresh:
                trial.append_perturbation(entry)
            trial.replace_checkpoint(latest.index, local)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        get_run_logger().info(
            "trial %s exploits %s at %s=%g: it goes on from %s's %s with %s",
            paused.trial_name, entry["donor"], self.scheduler.time_attr, entry["time"],
            entry["donor"], entry["donor_checkpoint"], entry["config"])
        return replace(paused, config=entry["config"])


def _current(store: ExperimentStore, item: TrialWork) -> TrialWork:
    """`item` with the config its trial has now: of its latest exploit, if any."""
    history = store.trial(item.spec.trial_name).read_perturbations() if item.prior else []
    if not history:
        return item
    return replace(item, spec=replace(item.spec, config=history[-1]["config"]))


def _scored(outcome: TrialOutcome, scheduler: PopulationBasedTraining) -> bool:
    flat = flatten(outcome.last_metrics)
    return scheduler.metric in flat and scheduler.time_attr in flat
