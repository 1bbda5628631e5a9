"""Storage faults fail only the trial they hit, with a StorageError naming the file: S3
errors injected by a proxy in front of moto, a full disk, a directory this process may
not write."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.flows.results import Result, ResultGrid
from prefect_tune.storage import (
    Checkpoint,
    FailureConfig,
    RunConfig,
    StorageError,
    TrialStatus,
    layout,
)
from prefect_tune.storage.layout import MANIFEST
from prefect_tune.tasks import get_checkpoint, report

from ..conftest import s3_options
from ..faultproxy import FaultProxy

pytestmark = pytest.mark.usefixtures("prefect_server")

#: Bounded retries so that a persistent fault fails in seconds (s3fs still tries 5 times).
FAIL_FAST = {"config_kwargs": {"retries": {"max_attempts": 1}}}
#: A fault that never runs out.
PERSISTENT = 10**6
NAME = "exp"


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's moto server, stopped after the test."""
    with FaultProxy(moto_endpoint) as running:
        yield running


@pytest.fixture(scope="module")
def direct(moto_endpoint: str) -> Any:
    """An s3fs filesystem talking to moto directly, bypassing the proxy (and its faults)."""
    return fsspec.filesystem("s3", **s3_options(moto_endpoint))


def new_bucket(direct: Any) -> str:
    """A fresh, empty bucket."""
    name = f"faults-{uuid.uuid4().hex[:10]}"
    direct.mkdir(name)
    return name


def two_steps(config: dict[str, Any]) -> None:
    """Two reports with a checkpoint each. Trial 0 first waits (at most 120 s) for the
    file "go" in config["folder"]."""
    folder = Path(config["folder"])
    if config["index"] == 0:
        deadline = time.monotonic() + 120
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    for step in (1, 2):
        report({"score": config["index"] * step},
               checkpoint=Checkpoint.from_dict({"step": step}))


def two_steps_tuner(url: str, options: dict[str, Any], folder: Path) -> Tuner:
    """Trials 0, 1 and 2 of `two_steps`, one at a time, in experiment NAME at `url`."""
    return Tuner(
        two_steps,
        param_space={"folder": str(folder), "index": grid_search([0, 1, 2])},
        tune_config=TuneConfig(max_concurrent_trials=1, isolation="thread"),
        run_config=RunConfig(name=NAME, storage_path=url, storage_options=options),
    )


def by_index(grid: ResultGrid) -> dict[int, Result]:
    """The grid's results by their config's index."""
    return {r.config["index"]: r for r in grid}


def trial_name(result: Result) -> str:
    """The directory name of `result`'s trial."""
    return result.path.rstrip("/").rsplit("/", 1)[-1]


class InjectBeforeTrialOne(threading.Thread):
    """Waits for the sweep's experiment.json (read past the proxy), injects a persistent
    503 on PUTs of trial 1's `file_name`, then lets trial 0, and so the sweep, go on:
    trial 1 starts only after trial 0 ends, so the fault is in place before it runs."""

    def __init__(self, proxy: FaultProxy, direct: Any, bucket: str, file_name: str,
                 folder: Path) -> None:
        super().__init__(daemon=True)
        self.proxy, self.direct, self.bucket = proxy, direct, bucket
        self.file_name, self.folder = file_name, folder
        self.target = ""
        self.uri = ""

    def run(self) -> None:
        key = f"{self.bucket}/runs/{NAME}/experiment.json"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                self.direct.invalidate_cache()
                if self.direct.exists(key):
                    break
                time.sleep(0.05)
            experiment = json.loads(self.direct.cat_file(key))
            # the search names trial 1 (config index 1) from the experiment's prefix
            name = layout.trial_name(experiment["trainable"],
                                     layout.trial_id(experiment["search"]["trial_prefix"], 1))
            path = f"{self.bucket}/runs/{NAME}/{name}/{self.file_name}"
            self.target, self.uri = f"PUT /{path}", f"s3://{path}"
            self.proxy.inject("503", self.target, count=PERSISTENT)
        finally:
            (self.folder / "go").touch()


def sweep_with_put_fault(proxy: FaultProxy, direct: Any, tmp_path: Path,
                         file_name: str) -> tuple[ResultGrid, InjectBeforeTrialOne]:
    """Run the three-trial sweep on S3 through the proxy with PUTs of trial 1's
    `file_name` failing for good."""
    bucket = new_bucket(direct)
    injector = InjectBeforeTrialOne(proxy, direct, bucket, file_name, tmp_path)
    injector.start()
    grid = two_steps_tuner(f"s3://{bucket}/runs", {**s3_options(proxy.url), **FAIL_FAST},
                           tmp_path).fit()
    injector.join(5)
    assert injector.target, "the fault was never injected"
    return grid, injector


# 1-2. A write fault fails that trial only.


@pytest.mark.parametrize("file_name", ["trial.json", "result.json"])
def test_a_persistent_put_fault_fails_only_the_trial_it_hits(
    proxy: FaultProxy, direct: Any, tmp_path: Path, file_name: str
) -> None:
    """Trial 1 ends ERROR with a StorageError naming the file; trials 0 and 2 finish, and
    fit() returns."""
    grid, injector = sweep_with_put_fault(proxy, direct, tmp_path, file_name)

    results = by_index(grid)
    assert {i: r.status for i, r in results.items()} == {
        0: TrialStatus.TERMINATED, 1: TrialStatus.ERROR, 2: TrialStatus.TERMINATED,
    }
    assert injector.uri.endswith(f"{trial_name(results[1])}/{file_name}")
    error = results[1].error
    assert error is not None
    assert "StorageError" in str(error), str(error)
    assert injector.uri in str(error), str(error)
    assert len(proxy.fired(injector.target)) > 1  # retried, then given up
    assert proxy.requests(injector.target) == proxy.fired(injector.target)  # never through


# 3. A read fault.


@pytest.fixture(scope="module")
def finished_on_s3(direct: Any, moto_endpoint: str, prefect_server: str,
                   tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished three-trial experiment on S3 (written directly); its path."""
    bucket = new_bucket(direct)
    folder = tmp_path_factory.mktemp("read-fault")
    (folder / "go").touch()
    grid = two_steps_tuner(f"s3://{bucket}/runs", s3_options(moto_endpoint), folder).fit()
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 3
    return f"{bucket}/runs/{NAME}"


def first_trial(direct: Any, experiment: str) -> str:
    """The name of trial 0 of the stored experiment (its record in .trials/)."""
    trial = json.loads(direct.cat_file(f"{experiment}/.trials/00000000.json"))
    assert trial["config"]["index"] == 0
    return str(trial["trial_name"])


def test_a_persistent_read_fault_on_trial_json_is_a_storage_error_naming_it(
    proxy: FaultProxy, direct: Any, finished_on_s3: str
) -> None:
    """get_results() raises one StorageError line naming the trial.json it could not
    read, instead of reporting that trial with another status."""
    path = f"{finished_on_s3}/{first_trial(direct, finished_on_s3)}/trial.json"
    proxy.inject("503", f"GET /{path}", count=PERSISTENT)
    tuner = Tuner.restore(f"s3://{finished_on_s3}", two_steps,
                          storage_options={**s3_options(proxy.url), **FAIL_FAST})

    with pytest.raises(StorageError) as caught:
        tuner.get_results()

    assert f"s3://{path}" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(proxy.fired(f"GET /{path}")) > 1
    assert proxy.requests(f"GET /{path}") == proxy.fired(f"GET /{path}")


@pytest.mark.parametrize("count", [1, 2])
def test_a_transient_read_fault_on_trial_json_is_retried(
    proxy: FaultProxy, direct: Any, finished_on_s3: str, count: int
) -> None:
    """`count` 503s, then the read gets through: every trial reads TERMINATED."""
    path = f"{finished_on_s3}/{first_trial(direct, finished_on_s3)}/trial.json"
    proxy.inject("503", f"GET /{path}", count=count)

    grid = Tuner.restore(f"s3://{finished_on_s3}", two_steps,
                         storage_options={**s3_options(proxy.url), **FAIL_FAST}).get_results()

    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 3
    assert [s.status for s in proxy.requests(f"GET /{path}")] == [503] * count + [200]


# 4. A full disk.


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)


CHECKPOINT_BYTES = 512 * 1024


def big_checkpoints(config: dict[str, Any]) -> None:
    """Steps 1..3, each with a checkpoint of one 512 KiB file, continuing after a restored
    checkpoint."""
    checkpoint = get_checkpoint()
    start = 1
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            start = json.loads(Path(restored, "step.json").read_text())["step"] + 1
    for step in range(start, 4):
        with tempfile.TemporaryDirectory() as local:
            Path(local, "weights.bin").write_bytes(os.urandom(CHECKPOINT_BYTES))
            Path(local, "step.json").write_text(json.dumps({"step": step}))
            report({"step": step}, checkpoint=Checkpoint.from_directory(local))


def big_checkpoints_tuner(disk: Path) -> Tuner:
    """A Tuner of `big_checkpoints` in experiment "full" on `disk`, without retries."""
    return Tuner(
        big_checkpoints,
        tune_config=TuneConfig(isolation="thread"),
        run_config=RunConfig(name="full", storage_path=str(disk), tensorboard=False,
                             failure_config=FailureConfig(max_failures=0)),
    )


def fill(path: Path, limit: int | None = None) -> None:
    """Write `limit` bytes to `path`, or (None) as many as the disk takes."""
    chunk = b"\0" * 65536
    written = 0
    with open(path, "wb", buffering=0) as handle:
        while limit is None or written < limit:
            try:
                written += handle.write(chunk) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


def assert_only_committed_checkpoints(trial: Path) -> None:
    """Every checkpoint_* directory holds its manifest, and nothing is being written."""
    names = sorted(p.name for p in trial.iterdir())
    assert [n for n in names if n.startswith("checkpoint_")
            and not (trial / n / MANIFEST).exists()] == []
    assert [n for n in names if n.startswith(".checkpoint_")] == []


def test_a_full_disk_fails_the_checkpointing_trial_naming_the_file(small_disk: Path) -> None:
    """The trial ends ERROR with a StorageError that names the checkpoint and says the
    disk is full, leaving no partial checkpoint; the results read back; after space is
    freed, a restore on the same disk finishes it and leaves no temp files."""
    filler = small_disk / "filler.bin"
    fill(filler, 1024 * 1024)

    result = big_checkpoints_tuner(small_disk).fit()[0]

    experiment = small_disk / "full"
    trial = experiment / trial_name(result)
    assert result.status is TrialStatus.ERROR
    assert result.error is not None
    message = str(result.error)
    assert "StorageError" in message, message
    assert str(trial / "checkpoint_000001") in message, message
    assert "disk is full" in message, message
    assert_only_committed_checkpoints(trial)
    assert sorted(p.name for p in trial.glob("checkpoint_*")) == ["checkpoint_000000"]
    stored = big_checkpoints_tuner(small_disk).get_results()[0]
    assert stored.status is TrialStatus.ERROR
    assert stored.metrics["step"] == 1

    filler.unlink()
    resumed = Tuner.restore(str(experiment), big_checkpoints, resume_errored=True).fit()[0]

    assert resumed.status is TrialStatus.TERMINATED
    assert resumed.metrics["step"] == 3
    assert_only_committed_checkpoints(trial)
    leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(experiment)
                 for n in dirs + files if ".tmp-" in n]
    assert leftovers == []


def test_a_full_disk_fails_a_new_sweep_naming_the_file(small_disk: Path) -> None:
    """With no space left, fit() of a new experiment fails with one StorageError line
    naming the file it could not write in the experiment directory (the probe or
    experiment.json) and saying the disk is full."""
    fill(small_disk / "filler.bin")

    with pytest.raises(StorageError) as caught:
        Tuner(two_steps, param_space={"folder": str(small_disk), "index": 1},
              tune_config=TuneConfig(isolation="thread"),
              run_config=RunConfig(name="late", storage_path=str(small_disk))).fit()

    message = str(caught.value)
    assert f"{small_disk / 'late'}/.probe-" in message \
        or f"{small_disk / 'late'}/experiment.json" in message, message
    assert "disk is full" in message, message
    assert "\n" not in message


# 5. A directory this process may not write.

PERMISSION_CHILD = """
import os, sys
from prefect_tune.storage import StorageError, resolve_storage

storage = resolve_storage(sys.argv[1])
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    storage.write_bytes(storage.join("experiment.json"), b"{}")
except StorageError as exc:
    print(exc)
else:
    sys.exit("the write succeeded")
"""


def test_permission_denied_names_the_owner_the_mode_and_the_uid() -> None:
    """A process running as uid 65534 writing into a root-owned 0o755 directory gets a
    StorageError naming the file, the owner, the mode and its own uid.

    The child drops its privileges after start-up, not in preexec_fn: the interpreter
    may live where uid 65534 cannot reach (under /root)."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges to uid 65534 needs root")
    directory = tempfile.mkdtemp(prefix="prefect-tune-denied-")  # /tmp: others may enter
    try:
        os.chmod(directory, 0o755)
        done = subprocess.run([sys.executable, "-c", PERMISSION_CHILD, directory],
                              check=False, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(directory)

    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert f"could not write {directory}/experiment.json" in message, message
    assert f"{directory} is owned by uid 0" in message, message
    assert "drwxr-xr-x" in message, message
    assert "runs as uid 65534" in message, message
