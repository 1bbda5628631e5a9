"""Checkpoint metadata (Ray's `get_metadata` / `set_metadata` / `update_metadata`): the
round trip, copies, and the metadata of checkpoints that trials reported, through
commit, retention, retries and restores, on local storage, S3 and GCS."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import PopulationBasedTraining, TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    CheckpointError,
    FailureConfig,
    RunConfig,
    TrialStatus,
)
from prefect_tune.storage.checkpoint import METADATA_LIMIT
from prefect_tune.storage.layout import MANIFEST, METADATA_FILE
from prefect_tune.tasks import get_checkpoint, get_context, report

from ..conftest import Backend, CallLog, make_backend

pytestmark = pytest.mark.usefixtures("prefect_server")

THREAD = TuneConfig(isolation="thread")


def dict_checkpoint(tmp_path: Path) -> Checkpoint:
    return Checkpoint.from_dict({"step": 3})


def directory_checkpoint(tmp_path: Path) -> Checkpoint:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.bin").write_bytes(b"weights")
    return Checkpoint.from_directory(tmp_path / "ckpt")


MAKERS: dict[str, Callable[[Path], Checkpoint]] = {
    "from_dict": dict_checkpoint, "from_directory": directory_checkpoint,
}


def on(backend: Backend, name: str, **settings: Any) -> RunConfig:
    return RunConfig(name=name, storage_path=backend.url,
                     storage_options=backend.options or None, **settings)


def stored_names(backend: Backend, directory: str) -> list[str]:
    """The base names directly under `directory` (a URI), listed afresh."""
    path = directory.split("://", 1)[-1]
    return sorted(p.rstrip("/").rsplit("/", 1)[-1]
                  for p in backend.fs.ls(path, detail=False, refresh=True))


# 1. The API on a checkpoint of the user's (Ray's test_checkpoint.py).


@pytest.mark.parametrize("make", list(MAKERS))
def test_set_get_update_round_trip(make: str, tmp_path: Path) -> None:
    checkpoint = MAKERS[make](tmp_path)
    assert checkpoint.get_metadata() == {}

    checkpoint.update_metadata({"foo": "bar"})
    assert checkpoint.get_metadata() == {"foo": "bar"}
    checkpoint.update_metadata({"foo": "baz"})
    assert checkpoint.get_metadata() == {"foo": "baz"}
    checkpoint.update_metadata({"x": 1})
    assert checkpoint.get_metadata() == {"foo": "baz", "x": 1}
    checkpoint.set_metadata({"y": [1, 2, 3], "nested": {"a": None, "b": 0.5}})
    assert checkpoint.get_metadata() == {"y": [1, 2, 3], "nested": {"a": None, "b": 0.5}}
    assert list(checkpoint.get_metadata()) == ["y", "nested"]  # the order it was given in

    with checkpoint.as_directory() as local:  # stored as one JSON file beside the data
        assert METADATA_FILE in os.listdir(local)
        assert json.loads(Path(local, METADATA_FILE).read_text())["y"] == [1, 2, 3]
        assert [n for n in os.listdir(local) if ".tmp-" in n] == []
    if make == "from_dict":
        assert checkpoint.to_dict() == {"step": 3}  # the data is not touched


def test_update_merges_top_level_keys_and_set_replaces(tmp_path: Path) -> None:
    checkpoint = Checkpoint.from_dict({"step": 1})
    checkpoint.set_metadata({"keep": 1, "model": {"width": 8, "depth": 2}})

    checkpoint.update_metadata({"model": {"width": 16}, "new": "x"})
    assert checkpoint.get_metadata() == {"keep": 1, "model": {"width": 16}, "new": "x"}
    checkpoint.update_metadata({})
    assert checkpoint.get_metadata() == {"keep": 1, "model": {"width": 16}, "new": "x"}
    checkpoint.set_metadata({})
    assert checkpoint.get_metadata() == {}


def test_metadata_survives_to_directory_and_from_directory(tmp_path: Path) -> None:
    original = directory_checkpoint(tmp_path)
    original.set_metadata({"framework": "torch", "epoch": 7})

    copy = Checkpoint.from_directory(original.to_directory(tmp_path / "copy"))
    assert copy.get_metadata() == {"framework": "torch", "epoch": 7}
    assert (tmp_path / "copy" / "model.bin").read_bytes() == b"weights"

    copy.update_metadata({"epoch": 8})  # the copy is independent of the original
    assert original.get_metadata() == {"framework": "torch", "epoch": 7}
    assert copy.get_metadata() == {"framework": "torch", "epoch": 8}


def test_numpy_scalars_are_stored_as_plain_numbers() -> None:
    np = pytest.importorskip("numpy")
    checkpoint = Checkpoint.from_dict({})
    checkpoint.set_metadata({"loss": np.float32(0.5), "step": np.int64(3)})
    metadata = checkpoint.get_metadata()
    assert metadata == {"loss": 0.5, "step": 3}
    assert type(metadata["loss"]) is float and type(metadata["step"]) is int


# 2. Bad input and damaged files.


class Opaque:
    pass


BAD: dict[str, tuple[Any, list[str]]] = {
    "not a dict": ([("a", 1)], ["needs a dict", "list"]),
    "int key": ({1: "x"}, ["key 1", "str(1)"]),
    "object value": ({"model": Opaque()}, ["'model'", "Opaque", "convert"]),
    "set value": ({"tags": {"a"}}, ["'tags'", "set", "convert"]),
    "nested int key": ({"run": {"ids": {7: "x"}}}, ["'run'", "key 7"]),
    "too large": ({"small": 1, "blob": "x" * METADATA_LIMIT},
                  ["1 MiB", "'blob'", "checkpoint's files"]),
}


@pytest.mark.parametrize("method", ["set_metadata", "update_metadata"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_metadata_is_refused_naming_the_key_and_nothing_changes(
    case: str, method: str
) -> None:
    checkpoint = Checkpoint.from_dict({"step": 1})
    checkpoint.set_metadata({"before": True})
    metadata, named = BAD[case]

    with pytest.raises(CheckpointError) as caught:
        getattr(checkpoint, method)(metadata)

    message = str(caught.value)
    assert all(part in message for part in named), message
    assert "\n" not in message
    assert checkpoint.get_metadata() == {"before": True}


def test_update_that_grows_past_the_limit_is_refused() -> None:
    checkpoint = Checkpoint.from_dict({})
    half = "x" * (METADATA_LIMIT // 2)
    checkpoint.set_metadata({"a": half})
    with pytest.raises(CheckpointError, match="1 MiB"):
        checkpoint.update_metadata({"b": half})
    assert checkpoint.get_metadata() == {"a": half}


@pytest.mark.parametrize("content", [b"[1, 2]", b'{"torn": ', b"\xff\xfe"],
                         ids=["list", "torn", "not utf-8"])
def test_a_damaged_metadata_file_is_a_checkpoint_error_naming_the_checkpoint(
    content: bytes, tmp_path: Path
) -> None:
    checkpoint = directory_checkpoint(tmp_path)
    (tmp_path / "ckpt" / METADATA_FILE).write_bytes(content)

    for read in (checkpoint.get_metadata, lambda: checkpoint.update_metadata({"a": 1})):
        with pytest.raises(CheckpointError) as caught:
            read()
        assert str(tmp_path / "ckpt") in str(caught.value)
        assert METADATA_FILE in str(caught.value) and "damaged" in str(caught.value)
    checkpoint.set_metadata({"fixed": True})  # replacing it needs no read
    assert checkpoint.get_metadata() == {"fixed": True}


# 3. Checkpoints reported by trials.


def reports_with_metadata(config: dict[str, Any]) -> None:
    """Four checkpoints, losses 2, 4, 1, 3, each with metadata naming its step."""
    for step, loss in enumerate((2.0, 4.0, 1.0, 3.0)):
        checkpoint = Checkpoint.from_dict({"step": step})
        checkpoint.set_metadata({"step": step, "tag": f"step-{step}"})
        checkpoint.update_metadata({"loss": loss})
        report({"loss": loss}, checkpoint=checkpoint)


def test_a_reported_checkpoints_metadata_is_on_the_result_and_can_be_set_after(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """S3: the result's checkpoints carry the metadata they were reported with; setting it
    on a stored checkpoint replaces the file, which a later read of the experiment sees,
    and the checkpoint stays committed with its data."""
    backend = make_backend("s3", request, tmp_path)
    (result,) = Tuner(reports_with_metadata, tune_config=THREAD, run_config=on(
        backend, "meta", checkpoint_config=CheckpointConfig(num_to_keep=None),
    )).fit()

    assert result.checkpoint is not None
    assert result.checkpoint.path.startswith("s3://")
    assert result.checkpoint.get_metadata() == {"step": 3, "tag": "step-3", "loss": 3.0}
    assert [(c.get_metadata()["step"], m["loss"]) for c, m in result.best_checkpoints] == \
        [(0, 2.0), (1, 4.0), (2, 1.0), (3, 3.0)]

    copy = Checkpoint.from_directory(result.checkpoint.to_directory(tmp_path / "copy"))
    assert copy.get_metadata() == {"step": 3, "tag": "step-3", "loss": 3.0}
    assert copy.to_dict() == {"step": 3}
    assert MANIFEST not in os.listdir(tmp_path / "copy")

    result.checkpoint.set_metadata({"verdict": "deploy"})
    result.checkpoint.update_metadata({"reviewed": True})

    path = f"{backend.url}/meta"
    (again,) = Tuner.restore(path, reports_with_metadata,
                             storage_options=backend.options).get_results()
    assert again.checkpoint is not None
    assert again.checkpoint.get_metadata() == {"verdict": "deploy", "reviewed": True}
    assert again.checkpoint.to_dict() == {"step": 3}
    assert stored_names(backend, again.checkpoint.path) == sorted(
        [MANIFEST, METADATA_FILE, "checkpoint.json"])


def test_metadata_of_a_deleted_checkpoint_cannot_be_set_and_nothing_is_written(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """S3: retention deleted checkpoint_000001 (loss 4); writing its metadata would leave
    a stray object where no checkpoint is."""
    backend = make_backend("s3", request, tmp_path)
    (result,) = Tuner(reports_with_metadata, tune_config=THREAD, run_config=on(
        backend, "gone", checkpoint_config=CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"),
    )).fit()
    deleted = Checkpoint(f"{result.path}/checkpoint_000001", backend.fs)

    with pytest.raises(CheckpointError) as caught:
        deleted.set_metadata({"a": 1})

    assert deleted.path in str(caught.value) and "does not exist" in str(caught.value)
    assert deleted.get_metadata() == {}
    assert "checkpoint_000001" not in stored_names(backend, result.path)


def test_retention_keeps_each_kept_checkpoints_own_metadata(tmp_path: Path) -> None:
    """Local: num_to_keep=2 by min loss keeps steps 0 and 2 (the best two) and 3 (the
    latest); each still has the metadata it was reported with, and nothing else is left."""
    backend = Backend("local", str(tmp_path / "storage"))
    (result,) = Tuner(reports_with_metadata, run_config=on(
        backend, "keep", checkpoint_config=CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"),
    )).fit()

    assert [n for n in stored_names(backend, result.path) if "checkpoint" in n] == [
        "checkpoint_000000", "checkpoint_000002", "checkpoint_000003"]
    kept = {Path(c.path).name: c.get_metadata() for c, _ in result.best_checkpoints}
    assert kept == {
        "checkpoint_000000": {"step": 0, "tag": "step-0", "loss": 2.0},
        "checkpoint_000002": {"step": 2, "tag": "step-2", "loss": 1.0},
    }
    assert result.checkpoint is not None
    assert result.checkpoint.get_metadata() == {"step": 3, "tag": "step-3", "loss": 3.0}
    for index in (0, 2, 3):
        committed = Path(result.path, f"checkpoint_{index:06d}")
        assert sorted(os.listdir(committed)) == sorted([MANIFEST, METADATA_FILE,
                                                        "checkpoint.json"])


class FlakyWithMetadata:
    """Checkpoints at steps 1 and 3 with metadata; the first attempt fails at step 4.
    Logs (attempt, metadata of get_checkpoint()) per call."""

    def __init__(self, log: CallLog) -> None:
        self.log = log
        self.__name__ = "flaky_meta"

    def __call__(self, config: dict[str, Any]) -> None:
        restored = get_checkpoint()
        attempt = get_context().attempt
        self.log.record(attempt, restored.get_metadata() if restored else None)
        start = restored.to_dict()["step"] + 1 if restored else 1
        for step in range(start, 7):
            if attempt == 1 and step == 4:
                raise RuntimeError("preempted at step 4")
            checkpoint = None
            if step % 2 == 1:
                checkpoint = Checkpoint.from_dict({"step": step})
                checkpoint.set_metadata({"step": step, "attempt": attempt})
            report({"loss": 10.0 - step}, checkpoint=checkpoint)


def test_a_retried_attempt_gets_the_checkpoint_with_its_metadata(tmp_path: Path) -> None:
    """Local, each attempt in a process of its own."""
    log = CallLog(str(tmp_path / "calls"))
    backend = Backend("local", str(tmp_path / "storage"))
    (result,) = Tuner(FlakyWithMetadata(log), run_config=on(
        backend, "retry", failure_config=FailureConfig(max_failures=1),
    )).fit()

    assert log.calls() == [[1, None], [2, {"step": 3, "attempt": 1}]]
    assert result.status is TrialStatus.TERMINATED and result.outcome.attempts == 2
    assert result.checkpoint is not None
    assert result.checkpoint.get_metadata() == {"step": 5, "attempt": 2}


class GatedWithMetadata:
    """Steps 1..4, each with a checkpoint and metadata; raises at step 3 until the file
    `gate` exists. Logs (attempt, metadata of get_checkpoint()) per call, and marks the
    restored checkpoint as resumed (metadata set on a stored checkpoint by a trial)."""

    __name__ = "gated_meta"

    def __init__(self, directory: Path) -> None:
        self.log = CallLog(str(directory / "calls"))
        self.gate = str(directory / "gate")

    def __call__(self, config: dict[str, Any]) -> None:
        restored = get_checkpoint()
        self.log.record(get_context().attempt, restored.get_metadata() if restored else None)
        if restored is not None:
            restored.update_metadata({"resumed": True})
        start = restored.to_dict()["step"] + 1 if restored else 1
        for step in range(start, 5):
            if step == 3 and not os.path.exists(self.gate):
                raise RuntimeError("fails until the gate opens")
            checkpoint = Checkpoint.from_dict({"step": step})
            checkpoint.set_metadata({"step": step})
            report({"loss": float(step)}, checkpoint=checkpoint)


def test_restore_resumes_from_the_checkpoint_with_its_metadata(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """GCS: a sweep whose trial errored is restored; the resumed attempt reads the
    metadata of the checkpoint it resumes from, and the finished experiment, read again,
    has every kept checkpoint's metadata."""
    backend = make_backend("gcs", request, tmp_path)
    trainable = GatedWithMetadata(tmp_path)
    (failed,) = Tuner(trainable, run_config=on(backend, "restore")).fit()
    assert failed.status is TrialStatus.ERROR

    Path(trainable.gate).touch()
    path = f"{backend.url}/restore"
    (resumed,) = Tuner.restore(path, trainable, resume_errored=True,
                               storage_options=backend.options).fit()

    assert trainable.log.calls() == [[1, None], [2, {"step": 2}]]
    assert resumed.status is TrialStatus.TERMINATED
    (finished,) = Tuner.restore(path, trainable, storage_options=backend.options).get_results()
    assert finished.checkpoint is not None
    assert finished.checkpoint.path.startswith("gs://")
    assert finished.checkpoint.get_metadata() == {"step": 4}
    assert [c.get_metadata() for c, _ in finished.best_checkpoints] == [
        {"step": 1}, {"step": 2, "resumed": True}, {"step": 3}, {"step": 4}]


class GrowWithMetadata:
    """Population-based training: each step adds config["lr"] to the value in the
    checkpoint, whose metadata names the trial that wrote it. Logs (trial id, restored
    data, restored metadata) whenever it starts from a checkpoint."""

    __name__ = "grow_meta"

    def __init__(self, log: CallLog) -> None:
        self.log = log

    def __call__(self, config: dict[str, Any]) -> None:
        me = get_context().trial_id
        restored = get_checkpoint()
        state = restored.to_dict() if restored else {"value": 0.0, "trial": me}
        if restored is not None:
            self.log.record(me, state, restored.get_metadata())
        value = state["value"]
        while True:
            value += config["lr"]
            checkpoint = Checkpoint.from_dict({"value": value, "trial": me})
            checkpoint.set_metadata({"written_by": me, "value": value})
            report({"score": value}, checkpoint=checkpoint)


def test_a_pbt_exploit_copies_the_donors_metadata_with_its_checkpoint(tmp_path: Path) -> None:
    """Local: the worse trial pauses at 2 and goes on from a copy of the better one's
    checkpoint; that copy has the donor's metadata, as every restored checkpoint has the
    metadata written with its data."""
    log = CallLog(str(tmp_path / "calls"))
    pbt = PopulationBasedTraining(perturbation_interval=2,
                                  hyperparam_mutations={"lr": [0.05, 0.1, 0.15]}, seed=7)
    t0, t1 = Tuner(
        GrowWithMetadata(log), param_space={"lr": grid_search([0.1, 0.2])},
        tune_config=TuneConfig(metric="score", mode="max", scheduler=pbt,
                               max_concurrent_trials=1),
        run_config=RunConfig(name="pbt", storage_path=str(tmp_path / "runs"),
                             stop={"training_iteration": 6},
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    ).fit()

    restores = log.calls()
    assert restores and all(metadata == {"written_by": data["trial"], "value": data["value"]}
                            for _, data, metadata in restores)
    exploits = [(me, data["trial"]) for me, data, _ in restores if data["trial"] != me]
    assert exploits == [(t1.trial_id, t0.trial_id)]
    assert t1.checkpoint is not None
    assert t1.checkpoint.get_metadata()["written_by"] == t1.trial_id
