"""`SweepEvents`: Prefect events of a sweep, for automations to act on.

Emitted from the sweep's process (through the callback hooks, see `watch.py`):
- `prefect-tune.trial.completed` / `.stopped` / `.failed`: a trial ended;
- `prefect-tune.experiment.new-best`: a reported value of the sweep's metric beat every
  one before it;
- `prefect-tune.experiment.finished`: the sweep ended, with its trial counts.
Each names the trial (`prefect-tune.trial.<id>`) or the experiment
(`prefect-tune.experiment.<name>`) as its resource, relates the sweep's flow run, and
carries the experiment, trial and metric in its payload.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event
from prefect.runtime import flow_run

from prefect_tune.storage import Callback, TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.storage.ranking import value_of

PREFIX = "prefect-tune"


class SweepEvents(Callback):
    """Emits the sweep's events; `metric` and `mode` (None: no new-best events) rank
    results."""

    def __init__(self, metric: str | None, mode: str | None) -> None:
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        self.experiment = ""
        self.related: list[dict[str, str]] = []

    def setup(self, experiment: str, path: str) -> None:
        self.experiment = experiment
        self.related = [{"prefect.resource.id": f"{PREFIX}.experiment.{experiment}",
                         "prefect.resource.role": "experiment",
                         "prefect.resource.name": experiment}]
        if flow_run.id:
            self.related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                                 "prefect.resource.role": "flow-run"})

    def on_trial_result(self, trial: TrialSpec, result: dict[str, Any]) -> None:
        value = self._value(result)
        if value is None or self.best is not None and (
                value >= self.best if self.mode == "min" else value <= self.best):
            return
        self.best = value
        self._emit("experiment.new-best", {
            "prefect.resource.id": f"{PREFIX}.experiment.{self.experiment}",
            "prefect.resource.name": self.experiment}, {
            **self._trial(trial), "metric": self.metric, "value": value,
            "training_iteration": result.get("training_iteration")})

    def on_trial_complete(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        kind = "completed" if outcome.status is TrialStatus.TERMINATED else "stopped"
        self._trial_event(kind, trial, outcome)

    def on_trial_error(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self._trial_event("failed", trial, outcome, error=outcome.error)

    def on_experiment_end(self, results: Any) -> None:
        counts = {s.value: sum(r.status is s for r in results) for s in TrialStatus}
        best = results.best_or_none() if self.metric else None
        self._emit("experiment.finished", {
            "prefect.resource.id": f"{PREFIX}.experiment.{self.experiment}",
            "prefect.resource.name": self.experiment}, {
            "experiment": self.experiment, "path": results.experiment_path,
            "trials": {k: v for k, v in counts.items() if v},
            "metric": self.metric,
            "best": None if best is None else {**self._trial(best.outcome),
                                               "value": self._value(best.metrics)}})

    def _trial_event(self, kind: str, trial: TrialSpec, outcome: TrialOutcome,
                     **extra: Any) -> None:
        self._emit(f"trial.{kind}", {"prefect.resource.id": f"{PREFIX}.trial.{trial.trial_id}",
                                     "prefect.resource.name": trial.trial_name}, {
            **self._trial(trial), "status": outcome.status.value, "metric": self.metric,
            "value": self._value(outcome.last_metrics),
            "training_iteration": outcome.last_metrics.get("training_iteration"), **extra})

    def _trial(self, trial: TrialSpec | TrialOutcome) -> dict[str, Any]:
        return {"experiment": self.experiment, "trial_id": trial.trial_id,
                "trial_name": trial.trial_name, "config": dict(trial.config)}

    def _value(self, metrics: Any) -> float | None:
        return value_of(metrics, self.metric)

    def _emit(self, name: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
        related = [r for r in self.related
                   if r["prefect.resource.id"] != resource["prefect.resource.id"]]
        emit_event(f"{PREFIX}.{name}", resource=resource, related=related, payload=payload)
