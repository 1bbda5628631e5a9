"""`Watcher`: the sweep's callbacks, fed with each running trial's rows as it writes them.

A thread reads, every `interval` seconds, what each running trial appended to its
result log in storage (only the new bytes where the filesystem can read from an
offset), so callbacks see results while trials run, whatever runs them (threads, forked
processes, Dask workers). Each trial's hooks come in order: its start, its rows (each
`training_iteration` once, even across retries and resumes, which rewrite the log),
its end; one hook at a time, in the watcher's thread.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger

from prefect_tune.storage import Callback, ExperimentStore, TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.storage.layout import RESULT_LOG
from prefect_tune.storage.trial_dir import read_new_rows

#: Seconds between two reads of the running trials' logs.
WATCH_SECONDS = 1.0


class Watcher:
    """Tells `callbacks` of the trials of the experiment in `store`. `started` and
    `ended` only queue what happened: the hooks run in the watcher's thread, so a slow
    callback never holds up the sweep."""

    def __init__(self, store: ExperimentStore, callbacks: Sequence[Callback],
                 interval: float = WATCH_SECONDS) -> None:
        self.store, self.callbacks, self.interval = store, tuple(callbacks), interval
        self._logger = get_run_logger()
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._submitted: set[str] = set()  # the sweep's view: trials submitted, not ended
        self._running: dict[str, TrialSpec] = {}  # the thread's view
        self._offsets: dict[str, int] = {}
        self._last: dict[str, float] = {}  # the last training_iteration told, by trial
        self._started: set[str] = set()
        self._call("setup", store.name, store.path)
        # The flow's context (its Prefect settings): without it, a hook that talks to
        # Prefect from this thread would start an ephemeral API server of its own.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._watch,),
                                        name="sweep-watcher", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """How many trials run now (submitted, not ended)."""
        return len(self._submitted)

    def started(self, trial: TrialSpec) -> None:
        """A segment (or the first run) of `trial` was submitted."""
        self._submitted.add(trial.trial_id)
        self._jobs.put(("started", trial))

    def ended(self, outcome: TrialOutcome) -> None:
        """A segment of a trial ended with `outcome`: its last rows, then its end."""
        self._submitted.discard(outcome.trial_id)
        self._jobs.put(("ended", outcome))

    def stop(self) -> None:
        """Stop watching, once the hooks of every trial start and end so far ran."""
        self._jobs.put(("stop", None))
        self._thread.join()

    def finish(self, results: Any) -> None:
        """The sweep ended with `results`, its ResultGrid (call after `stop`)."""
        self._call("on_experiment_end", results)

    def _watch(self) -> None:
        """Run the queued hooks as they come, and read the running trials' new rows
        every `interval` seconds."""
        due = time.monotonic() + self.interval
        while True:
            try:
                job, item = self._jobs.get(timeout=max(due - time.monotonic(), 0.0))
            except queue.Empty:
                for trial in list(self._running.values()):
                    self._read(trial)
                due = time.monotonic() + self.interval
                continue
            if job == "stop":
                return
            if job == "started":
                self._start(item)
            else:
                self._end(item)

    def _start(self, trial: TrialSpec) -> None:
        self._running[trial.trial_id] = trial
        self._offsets[trial.trial_id] = 0  # a resume or retry may rewrite the log
        if trial.trial_id not in self._started:
            self._started.add(trial.trial_id)
            self._call("on_trial_start", trial)

    def _end(self, outcome: TrialOutcome) -> None:
        trial = self._running.pop(outcome.trial_id, None)
        if trial is None:
            return
        self._read(trial)
        if outcome.status is TrialStatus.ERROR:
            self._call("on_trial_error", trial, outcome)
        elif outcome.status in (TrialStatus.TERMINATED, TrialStatus.STOPPED):
            self._call("on_trial_complete", trial, outcome)

    def _read(self, trial: TrialSpec) -> None:
        """Tell the callbacks of the rows `trial` wrote since the last read."""
        path = self.store.trial(trial.trial_name).file(RESULT_LOG)
        try:
            rows, self._offsets[trial.trial_id] = read_new_rows(
                self.store.storage, path, self._offsets.get(trial.trial_id, 0))
        except Exception as exc:  # noqa: BLE001 - watching must never fail the sweep
            self._logger.warning("could not read %s's results to tell the callbacks: %s",
                                 trial.trial_name, exc)
            return
        for row in rows:
            iteration = row.get("training_iteration")
            if not isinstance(iteration, int | float) or \
                    iteration <= self._last.get(trial.trial_id, 0):
                continue
            self._last[trial.trial_id] = iteration
            self._call("on_trial_result", trial, row)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except Exception:
                self._logger.exception("callback %s.%s failed", type(callback).__name__, hook)
