"""Trial-level fault tolerance: FailureConfig(max_failures) retries resume from the latest
committed checkpoint, keep every training_iteration exactly once, and record each failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    TrialStatus,
)
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import Backend, CallLog

pytestmark = pytest.mark.usefixtures("prefect_server")


class FlakyTrainer:
    """Logs (attempt, first step) of each call; fails once at step 4 (after checkpoints
    at steps 1 and 3)."""

    def __init__(self, log: CallLog) -> None:
        self.log = log
        self.__name__ = "flaky"

    def __call__(self, config: dict[str, Any]) -> None:
        checkpoint = get_checkpoint()
        start = checkpoint.to_dict()["step"] + 1 if checkpoint else 1
        attempt = get_context().attempt
        self.log.record(attempt, start)
        for step in range(start, 7):
            if attempt == 1 and step == 4:
                raise RuntimeError("preempted at step 4")
            saved = Checkpoint.from_dict({"step": step}) if step % 2 == 1 else None
            report({"step": step, "loss": 10.0 - step}, checkpoint=saved)


def test_retry_resumes_from_latest_checkpoint_without_duplicate_rows(
    backend: Backend, tmp_path: Path
) -> None:
    log = CallLog(str(tmp_path / "calls"))
    grid = Tuner(FlakyTrainer(log), run_config=RunConfig(
        name="retry", storage_path=backend.url, storage_options=backend.options or None,
        checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="loss",
                                           checkpoint_score_order="min"),
        failure_config=FailureConfig(max_failures=2),
    )).fit()

    (result,) = grid
    assert log.calls() == [[1, 1], [2, 4]]  # the retry started after checkpoint step 3
    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    frame = result.metrics_dataframe
    assert frame["training_iteration"].tolist() == [1, 2, 3, 4, 5, 6]
    assert frame["step"].tolist() == [1, 2, 3, 4, 5, 6]
    # checkpoint numbering continues: step 1 -> 0, step 3 -> 1, step 5 -> 2 (after retry)
    assert [n if isinstance(n, str) else None for n in frame["checkpoint_dir_name"]] == [
        "checkpoint_000000", None, "checkpoint_000001", None, "checkpoint_000002", None,
    ]
    assert result.checkpoint is not None and result.checkpoint.to_dict() == {"step": 5}
    fs = backend.fs
    trial_dir = result.path.split("://", 1)[-1]
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(trial_dir, detail=False, refresh=True))
    assert [n for n in names if "checkpoint_" in n] == ["checkpoint_000002"]
    error = fs.cat_file(f"{trial_dir}/error.txt").decode()
    assert error.count("Failure # ") == 1 and "preempted at step 4" in error


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_failure_without_checkpoint_restarts_from_scratch(tmp_path: Path, isolation: str) -> None:
    log = CallLog(str(tmp_path / "calls"))

    def trainer(config: dict[str, Any]) -> None:
        log.record(get_context().attempt)
        assert get_checkpoint() is None
        report({"x": 1})
        if len(log.calls()) == 1:
            raise OSError("flaky disk")
        report({"x": 2})

    grid = Tuner(trainer, tune_config=TuneConfig(isolation=isolation),  # type: ignore[arg-type]
                 run_config=RunConfig(name="scratch", storage_path=str(tmp_path / "runs"),
                                      failure_config=FailureConfig(max_failures=1))).fit()

    assert log.calls() == [[1], [2]]
    assert grid[0].metrics_dataframe["training_iteration"].tolist() == [1, 2]
    assert grid[0].metrics_dataframe["x"].tolist() == [1, 2]


def test_exhausted_retries_leave_the_trial_errored_with_every_failure(tmp_path: Path) -> None:
    def trainer(config: dict[str, Any]) -> None:
        raise RuntimeError(f"attempt {get_context().attempt} failed")

    grid = Tuner(trainer, run_config=RunConfig(
        name="exhausted", storage_path=str(tmp_path), failure_config=FailureConfig(max_failures=2),
    )).fit()

    assert grid.num_errors == 1 and grid[0].outcome.attempts == 3
    error = (Path(grid[0].path) / "error.txt").read_text()
    assert [f"Failure # {i} " in error for i in (1, 2, 3)] == [True] * 3
    assert "attempt 3 failed" in error and "Failure # 4" not in error


def test_bad_metrics_are_not_retried(tmp_path: Path) -> None:
    log = CallLog(str(tmp_path / "calls"))

    def trainer(config: dict[str, Any]) -> None:
        log.record(get_context().attempt)
        report({"weights": object()})

    grid = Tuner(trainer, run_config=RunConfig(
        name="noretry", storage_path=str(tmp_path / "runs"),
        failure_config=FailureConfig(max_failures=3),
    )).fit()

    assert log.calls() == [[1]]
    assert grid.num_errors == 1


def test_each_attempt_leaves_a_card_on_the_trials_task_run(tmp_path: Path) -> None:
    """The task run of a failed-then-retried trial shows both attempts: how each ended,
    the config and the final metrics, without its logs."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterTaskRunId,
        FlowRunFilter,
        FlowRunFilterName,
    )

    def cards_of(name: str, trial_cards: bool) -> tuple[Any, Any, list[Any]]:
        """Sweep experiment `name`; its flow run, its trial's task run and its cards."""
        Tuner(FlakyTrainer(CallLog(str(tmp_path / name))),
              param_space={"lr": 0.25, "net": {"width": 8}},
              tune_config=TuneConfig(trial_cards=trial_cards),
              run_config=RunConfig(name=name, storage_path=str(tmp_path / "runs"),
                                   failure_config=FailureConfig(max_failures=2))).fit()
        with get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
            (task_run,) = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
            cards = client.read_artifacts(artifact_filter=ArtifactFilter(
                task_run_id=ArtifactFilterTaskRunId(any_=[task_run.id])))
        return run, task_run, sorted(cards, key=lambda card: (card.created, card.description))

    run, task_run, cards = cards_of("cards", trial_cards=True)
    trial = task_run.name
    assert [c.description for c in cards] == [
        f"{trial}, attempt 1: failed (RuntimeError: preempted at step 4); Prefect retries it",
        f"{trial}, attempt 2: finished",
    ]
    failed, finished = (str(c.data) for c in cards)
    assert failed.startswith(f"### {trial}: attempt 1 of up to 3, failed (RuntimeError: ")
    assert "| lr | 0.25 |" in failed and "| net/width | 8 |" in failed
    assert "| loss | 7.0 |" in failed and "Traceback" in failed  # its last result, its error
    assert finished.startswith(f"### {trial}: attempt 2 of up to 3, finished\n")
    assert "| loss | 4.0 |" in finished and "| training_iteration | 6 |" in finished
    assert "Latest checkpoint: `checkpoint_000002`" in finished
    assert all(c.type == "markdown" and c.flow_run_id == run.id for c in cards)
    assert cards_of("no-cards", trial_cards=False)[2] == []
