"""Reading a result log's new rows as a trial writes it (the sweep's watcher): only the
complete rows past the last read, and the whole log again once a retry rewrote it
shorter; on local storage and on S3 (moto)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest

from prefect_tune.storage import Storage, resolve_storage
from prefect_tune.storage.trial_dir import read_new_rows

from ..conftest import s3_options


def rows(*iterations: int) -> bytes:
    return b"".join(json.dumps({"training_iteration": i}).encode() + b"\n" for i in iterations)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return resolve_storage(str(tmp_path))
    options = s3_options(request.getfixturevalue("moto_endpoint"))
    bucket = f"tail-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3", **options).mkdir(bucket)
    return resolve_storage(f"s3://{bucket}", options)


def test_new_rows_are_read_once_and_a_rewritten_log_from_its_start(storage: Storage) -> None:
    path = storage.join("trial", "result.json")

    assert read_new_rows(storage, path, 0) == ([], 0)  # not written yet
    storage.write_bytes(path, rows(1, 2))
    found, offset = read_new_rows(storage, path, 0)
    assert [r["training_iteration"] for r in found] == [1, 2]
    assert read_new_rows(storage, path, offset) == ([], offset)  # nothing new

    storage.write_bytes(path, rows(1, 2, 3) + b'{"training_iter')  # a row being written
    found, offset = read_new_rows(storage, path, offset)
    assert [r["training_iteration"] for r in found] == [3]

    storage.write_bytes(path, rows(1))  # a retry cut the log back to its checkpoint
    found, offset = read_new_rows(storage, path, offset)
    assert [r["training_iteration"] for r in found] == [1]
    assert offset == len(rows(1))
