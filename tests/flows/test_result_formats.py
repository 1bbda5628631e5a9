"""What a sweep leaves besides result.json and progress.csv: TensorBoard event files that,
read as TensorBoard reads them, hold exactly the rows of `Result.metrics_dataframe`, even
across a retried attempt that discarded rows; and the dataframes read back from storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import Checkpoint, FailureConfig, RunConfig, TrialStatus
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import Backend, make_backend
from ..storage.test_tensorboard import parse_events

pytest.importorskip("tensorboardX")
pytestmark = pytest.mark.usefixtures("prefect_server")


def flaky(config: dict[str, Any]) -> None:
    """Steps 1..4 of loss 1/step, a checkpoint at step 2; the first attempt fails after
    reporting step 3 (a row its retry discards and reports again)."""
    checkpoint = get_checkpoint()
    start = checkpoint.to_dict()["step"] + 1 if checkpoint else 1
    for step in range(start, 5):
        saved = Checkpoint.from_dict({"step": step}) if step == 2 else None
        report({"loss": config["scale"] / step, "nested": {"step": step}}, checkpoint=saved)
        if step == 3 and get_context().attempt == 1:
            raise RuntimeError("first attempt fails after step 3")


def tensorboard_view(backend: Backend, trial_dir: str) -> dict[tuple[str, int], float]:
    """The scalars TensorBoard shows: files in name order, each purge record hiding the
    steps at or after its own."""
    shown: dict[tuple[str, int], float] = {}
    fs = backend.fs
    for path in sorted(p for p in fs.ls(trial_dir, detail=False) if "tfevents" in p):
        for event in parse_events(fs.cat_file(path)):
            if event.HasField("session_log"):
                shown = {k: v for k, v in shown.items() if k[1] < event.step}
            for value in event.summary.value:
                shown[(value.tag, event.step)] = value.simple_value
    return shown


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_event_files_hold_exactly_the_recorded_rows_across_a_retry(
    storage: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    backend = make_backend(storage, request, tmp_path)
    grid = Tuner(
        flaky, param_space={"scale": grid_search([1.0, 2.0])},
        tune_config=TuneConfig(max_concurrent_trials=2),
        run_config=RunConfig(name="exp", storage_path=backend.url,
                             storage_options=backend.options or None,
                             failure_config=FailureConfig(max_failures=1)),
    ).fit()
    for result in grid:
        assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
        frame = result.metrics_dataframe
        assert frame["training_iteration"].tolist() == [1, 2, 3, 4]
        expected = {(tag, int(step)): pytest.approx(float(value))
                    for tag in ("loss", "nested/step")
                    for step, value in zip(frame["training_iteration"], frame[tag], strict=True)}
        trial_dir = backend.fs._strip_protocol(result.path)
        assert tensorboard_view(backend, trial_dir) == expected
    table = grid.get_dataframe()
    assert table["loss"].tolist() == [0.25, 0.5]
    assert table["config/scale"].tolist() == [1.0, 2.0]


def test_tensorboard_false_writes_no_event_files(tmp_path: Path) -> None:
    grid = Tuner(flaky, param_space={"scale": 1.0},
                 tune_config=TuneConfig(isolation="thread"),
                 run_config=RunConfig(name="exp", storage_path=str(tmp_path), tensorboard=False,
                                      failure_config=FailureConfig(max_failures=1))).fit()
    assert grid[0].status is TrialStatus.TERMINATED
    assert not list(Path(grid[0].path).glob("events.out.tfevents.*"))
