"""S3 storage under injected faults: real s3fs -> FaultProxy -> moto, all on 127.0.0.1.

Transient faults (503 SlowDown, a connection reset, a failed multipart part) must be
retried invisibly; a persistent one must raise StorageError, name the URI, keep the
credentials out of the message and leave nothing committed or half-uploaded behind.
"""

from __future__ import annotations

import json
import os
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from prefect_tune.storage import ExperimentStore, StorageError, resolve_storage
from prefect_tune.storage.layout import MANIFEST

from ..conftest import SECRET, s3_options
from ..faultproxy import FaultProxy

TRIAL = "train_f00d1_00000"
#: s3fs switches to multipart at 2 x its 50 MiB default part size: three parts here.
MULTIPART_SIZE = 100 * 2**20 + 4096
#: Bounded retries so a persistent fault fails in seconds (s3fs still loops 5 times).
FAIL_FAST = {"config_kwargs": {"retries": {"max_attempts": 1}}}


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's moto server, stopped after the test."""
    with FaultProxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def direct(moto_endpoint: str) -> Any:
    """An s3fs filesystem talking to moto directly, bypassing the proxy (and its faults)."""
    return fsspec.filesystem("s3", **s3_options(moto_endpoint))


@pytest.fixture
def bucket(direct: Any) -> str:
    name = f"faults-{uuid.uuid4().hex[:10]}"
    direct.mkdir(name)
    return name


def make_store(proxy: FaultProxy, bucket: str, **options: Any) -> ExperimentStore:
    storage = resolve_storage(f"s3://{bucket}/runs", {**s3_options(proxy.url), **options})
    return ExperimentStore(storage, "exp")


def write_tree(root: Path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return str(root)


def checkpoint_key(bucket: str, index: int, rel: str = "") -> str:
    """The key (no scheme) of checkpoint `index` of TRIAL, or of file `rel` in it."""
    key = f"{bucket}/runs/exp/{TRIAL}/checkpoint_{index:06d}"
    return f"{key}/{rel}" if rel else key


def assert_stored(direct: Any, bucket: str, index: int, files: dict[str, bytes]) -> None:
    """Checkpoint `index` holds exactly `files`, byte for byte, plus the manifest."""
    direct.invalidate_cache()
    prefix = checkpoint_key(bucket, index)
    stored = {path[len(prefix) + 1 :] for path in direct.find(prefix)}
    assert stored == {*files, MANIFEST}
    for rel, data in files.items():
        assert direct.cat_file(f"{prefix}/{rel}") == data, rel
    manifest = json.loads(direct.cat_file(f"{prefix}/{MANIFEST}"))
    assert manifest["files"] == {rel: len(data) for rel, data in files.items()}


def test_two_503s_on_a_checkpoint_put_are_retried(
    proxy: FaultProxy, bucket: str, direct: Any, tmp_path: Path
) -> None:
    store = make_store(proxy, bucket)
    files = {"model.bin": os.urandom(256 * 1024), "state/optim.json": b'{"lr": 0.1}'}
    source = write_tree(tmp_path / "ckpt", files)
    target = f"PUT /{checkpoint_key(bucket, 0, 'model.bin')}"
    proxy.inject("503", target, count=2)

    store.trial(TRIAL).commit_checkpoint(0, source)

    assert [(s.fault, s.status) for s in proxy.requests(target)] == [
        ("503", 503), ("503", 503), (None, 200),
    ]
    assert store.trial(TRIAL).committed_indexes() == [0]
    assert_stored(direct, bucket, 0, files)


def test_connection_reset_on_a_get_is_retried(
    proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    store = make_store(proxy, bucket)
    rows = [{"training_iteration": i, "loss": 1.0 / i} for i in (1, 2, 3)]
    store.trial(TRIAL).open_log(rows).close()
    target = f"GET /{bucket}/runs/exp/{TRIAL}/result.json"
    proxy.inject("reset", target)

    assert store.trial(TRIAL).read_rows() == rows

    assert [(s.fault, s.status) for s in proxy.requests(target)] == [
        ("reset", None), (None, 200),
    ]


def test_503_on_one_multipart_part_retries_that_part(
    proxy: FaultProxy, bucket: str, direct: Any, tmp_path: Path
) -> None:
    store = make_store(proxy, bucket)
    files = {"weights.bin": os.urandom(MULTIPART_SIZE), "meta.json": b'{"step": 7}'}
    source = write_tree(tmp_path / "ckpt", files)
    key = checkpoint_key(bucket, 0, "weights.bin")
    proxy.inject("503", f"PUT /{key}?partNumber=2&")

    store.trial(TRIAL).commit_checkpoint(0, source)

    parts = {
        n: [(s.fault, s.status) for s in proxy.requests(f"PUT /{key}?partNumber={n}&")]
        for n in (1, 2, 3)
    }
    assert parts == {1: [(None, 200)], 2: [("503", 503), (None, 200)], 3: [(None, 200)]}
    assert [s.status for s in proxy.requests(f"POST /{key}?uploads")] == [200]
    assert [s.status for s in proxy.requests(f"POST /{key}?uploadId=")] == [200]  # complete
    assert store.trial(TRIAL).committed_indexes() == [0]
    assert_stored(direct, bucket, 0, files)


@pytest.mark.parametrize("failing", [MANIFEST, "weights.bin"])
def test_persistent_503_fails_the_commit_and_leaves_nothing(
    proxy: FaultProxy, bucket: str, direct: Any, tmp_path: Path, failing: str
) -> None:
    store = make_store(proxy, bucket, **FAIL_FAST)
    files = {"weights.bin": os.urandom(64 * 1024), "meta.json": b'{"step": 1}'}
    source = write_tree(tmp_path / "ckpt", files)
    target = f"PUT /{checkpoint_key(bucket, 0, failing)}"
    proxy.inject("503", target, count=1000)

    with pytest.raises(StorageError) as caught:
        store.trial(TRIAL).commit_checkpoint(0, source)

    assert f"s3://{checkpoint_key(bucket, 0)}" in str(caught.value)
    assert len(proxy.fired(target)) > 1  # retried, then given up
    assert proxy.requests(target) == proxy.fired(target)  # never got through
    if failing != MANIFEST:  # the manifest is written last: never after a failed file
        assert proxy.requests(f"PUT /{checkpoint_key(bucket, 0, MANIFEST)}") == []
    assert store.trial(TRIAL).committed_indexes() == []
    direct.invalidate_cache()
    assert direct.find(checkpoint_key(bucket, 0)) == []  # the partial upload is removed

    proxy.clear()
    store.trial(TRIAL).commit_checkpoint(1, source)
    assert store.trial(TRIAL).committed_indexes() == [1]
    assert_stored(direct, bucket, 1, files)


def test_storage_error_does_not_leak_the_secret(
    proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    store = make_store(proxy, bucket, **FAIL_FAST)
    source = write_tree(tmp_path / "ckpt", {"weights.bin": b"w" * 1024})
    target = f"PUT /{checkpoint_key(bucket, 0, 'weights.bin')}"
    proxy.inject("503", target, count=1000)

    with pytest.raises(StorageError) as caught:
        store.trial(TRIAL).commit_checkpoint(0, source)

    assert proxy.fired(target)
    assert f"s3://{checkpoint_key(bucket, 0)}" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    assert SECRET not in "".join(traceback.format_exception(caught.value))  # whole chain
