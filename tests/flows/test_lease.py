"""One writer per experiment: a second run is refused at once, naming the first; a dead
run's lease is taken over; a lease of another host binds until it expires."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import Tuner
from prefect_tune.storage import ExperimentBusy, resolve_storage
from prefect_tune.storage.lease import Lease

pytestmark = pytest.mark.usefixtures("prefect_server")

MODULE = '''
import os, time
from pathlib import Path
from prefect_tune.tasks import report

def wait_for_go(config):
    folder = Path(config["folder"])
    (folder / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    report({"x": 1})
'''

DRIVER = '''
import sys
sys.path.insert(0, sys.argv[1])
import leasemod
from prefect_tune.flows import TuneConfig, Tuner
from prefect_tune.storage import RunConfig
Tuner(leasemod.wait_for_go, param_space={"folder": sys.argv[1]},
      tune_config=TuneConfig(isolation="thread"),
      run_config=RunConfig(name="busy", storage_path=sys.argv[2])).fit()
'''


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp_path / "leasemod.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import leasemod

    return leasemod


def wait_for(path_glob: str, folder: Path, process: subprocess.Popen[bytes]) -> Path:
    """The first file matching `path_glob` in `folder`, once the driver has made it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = sorted(folder.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the driver never got to {path_glob} (exit {process.poll()})")


@pytest.fixture
def driver(tmp_path: Path, module: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A real second process running a sweep of experiment "busy" whose trial waits."""
    process = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path),
                                str(tmp_path / "storage")], stderr=subprocess.PIPE)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_run_is_refused_while_the_first_runs(
    tmp_path: Path, module: Any, driver: subprocess.Popen[bytes]
) -> None:
    started = wait_for("started-*", tmp_path, driver)
    assert started.name == f"started-{driver.pid}"
    experiment = str(tmp_path / "storage" / "busy")
    with pytest.raises(ExperimentBusy) as refused:
        Tuner.restore(experiment, module.wait_for_go).fit()
    message = str(refused.value)
    assert f"process {driver.pid} on host {socket.gethostname()!r}, flow run " in message
    assert "one run at a time" in message
    cli = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "prefect-tune"), "restore",
         experiment, "--trainable", "leasemod:wait_for_go"],
        check=False, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert cli.returncode == 1
    assert f"is being run by process {driver.pid}" in cli.stderr
    (tmp_path / "go").touch()
    assert driver.wait(120) == 0
    assert os.listdir(tmp_path / "storage" / "busy" / ".lease") == []  # released
    rows = (tmp_path / "storage" / "busy").glob("wait_for_go_*/result.json")
    assert [len(p.read_text().splitlines()) for p in rows] == [1]


def test_the_lease_of_a_killed_run_is_taken_over_at_once(
    tmp_path: Path, module: Any, driver: subprocess.Popen[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    wait_for("started-*", tmp_path, driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    (tmp_path / "go").touch()
    grid = Tuner.restore(str(tmp_path / "storage" / "busy"), module.wait_for_go).fit()
    assert grid.num_terminated == 1
    assert f"taking over the experiment's lease from process {driver.pid}" in caplog.text
    assert "no longer runs" in caplog.text


def lease_file(host: str, expires_in: float) -> bytes:
    now = time.time()
    return json.dumps({"host": host, "pid": 4242, "run": "f1e2d3", "since": now - 100,
                       "expires": now + expires_in, "token": "abc"}).encode()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_lease_of_another_host_binds_until_it_expires(
    tmp_path: Path, where: str, request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused while the other host's lease runs; taken (as number 4) once it expired."""
    import logging

    from ..conftest import make_backend

    backend = make_backend(where, request, tmp_path)
    storage = resolve_storage(backend.url, backend.options)
    directory = storage.join("exp", ".lease")
    storage.write_bytes(f"{directory}/000003.json", lease_file("elsewhere", 600))
    logger = logging.getLogger("lease-test")
    with pytest.raises(ExperimentBusy, match=r"process 4242 on host 'elsewhere', flow run "
                                             r"f1e2d3, since "):
        Lease.take(storage, directory, "mine", logger)
    storage.write_bytes(f"{directory}/000003.json", lease_file("elsewhere", -5))
    with caplog.at_level(logging.WARNING, "lease-test"):
        lease = Lease.take(storage, directory, "mine", logger)
    assert "from process 4242 on host 'elsewhere'" in caplog.text
    assert "it expired 5 s ago" in caplog.text or "it expired 6 s ago" in caplog.text
    assert storage.listdir(directory) == ["000004.json"]
    with pytest.raises(ExperimentBusy, match=f"process {os.getpid()}"):
        Lease.take(storage, directory, "other", logger)
    lease.release()
    assert storage.listdir(directory) == []


def test_exclusive_create_refuses_an_existing_object(tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    """The primitive the lease rests on: the second create of one name fails, locally and
    on S3 (If-None-Match), and the first content stays."""
    from ..conftest import make_backend

    for where in ("local", "s3"):
        backend = make_backend(where, request, tmp_path / where)
        storage = resolve_storage(backend.url, backend.options)
        path = storage.join("x.json")
        assert storage.create(path, b"first")
        assert not storage.create(path, b"second")
        assert storage.read_bytes(path) == b"first"
