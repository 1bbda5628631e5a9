"""The sweep's Prefect events, read back from the real server: a trial completed or
failed, each new best value of the metric, the sweep finished; with the experiment,
trial and metric in their payloads and the flow run related."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.events.filters import EventFilter, EventNameFilter

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import RunConfig
from prefect_tune.tasks import report

from ..conftest import wait_for

pytestmark = pytest.mark.usefixtures("prefect_server")


def descends(config: dict[str, Any]) -> None:
    """Trial i reports 10 - i, 9 - i, 8 - i; trial 2 then fails."""
    for step in range(3):
        report({"loss": 10.0 - step - config["i"]})
    if config["i"] == 2:
        raise RuntimeError("diverged")


def test_a_sweep_emits_trial_best_and_finished_events(tmp_path: Path) -> None:
    grid = Tuner(descends, param_space={"i": grid_search([0, 1, 2])},
                 tune_config=TuneConfig(metric="loss", mode="min", max_concurrent_trials=1,
                                        isolation="thread"),
                 run_config=RunConfig(name="evented", storage_path=str(tmp_path))).fit()
    wanted = EventFilter(event=EventNameFilter(prefix=["prefect-tune."]))

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=wanted, limit=50)
        return [e for e in page.events if any(
            r.id == "prefect-tune.experiment.evented" for r in [e.resource, *e.related])]

    events = wait_for(read, lambda found: any(
        e.event == "prefect-tune.experiment.finished" for e in found))
    events.sort(key=lambda e: e.occurred)
    names = [e.event.removeprefix("prefect-tune.") for e in events]
    t0, t1, t2 = (r.trial_id for r in grid)

    assert names.count("trial.completed") == 2 and names.count("trial.failed") == 1
    assert names[-1] == "experiment.finished"
    best = [e.payload["value"] for e in events if e.event.endswith("new-best")]
    assert best == [10.0, 9.0, 8.0, 7.0, 6.0]  # t0's three, then t1's 7 and t2's 6
    failed = next(e for e in events if e.event.endswith("trial.failed"))
    assert failed.resource.id == f"prefect-tune.trial.{t2}"
    assert failed.payload["experiment"] == "evented" and "diverged" in failed.payload["error"]
    completed = {e.payload["trial_id"]: e.payload for e in events
                 if e.event.endswith("trial.completed")}
    assert completed[t1]["value"] == 7.0 and completed[t1]["metric"] == "loss"
    assert completed[t0]["config"] == {"i": 0} and t1 in completed
    finished = events[-1].payload
    assert finished["trials"] == {"TERMINATED": 2, "ERROR": 1}
    # as get_best_result ranks: by each trial's last value, the failed one's included
    assert finished["best"]["trial_id"] == t2 == grid.get_best_result().trial_id
    assert finished["best"]["value"] == 6.0
    flow_runs = {r.id for e in events for r in e.related if r.role == "flow-run"}
    assert len(flow_runs) == 1
