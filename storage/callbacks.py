"""`Callback`: what a sweep tells the tracking tools of `RunConfig(callbacks=[...])`."""

from __future__ import annotations

from typing import Any

from prefect_tune.storage.records import TrialOutcome, TrialSpec


class Callback:
    """The base class of sweep callbacks; override the hooks you need.

    Every hook is called in the sweep's process, one at a time, in the order things
    happened to each trial: its start, each of its result rows (read from storage as
    the trial writes them, at most a second or so late), then its end. A hook that
    raises is logged and the sweep goes on.
    """

    def setup(self, experiment: str, path: str) -> None:
        """Before the first trial: the experiment's name and its storage URI."""

    def on_trial_start(self, trial: TrialSpec) -> None:
        """The trial's first run (its config in `trial.config`)."""

    def on_trial_result(self, trial: TrialSpec, result: dict[str, Any]) -> None:
        """One of its rows, as `report()` wrote it (with `training_iteration`)."""

    def on_trial_complete(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        """It ended TERMINATED, or STOPPED by the sweep (`outcome.status`)."""

    def on_trial_error(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        """It ended ERROR after its last attempt (`outcome.error`)."""

    def on_experiment_end(self, results: Any) -> None:
        """The sweep ended; `results` is its ResultGrid."""
