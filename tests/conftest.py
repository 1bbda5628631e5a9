"""Shared real components: one Prefect server, one moto S3 server and one GCS emulator
per test session, all on 127.0.0.1, plus the storage backends the contract runs over."""

from __future__ import annotations

import os

# gcsfs probes a gRPC API per bucket that the emulator lacks (60 s timeout each): off,
# before gcsfs is imported anywhere in this process or its children.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

SECRET = "do-not-leak-5f3c9a"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become healthy; see {log}")
        time.sleep(0.2)


def drain_prefect_workers() -> None:
    """Deliver this process's queued run logs and events to the API."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all()


def wait_for(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 60) -> T:
    """Re-read until `done(value)` holds: the server records task runs from events
    asynchronously. Returns the last value read (the caller asserts on it)."""
    drain_prefect_workers()
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real `prefect server start` on 127.0.0.1; in-process flows and CLIs use it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, port = tempfile.mkdtemp(prefix="prefect-home-"), free_port()
    env = dict(
        os.environ, PREFECT_HOME=home, PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    env.pop("PREFECT_API_URL", None)
    log_path = os.path.join(home, "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_healthy(f"{url}/health", proc, log_path, timeout=180)
        os.environ["PREFECT_API_URL"] = url
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        drain_prefect_workers()  # deliver queued logs and events before the server goes away
        os.environ.pop("PREFECT_API_URL", None)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (in-process, real HTTP)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_options(endpoint: str, secret: str = SECRET) -> dict[str, Any]:
    return {
        "key": "testing", "secret": secret, "skip_instance_cache": True,
        "client_kwargs": {"endpoint_url": endpoint},
    }


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """gcp-storage-emulator on 127.0.0.1, in memory, with bucket `sweeps`."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="sweeps")
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def gcs_options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "token": "anon", "project": "test"}


@dataclass
class Backend:
    """A storage location for one test: a URL, its fsspec options, and a raw filesystem."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def fs(self) -> Any:
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.options)[0]


def make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Any) -> Backend:
    unique = uuid.uuid4().hex[:10]
    if name == "local":
        return Backend(name, str(tmp_path / "storage"))
    if name == "memory":
        return Backend(name, f"memory://sweeps-{unique}")
    if name == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        backend = Backend(name, f"s3://sweeps-{unique}/runs", s3_options(endpoint))
        backend.fs.mkdir(f"sweeps-{unique}")
        return backend
    if name == "gcs":
        endpoint = request.getfixturevalue("gcs_endpoint")
        return Backend(name, f"gs://sweeps/{unique}", gcs_options(endpoint))
    raise ValueError(name)


BACKENDS = ["local", "memory", "s3", "gcs"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Backend:
    return make_backend(request.param, request, tmp_path)


@dataclass(frozen=True)
class CallLog:
    """Records calls in a file, so that trainables running in child processes can be
    counted: each `record` appends one JSON line (O_APPEND keeps lines whole)."""

    path: str

    def record(self, *values: Any) -> None:
        import json

        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(list(values)) + "\n")

    def calls(self) -> list[list[Any]]:
        import json

        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]
