"""`Trainer(resume_from_checkpoint=...)`, as Ray Train's: a run that starts from a given
checkpoint (an earlier run's, on S3 or local). Every rank's `get_checkpoint()` returns it
until the run committed checkpoints of its own; then retries and `Tuner.restore` resume
from the run's latest. The given checkpoint is only read: never changed, deleted or
recorded, and its credentials reach no file, log or flow run parameter."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)

from prefect_tune.flows import Trainer, Tuner
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    ConfigError,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrialStatus,
)
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import SECRET, CallLog, drain_prefect_workers, make_backend, s3_options

TWO = ScalingConfig(num_workers=2)


def counting(config: dict[str, Any]) -> None:
    """Counts steps on from its checkpoint (rank 0 writes step.json, rank 1 rank1.json)
    up to config["until"]. Each rank logs (attempt, rank, the path get_checkpoint() gave,
    the step it read there); rank 1 raises at the (attempt, step) pairs of config["fail"],
    and attempt config["bare"] reports without checkpoints."""
    context = get_context()
    restored = get_checkpoint()
    done = 0
    if restored is not None:
        with restored.as_directory() as directory:
            done = json.loads(Path(directory, "step.json").read_text())
            assert json.loads(Path(directory, "rank1.json").read_text()) == done
    CallLog(config["log"]).record(context.attempt, context.world_rank,
                                  restored.path if restored is not None else None, done)
    for step in range(done + 1, config["until"] + 1):
        if context.world_rank == 1 and [context.attempt, step] in config.get("fail", []):
            raise RuntimeError(f"rank 1 fails at step {step}")
        with tempfile.TemporaryDirectory() as directory:
            name = "step.json" if context.world_rank == 0 else "rank1.json"
            Path(directory, name).write_text(json.dumps(step))
            bare = context.attempt == config.get("bare")
            report({"step": step},
                   checkpoint=None if bare else Checkpoint.from_directory(directory))


def snapshot(fs: Any, path: str) -> dict[str, bytes]:
    """Every file under `path` and its bytes."""
    root = path.split("://", 1)[-1]
    fs.invalidate_cache()
    return {name: fs.cat_file(name) for name in fs.find(root)}


def starts(log: CallLog) -> list[tuple[int, int, str | None, int]]:
    """(attempt, rank, checkpoint path, step read) of every rank's start, in order."""
    return sorted((c[0], c[1], c[2], c[3]) for c in log.calls())


def rows_of(fs: Any, trial_path: str) -> list[dict[str, Any]]:
    text = fs.cat_file(f"{trial_path.split('://', 1)[-1]}/result.json").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_texts(name: str) -> list[str]:
    """The parameters and every log line of the flow run named `name`."""
    drain_prefect_workers()
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return [json.dumps(run.parameters, default=str), *(log.message for log in logs)]


@pytest.mark.usefixtures("prefect_server")
def test_a_run_resumes_from_an_earlier_runs_checkpoint_on_s3(
    request: pytest.FixtureRequest, tmp_path: Path,
) -> None:
    backend = make_backend("s3", request, tmp_path)
    fs, log = backend.fs, CallLog(str(tmp_path / "calls"))
    first_name, second_name = f"first-{uuid.uuid4().hex[:8]}", f"second-{uuid.uuid4().hex[:8]}"

    def settings(name: str, **run: Any) -> RunConfig:
        return RunConfig(name=name, storage_path=backend.url, storage_options=backend.options,
                         **run)

    first = Trainer(counting, train_loop_config={"log": str(tmp_path / "first"), "until": 2},
                    scaling_config=TWO, run_config=settings(first_name)).fit()
    given = first.checkpoint
    assert given is not None and given.path.startswith("s3://")
    before, first_trial = snapshot(fs, given.path), snapshot(fs, first.path)

    second = Trainer(
        counting, train_loop_config={"log": log.path, "until": 5, "fail": [[1, 4]]},
        scaling_config=TWO, resume_from_checkpoint=given,
        run_config=settings(second_name, checkpoint_config=CheckpointConfig(num_to_keep=1),
                            failure_config=FailureConfig(max_failures=1)),
    ).fit()

    assert second.status is TrialStatus.TERMINATED and second.outcome.attempts == 2
    own = f"{second.path}/checkpoint_000000"
    assert starts(log) == [(1, 0, given.path, 2), (1, 1, given.path, 2),  # on every rank
                           (2, 0, own, 3), (2, 1, own, 3)]  # the retry: its own latest
    rows = rows_of(fs, second.path)
    assert [r["step"] for r in rows] == [3, 4, 5]  # training goes on from the given one
    assert [r["training_iteration"] for r in rows] == [1, 2, 3]  # a run of its own
    assert [r["checkpoint_dir_name"] for r in rows] == [
        "checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    assert [r.index for r in second.outcome.checkpoints] == [2]  # num_to_keep=1
    assert second.checkpoint is not None and second.checkpoint.path == \
        f"{second.path}/checkpoint_000002"
    with second.checkpoint.as_directory() as directory:
        assert json.loads(Path(directory, "step.json").read_text()) == 5

    # the given checkpoint was only read: retention deleting the run's own left it alone
    assert snapshot(fs, given.path) == before and snapshot(fs, first.path) == first_trial
    assert first.metrics["step"] == 2
    # ...and it is none of the run's checkpoints: nothing of the run refers to it
    stored = snapshot(fs, f"{backend.url}/{second_name}")
    assert [name for name, data in stored.items() if given.path.encode() in data] == []
    # its filesystem's credentials reached no file, log line or flow run parameter
    bucket = snapshot(fs, backend.url.split("/runs")[0])
    assert [name for name, data in bucket.items() if SECRET.encode() in data] == []
    texts = run_texts(second_name)
    assert [t for t in texts if SECRET in t] == []
    assert any(f"the ranks start from the given checkpoint {given.path}" in t for t in texts)


@pytest.mark.usefixtures("prefect_server")
def test_retries_start_from_the_given_one_until_the_run_has_its_own(tmp_path: Path) -> None:
    """Attempt 1 reports a step without a checkpoint and fails: attempt 2 starts from
    the given one again; it fails after two of its own, and Tuner.restore resumes from the latest
    of those. The given local directory is never changed, and num_to_keep=1 keeps it."""
    given_dir = tmp_path / "given"
    given_dir.mkdir()
    (given_dir / "step.json").write_text("10")
    (given_dir / "rank1.json").write_text("10")
    before = {p.name: p.read_bytes() for p in given_dir.iterdir()}
    given = Checkpoint.from_directory(given_dir)
    log = CallLog(str(tmp_path / "calls"))
    trainer = Trainer(
        counting, train_loop_config={"log": log.path, "until": 13, "bare": 1,
                                     "fail": [[1, 12], [2, 13]]},
        scaling_config=TWO, resume_from_checkpoint=given,
        run_config=RunConfig(name="run", storage_path=str(tmp_path / "runs"),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=1)),
    )

    failed = trainer.fit()

    assert failed.status is TrialStatus.ERROR and failed.outcome.attempts == 2
    own = f"{failed.path}/checkpoint_000001"
    restored = Tuner.restore(str(tmp_path / "runs" / "run"), trainer,
                             resume_errored=True).fit()[0]

    assert restored.status is TrialStatus.TERMINATED and restored.outcome.attempts == 3
    assert starts(log) == [(1, 0, str(given_dir), 10), (1, 1, str(given_dir), 10),
                           (2, 0, str(given_dir), 10), (2, 1, str(given_dir), 10),
                           (3, 0, own, 12), (3, 1, own, 12)]
    assert restored.metrics_dataframe["step"].tolist() == [11, 12, 13]
    assert sorted(p.name for p in Path(restored.path).glob("checkpoint_*")) == [
        "checkpoint_000002"]
    assert {p.name: p.read_bytes() for p in given_dir.iterdir()} == before


def loop(config: dict[str, Any]) -> None:
    report({})


def test_resume_from_checkpoint_must_be_a_checkpoint() -> None:
    with pytest.raises(ConfigError, match="resume_from_checkpoint must be a Checkpoint, got "
                       "str: pass Checkpoint.from_directory"):
        Trainer(loop, resume_from_checkpoint="/tmp/checkpoint")  # type: ignore[arg-type]


def test_a_missing_checkpoint_is_refused_naming_its_path(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    checkpoint = Checkpoint.from_directory(directory)
    shutil.rmtree(directory)

    with pytest.raises(ConfigError) as refused:
        Trainer(loop, resume_from_checkpoint=checkpoint)

    assert f"checkpoint {directory} does not exist" in str(refused.value)


def test_a_missing_checkpoint_on_s3_is_refused_without_its_credentials(
    moto_endpoint: str,
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options(moto_endpoint))
    bucket = f"given-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    path = f"s3://{bucket}/runs/old/Trainer_1/checkpoint_000003"

    with pytest.raises(ConfigError) as refused:
        Trainer(loop, resume_from_checkpoint=Checkpoint(path, fs))

    assert f"checkpoint {path} does not exist" in str(refused.value)
    assert SECRET not in str(refused.value) and SECRET not in repr(refused.value)
