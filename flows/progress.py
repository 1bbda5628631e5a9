"""`ProgressReporter`: how a sweep is doing, in its log and on the terminal.

A line when each trial ends (its metric, how many trials are done, the best so far) and,
unless a live table shows the same on the terminal (`flows/live.py`), a summary every
`CLIReporter.max_report_frequency` seconds while trials report: counts by status,
elapsed time, the best trial with its metric and config, and each running trial's
latest metric and iteration. Lines go to the flow run's log, so they reach the
terminal of `Tuner.fit()`, a worker's log and the Prefect UI alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

from prefect import get_run_logger

from prefect_tune.flows.table import cell
from prefect_tune.storage import Callback, CLIReporter, TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.storage.ranking import Order, best_by, rank_key, value_of
from prefect_tune.storage.records import flatten

#: How a summary names each status.
WORDS = {TrialStatus.PENDING: "pending", TrialStatus.RUNNING: "running",
         TrialStatus.TERMINATED: "terminated", TrialStatus.ERROR: "errored",
         TrialStatus.STOPPED: "stopped", TrialStatus.PAUSED: "paused"}


class ProgressReporter(Callback):
    """Follows the sweep's trials and logs its progress; `metric` and `mode` (None: no
    best) rank trials by their latest values, `total` is the trial budget (None: none).
    With `live`, a live table shows the summaries, so the log has only the trial lines.
    Each trial's end costs O(1): the best trial and the ended trials are kept up to
    date, not recounted. Thread-safe: a live table reads it while the watcher writes."""

    def __init__(self, metric: str | None, mode: str | None, settings: CLIReporter,
                 total: int | None = None, *, live: bool = False) -> None:
        self.metric, self.mode, self.settings, self.total = metric, mode, settings, total
        self.live = live
        self.logger = get_run_logger()
        self.lock = threading.RLock()
        self.began = self.last = time.monotonic()
        self.experiment = ""
        self.status: dict[str, str] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.names: dict[str, TrialSpec] = {}
        self.ended: dict[str, None] = {}  # in the order they ended
        self.best: str | None = None

    def setup(self, experiment: str, path: str) -> None:
        self.experiment = experiment

    def on_trial_start(self, trial: TrialSpec) -> None:
        with self.lock:
            self.names[trial.trial_id] = trial
            self.status[trial.trial_id] = "running"

    def on_trial_result(self, trial: TrialSpec, result: dict[str, Any]) -> None:
        with self.lock:
            self._note(trial.trial_id, result)
            self.status[trial.trial_id] = "running"
            if not self.live and \
                    time.monotonic() - self.last >= self.settings.max_report_frequency:
                self.last = time.monotonic()
                self.logger.info("%s", self.summary())

    def on_trial_complete(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self._ended(trial, outcome)

    def on_trial_error(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self._ended(trial, outcome)

    def on_experiment_end(self, results: Any) -> None:
        with self.lock:
            self.logger.info("%s", self.summary())

    def _ended(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        with self.lock:
            self.status[trial.trial_id] = WORDS[outcome.status]
            self.ended.pop(trial.trial_id, None)
            self.ended[trial.trial_id] = None
            if outcome.last_metrics:
                self._note(trial.trial_id, dict(outcome.last_metrics))
            value = self._value(outcome.last_metrics)
            metric = f", {self.metric}={value:.6g}" if value is not None else ""
            of = f" of {self.total}" if self.total else ""
            self.logger.info("trial %s %s after %d reports%s; %d%s trials done%s",
                             trial.trial_name, WORDS[outcome.status], outcome.num_reports,
                             metric, len(self.ended), of, self.best_text())

    def counts(self) -> str:
        """Trial counts by status, running first: "2 running, 5 terminated"."""
        counts: dict[str, int] = {}
        for status in self.status.values():
            counts[status] = counts.get(status, 0) + 1
        order = ["running", *(WORDS[s] for s in TrialStatus if s is not TrialStatus.RUNNING)]
        return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "no trial yet"

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def summary(self) -> str:
        """Counts by status, elapsed time, the best trial and the running trials."""
        running = [f"{self.names[t].trial_name} {self._point(t)}"
                   for t, s in self.status.items() if s == "running" and t in self.latest]
        return (f"sweep {self.experiment} after {self.elapsed():.0f} s: "
                f"{self.counts()}{self.best_text()}"
                + (f"; running: {'; '.join(running)}" if running else ""))

    def shown(self) -> Iterator[tuple[TrialSpec, str, dict[str, Any]]]:
        """The trials a table shows, at most `max_progress_rows`: the running ones, then
        those that ended last; each with its status and latest row."""
        running = [t for t, s in self.status.items() if s == "running"]
        recent = list(reversed(self.ended))
        for trial in (running + recent)[:self.settings.max_progress_rows]:
            yield self.names[trial], self.status[trial], self.latest.get(trial, {})

    def best_text(self) -> str:
        """"; best <metric>=<value> (<trial>: <config>)", or "" while there is none."""
        if self.best is None:
            return ""
        trial, value = self.names[self.best], cast(float, self._value(self.latest[self.best]))
        config = ", ".join(f"{k}={cell(v)}" for k, v in flatten(trial.config).items())
        return f"; best {self.metric}={value:.6g} ({trial.trial_name}: {config})"

    def _note(self, trial: str, row: dict[str, Any]) -> None:
        """`trial`'s latest row is `row`: keep the best trial by latest value (a rescan
        only when the best one's own value got worse)."""
        before = self._value(self.latest[self.best]) if self.best else None
        self.latest[trial] = row
        value = self._value(row)
        if self.mode not in ("min", "max") or value is None and trial != self.best:
            return
        order = cast(Order, self.mode)
        if value is not None and (before is None or value == before and trial == self.best
                                  or rank_key(value, order) > rank_key(before, order)):
            self.best = trial
        elif trial == self.best:  # the leader fell back: find the new one
            self.best = best_by(((self._value(r), t) for t, r in self.latest.items()), order)

    def _point(self, trial: str) -> str:
        row = self.latest[trial]
        value = self._value(row)
        shown = f"{self.metric}={value:.6g} " if value is not None else ""
        return f"{shown}at iteration {row.get('training_iteration')}"

    def _value(self, metrics: Any) -> float | None:
        return value_of(metrics, self.metric)
