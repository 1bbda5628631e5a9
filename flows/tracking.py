"""`MLflowLoggerCallback`: every trial of a sweep as an MLflow run.

`pip install 'prefect-tune[mlflow]'` (MLflow's client, `mlflow-skinny`, is enough).
"""

from __future__ import annotations

import math
import time
from typing import Any

from prefect_tune.storage import Callback, ConfigError, TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.storage.records import flatten

#: Row keys that are bookkeeping, not metrics.
NOT_METRICS = ("training_iteration", "timestamp")


class MLflowLoggerCallback(Callback):
    """One MLflow run per trial, named after it and tagged with its id and `tags`: its
    config as params, every numeric metric at its `training_iteration` as it is
    reported, and its end as the run's status (FINISHED, KILLED when the sweep stopped
    it, FAILED). A restored trial goes on in its run. With `save_artifact`, the trial's
    files (local storage only) become the run's artifacts when it ends.

    Args:
        tracking_uri: MLflow's tracking URI (default: MLflow's own, MLFLOW_TRACKING_URI).
        experiment_name: The MLflow experiment (default: the sweep's experiment name),
            created if missing.
        tags: Tags of every run.
        save_artifact: Copy each trial's directory into its run's artifacts.
    """

    def __init__(self, tracking_uri: str | None = None, experiment_name: str | None = None,
                 tags: dict[str, str] | None = None, save_artifact: bool = False) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise ConfigError(f"MLflowLoggerCallback needs MLflow ({exc}): pip install "
                              "'prefect-tune[mlflow]'") from exc
        self._mlflow = mlflow
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.tags, self.save_artifact = dict(tags or {}), save_artifact
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id
        self._client: Any = None
        self._experiment_id = ""
        self._path = ""

    def __repr__(self) -> str:  # the tracking URI may hold credentials
        return f"MLflowLoggerCallback(experiment_name={self.experiment_name!r})"

    def setup(self, experiment: str, path: str) -> None:
        self._client = self._mlflow.MlflowClient(self.tracking_uri)
        name = self.experiment_name or experiment
        found = self._client.get_experiment_by_name(name)
        self._experiment_id = found.experiment_id if found else \
            self._client.create_experiment(name)
        self._path = path

    def on_trial_start(self, trial: TrialSpec) -> None:
        entities = self._mlflow.entities
        found = self._client.search_runs(
            [self._experiment_id], f"tags.trial_id = '{trial.trial_id}'", max_results=1)
        if found:  # a restored trial goes on in its run
            run_id = found[0].info.run_id
            self._client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._client.create_run(
                self._experiment_id, run_name=trial.trial_name,
                tags={**self.tags, "trial_id": trial.trial_id}).info.run_id
            params = [entities.Param(key, str(value))
                      for key, value in flatten(trial.config).items()]
            self._client.log_batch(run_id, params=params)
        self._runs[trial.trial_id] = run_id

    def on_trial_result(self, trial: TrialSpec, result: dict[str, Any]) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result["training_iteration"])
        stamp = int(1000 * float(result.get("timestamp") or time.time()))
        metrics = [self._mlflow.entities.Metric(key, float(value), stamp, step)
                   for key, value in flatten(result).items()
                   if key not in NOT_METRICS and _number(value)]
        if metrics:
            self._client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self._end(trial, outcome,
                  "FINISHED" if outcome.status is TrialStatus.TERMINATED else "KILLED")

    def on_trial_error(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self._end(trial, outcome, "FAILED")

    def _end(self, trial: TrialSpec, outcome: TrialOutcome, status: str) -> None:
        run_id = self._runs.pop(trial.trial_id, None)
        if run_id is None:
            return
        if self.save_artifact and "://" not in self._path:
            self._client.log_artifacts(run_id, f"{self._path}/{trial.trial_name}")
        self._client.set_terminated(run_id, status)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        not math.isnan(value)
