"""`Checkpoint`: dict and directory checkpoints on the local filesystem."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest

from prefect_tune.storage.checkpoint import Checkpoint
from prefect_tune.storage.errors import CheckpointError


def test_from_dict_round_trips_via_to_dict() -> None:
    data = {"step": 3, "lr": 0.01, "name": "run", "done": False, "none": None,
            "nested": {"a": [1, 2.5, "x"]}}
    assert Checkpoint.from_dict(data).to_dict() == data


@pytest.mark.parametrize("value", [{1, 2}, object()], ids=["set", "object"])
def test_from_dict_refuses_non_json_value_naming_key_and_allow_pickle(value: object) -> None:
    with pytest.raises(CheckpointError) as info:
        Checkpoint.from_dict({"weights": value})
    message = str(info.value)
    assert "weights" in message
    assert "allow_pickle" in message


def test_pickled_dict_needs_allow_pickle_to_load() -> None:
    data = {"weights": {1, 2}, "step": 3}
    checkpoint = Checkpoint.from_dict(data, allow_pickle=True)
    with pytest.raises(CheckpointError) as info:
        checkpoint.to_dict()
    assert "allow_pickle" in str(info.value)
    assert checkpoint.to_dict(allow_pickle=True) == data


def test_numpy_scalars_come_back_as_plain_numbers() -> None:
    np = pytest.importorskip("numpy")
    data = {"f32": np.float32(0.5), "f64": np.float64(1.25), "i64": np.int64(7)}
    loaded = Checkpoint.from_dict(data).to_dict()
    assert loaded == {"f32": 0.5, "f64": 1.25, "i64": 7}
    assert type(loaded["f32"]) is float
    assert type(loaded["f64"]) is float
    assert type(loaded["i64"]) is int


def test_from_directory_of_missing_dir_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError) as info:
        Checkpoint.from_directory(missing)
    assert str(missing) in str(info.value)


def test_fspath_of_checkpoint_raises_type_error() -> None:
    checkpoint = Checkpoint.from_dict({"a": 1})
    with pytest.raises(TypeError):
        os.fspath(checkpoint)


def test_to_directory_copies_files_into_new_dir(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "model.bin").write_bytes(b"\x00\x01\x02")
    (source / "sub" / "opt.json").write_text('{"lr": 0.1}')
    checkpoint = Checkpoint.from_directory(source)

    target = Path(checkpoint.to_directory(tmp_path / "out"))

    assert target == tmp_path / "out"
    assert (target / "model.bin").read_bytes() == b"\x00\x01\x02"
    assert (target / "sub" / "opt.json").read_text() == '{"lr": 0.1}'
    assert (source / "model.bin").exists()


def test_to_directory_without_path_copies_into_fresh_temp_dir(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"m")
    checkpoint = Checkpoint.from_directory(tmp_path)
    target = Path(checkpoint.to_directory())
    try:
        assert target != tmp_path
        assert (target / "model.bin").read_bytes() == b"m"
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_as_directory_of_own_local_dir_yields_same_dir(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"m")
    checkpoint = Checkpoint.from_directory(tmp_path)
    with checkpoint.as_directory() as local:
        assert Path(local) == tmp_path
    assert (tmp_path / "model.bin").exists()


def test_from_dict_temp_dir_removed_after_garbage_collection() -> None:
    checkpoint = Checkpoint.from_dict({"a": 1})
    directory = checkpoint.path
    assert os.path.isdir(directory)
    del checkpoint
    gc.collect()
    assert not os.path.exists(directory)
