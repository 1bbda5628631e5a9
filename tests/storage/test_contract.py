"""The storage contract, run over every backend: local dir, memory://, S3 (moto), GCS (emulator)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prefect_tune.storage import Checkpoint, ExperimentStore, StorageError, resolve_storage
from prefect_tune.storage.layout import MANIFEST

from ..conftest import Backend


def make_store(backend: Backend, name: str = "exp") -> ExperimentStore:
    return ExperimentStore(resolve_storage(backend.url, backend.options), name)


def write_tree(root: Path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return str(root)


def test_probe_succeeds_and_leaves_nothing(backend: Backend) -> None:
    store = make_store(backend)
    store.probe()
    assert [n for n in store.storage.listdir(store.layout.root) if n.startswith(".probe")] == []


def test_write_file_replaces_whole_content(backend: Backend) -> None:
    store = make_store(backend)
    store.write_file("results.json", b"[1]")
    store.write_file("results.json", b"[1, 2]")
    assert store.storage.read_bytes(store.layout.join("results.json")) == b"[1, 2]"


def test_committed_checkpoint_round_trips_every_file(backend: Backend, tmp_path: Path) -> None:
    files = {"model.bin": os.urandom(70_000), "sub/opt.json": b'{"lr": 0.1}', "empty": b""}
    source = write_tree(tmp_path / "src", files)
    store = make_store(backend)
    store.trial("t_00000").commit_checkpoint(0, source)

    assert store.trial("t_00000").committed_indexes() == [0]
    checkpoint = store.trial("t_00000").checkpoint(0)
    target = Path(checkpoint.to_directory(str(tmp_path / "out")))
    got = {
        str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()
    }
    assert got == files  # the manifest is storage-internal and never handed to the user
    with checkpoint.as_directory() as local:
        assert Path(local, "model.bin").read_bytes() == files["model.bin"]
        assert local != checkpoint.path  # a stored checkpoint is never lent out for writing


def test_uncommitted_directories_are_never_listed(backend: Backend, tmp_path: Path) -> None:
    """A checkpoint_N without its manifest (a writer that died mid-upload) is not a checkpoint,
    and its index is still never reused."""
    store = make_store(backend)
    source = write_tree(tmp_path / "src", {"w": b"1"})
    store.trial("t_00000").commit_checkpoint(0, source)
    torn = store.layout.checkpoint_dir("t_00000", 1)
    store.storage.fs.makedirs(torn, exist_ok=True)
    store.storage.fs.pipe_file(f"{torn}/w", b"partial")
    assert store.trial("t_00000").committed_indexes() == [0]
    assert store.trial("t_00000").next_index() == 2


def test_delete_uncommits_then_removes(backend: Backend, tmp_path: Path) -> None:
    store = make_store(backend)
    source = write_tree(tmp_path / "src", {"w": b"1", "d/x": b"2"})
    store.trial("t_00000").commit_checkpoint(0, source)
    store.trial("t_00000").commit_checkpoint(1, source)
    store.trial("t_00000").delete_checkpoint(0)
    assert store.trial("t_00000").committed_indexes() == [1]
    assert not store.storage.exists(store.layout.checkpoint_dir("t_00000", 0) + "/w")
    assert store.trial("t_00000").next_index() == 2


def test_result_log_round_trips_rows_and_widens_csv(backend: Backend) -> None:
    store = make_store(backend)
    log = store.trial("t_00000").open_log()
    log.append({"loss": 1.5, "training_iteration": 1}, durable=False)
    log.append({"loss": float("nan"), "acc": 0.5, "training_iteration": 2}, durable=True)
    log.close()
    rows = store.trial("t_00000").read_rows()
    assert [r["training_iteration"] for r in rows] == [1, 2]
    assert rows[1]["acc"] == 0.5
    csv = store.storage.read_bytes(store.layout.trial_file("t_00000", "progress.csv")).decode()
    assert csv.splitlines() == ["loss,training_iteration,acc", "1.5,1,", "nan,2,0.5"]


def test_torn_last_line_is_skipped(backend: Backend) -> None:
    store = make_store(backend)
    path = store.layout.trial_file("t_00000", "result.json")
    store.storage.fs.makedirs(store.layout.trial_dir("t_00000"), exist_ok=True)
    store.storage.fs.pipe_file(path, b'{"training_iteration": 1}\n{"training_iter')
    assert store.trial("t_00000").read_rows() == [{"training_iteration": 1}]


def test_dict_checkpoint_reads_back_from_storage(backend: Backend) -> None:
    store = make_store(backend)
    data = {"w": [1.0, 2.0], "step": 3, "nested": {"ok": True}}
    with Checkpoint.from_dict(data).as_directory() as local:
        store.trial("t_00000").commit_checkpoint(0, local)
    assert store.trial("t_00000").checkpoint(0).to_dict() == data


def test_manifest_lists_files_with_sizes(backend: Backend, tmp_path: Path) -> None:
    store = make_store(backend)
    store.trial("t_00000").commit_checkpoint(4, write_tree(tmp_path / "s", {"a": b"xyz"}))
    manifest = store.storage.read_bytes(store.layout.checkpoint_dir("t_00000", 4) + "/" + MANIFEST)
    assert json.loads(manifest) == {"format": 1, "files": {"a": 3}}


def test_missing_source_directory_is_a_clear_error(backend: Backend, tmp_path: Path) -> None:
    store = make_store(backend)
    with pytest.raises(StorageError, match="does not exist"):
        store.trial("t_00000").commit_checkpoint(0, str(tmp_path / "nope"))
    assert store.trial("t_00000").committed_indexes() == []


def test_failed_upload_leaves_no_partial_checkpoint(backend: Backend, tmp_path: Path) -> None:
    """A source file that cannot be read (EIO) fails the commit mid-copy and leaves nothing."""
    source = tmp_path / "src"
    write_tree(source, {"a": b"1" * 100_000})
    (source / "z_unreadable").symlink_to("/proc/self/mem")  # stat works, read fails with EIO
    store = make_store(backend)
    with pytest.raises(OSError):
        store.trial("t_00000").commit_checkpoint(0, str(source))
    assert store.trial("t_00000").committed_indexes() == []
    assert store.storage.listdir(store.layout.trial_dir("t_00000")) == []


def test_interrupted_delete_is_finished_by_the_retry(backend: Backend, tmp_path: Path) -> None:
    """A delete that stopped after uncommitting (manifest gone, files left) is completed by
    calling it again, and leaves nothing behind."""
    store = make_store(backend)
    store.trial("t_00000").commit_checkpoint(0, write_tree(tmp_path / "s", {"w": b"1"}))
    path = store.layout.checkpoint_dir("t_00000", 0)
    if store.storage.is_local:
        os.rename(path, store.layout.trash_dir("t_00000", 0))  # renamed, rmtree never ran
    else:
        store.storage.fs.rm_file(f"{path}/{MANIFEST}")  # uncommitted, rm never ran
    store.trial("t_00000").delete_checkpoint(0)
    assert store.storage.listdir(store.layout.trial_dir("t_00000")) == []


def test_resume_never_reuses_an_index_a_row_referenced(backend: Backend, tmp_path: Path) -> None:
    store = make_store(backend)
    log = store.trial("t_00000").open_log()
    log.append({"training_iteration": 1, "checkpoint_dir_name": "checkpoint_000004"}, durable=True)
    log.close()
    assert store.trial("t_00000").resume_point().next_index == 5


def test_trial_state_round_trips_and_an_empty_file_is_no_record(backend: Backend) -> None:
    from prefect_tune.storage import CheckpointRecord, TrialOutcome, TrialSpec, TrialStatus
    from prefect_tune.storage.layout import TRIAL_STATE

    store = make_store(backend)
    done, cut, never = (TrialSpec(f"t{i}", f"train_t{i}", {"x": i}) for i in range(3))
    outcome = TrialOutcome("t0", "train_t0", {"x": 0}, TrialStatus.TERMINATED,
                           last_metrics={"loss": 0.5}, num_reports=3,
                           checkpoints=(CheckpointRecord(2, {"loss": 0.5}),),
                           best_checkpoints=(CheckpointRecord(2, {"loss": 0.5}),),
                           best_score=0.5, attempts=2)
    store.write_trial_state(outcome)
    # What a power loss can leave after an unsynced replace: an empty file.
    store.storage.fs.makedirs(store.layout.trial_dir(cut.trial_name), exist_ok=True)
    store.storage.fs.pipe_file(store.layout.trial_file(cut.trial_name, TRIAL_STATE), b"")
    assert store.read_trial_states([done, cut, never]) == [outcome, None, None]
    assert store.read_trial_state(done) == outcome


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_linked_files_and_folders_are_stored_as_their_contents(
    backend: Backend, tmp_path: Path
) -> None:
    """A checkpoint directory with a link to a folder of weights and a link to a file
    stores what they point to, the same on every backend: read back byte for byte."""
    weights = {"weights.bin": os.urandom(4096), "shards/0.bin": b"shard"}
    write_tree(tmp_path / "cache", weights)
    (tmp_path / "tokenizer.json").write_bytes(b'{"vocab": 3}')
    source = tmp_path / "src"
    write_tree(source, {"step.txt": b"7"})
    (source / "model").symlink_to(tmp_path / "cache", target_is_directory=True)
    (source / "tokenizer.json").symlink_to(tmp_path / "tokenizer.json")
    store = make_store(backend)
    store.trial("t_00000").commit_checkpoint(0, str(source))
    out = Path(store.trial("t_00000").checkpoint(0).to_directory(tmp_path / "out"))
    expected = {"step.txt": b"7", "tokenizer.json": b'{"vocab": 3}',
                **{f"model/{k}": v for k, v in weights.items()}}
    assert read_tree(out) == expected
    manifest = json.loads(store.storage.read_bytes(
        store.layout.checkpoint_dir("t_00000", 0) + "/" + MANIFEST))
    assert manifest["files"] == {k: len(v) for k, v in expected.items()}


@pytest.mark.parametrize("link", ["loop", "broken"])
def test_a_link_loop_or_broken_link_is_refused_and_nothing_is_committed(
    backend: Backend, tmp_path: Path, link: str
) -> None:
    from prefect_tune.storage import CheckpointError

    source = tmp_path / "src"
    write_tree(source, {"sub/a.bin": b"a"})
    (source / "sub" / "back").symlink_to(source if link == "loop" else tmp_path / "gone")
    store = make_store(backend)
    pattern = "'sub/back' links back to" if link == "loop" else "'sub/back' is a broken link"
    with pytest.raises(CheckpointError, match=pattern):
        store.trial("t_00000").commit_checkpoint(0, str(source))
    assert store.storage.listdir(store.layout.trial_dir("t_00000")) == []


def test_a_new_metric_name_in_every_row_keeps_progress_csv_whole(backend: Backend) -> None:
    """300 rows, each with a metric name never seen before: progress.csv is valid CSV
    whenever it is read (a header as wide as its rows), and at the end it holds every row
    under the union of all columns."""
    import io

    import pandas as pd

    store = make_store(backend)
    log = store.trial("t_00000").open_log()
    path = store.layout.trial_file("t_00000", "progress.csv")
    for i in range(300):
        log.append({f"m{i}": i, "training_iteration": i + 1}, durable=i % 50 == 0)
        if i % 50 == 0 and store.storage.exists(path):
            live = pd.read_csv(io.BytesIO(store.storage.read_bytes(path)))  # never ragged
            assert set(live.columns) <= {f"m{k}" for k in range(i + 1)} | {"training_iteration"}
    log.close()
    final = pd.read_csv(io.BytesIO(store.storage.read_bytes(path)))
    assert list(final.columns) == ["m0", "training_iteration",
                                   *[f"m{k}" for k in range(1, 300)]]
    assert final["training_iteration"].tolist() == list(range(1, 301))
    assert [final[f"m{k}"].dropna().tolist() for k in (0, 150, 299)] == [[0], [150], [299]]
    assert len(store.trial("t_00000").read_rows()) == 300
