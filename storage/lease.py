"""One writer per experiment: the lease a run holds on its experiment while it runs.

    <experiment>/.lease/000007.json      the newest file is the lease

Taking the lease creates the next number exclusively (create-if-absent: a hard link
locally, If-None-Match on S3), so of two runs that try at once only one gets it. Its
holder rewrites its own file every RENEW_SECONDS to push the expiry on, and deletes it
when the run ends. A lease whose expiry has passed (a holder that died on another
machine), or whose holder is a process of this machine that no longer exists, is taken
over, with a warning naming the old holder. There is no forced takeover of a live lease:
stop the run that holds it, or wait LEASE_SECONDS after it died.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from prefect_tune.storage.errors import ExperimentBusy, StorageError
from prefect_tune.storage.filesystem import Storage
from prefect_tune.storage.layout import token
from prefect_tune.storage.scratch import running

#: How long a lease outlives its last renewal: what a run that died elsewhere blocks.
LEASE_SECONDS = 60.0
#: How often the holder renews.
RENEW_SECONDS = 15.0

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (seconds since the epoch)."""

    host: str
    pid: int
    run: str | None
    since: float
    expires: float
    token: str

    def describe(self) -> str:
        run = f", flow run {self.run}" if self.run else ""
        since = datetime.fromtimestamp(self.since, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"process {self.pid} on host {self.host!r}{run}, since {since}"

    def stale(self, now: float) -> str | None:
        """Why the lease no longer binds anyone (expired, or its process is gone), or None."""
        if self.expires <= now:
            return f"it expired {now - self.expires:.0f} s ago"
        if self.host == socket.gethostname() and not running(self.pid):
            return f"process {self.pid} no longer runs"
        return None


class Lease:
    """A lease this process holds on the experiment whose lease directory is `directory`."""

    def __init__(self, storage: Storage, path: str, holder: Holder) -> None:
        self._storage, self._path, self.holder = storage, path, holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def take(cls, storage: Storage, directory: str, run: str | None, logger: Logger) -> Lease:
        """Take the lease, or refuse at once if another run holds it.

        Raises:
            ExperimentBusy: a live run holds it (naming its process, host, flow run and
                since when).
        """
        for _ in range(5):  # another run may take it between our read and our create
            numbers = _numbers(storage, directory)
            if numbers:
                current = _read(storage, f"{directory}/{numbers[-1]:06d}.json")
                reason = current.stale(time.time()) if current else "it is unreadable"
                if current and reason is None:
                    raise ExperimentBusy(
                        f"experiment {storage.uri(directory.rsplit('/', 1)[0])} is being run "
                        f"by {current.describe()}: one run at a time may write an "
                        "experiment. Wait for it to end (or stop it); a run that died on "
                        f"another machine releases it within {LEASE_SECONDS:.0f} s"
                    )
                logger.warning("taking over the experiment's lease from %s: %s",
                               current.describe() if current else "an earlier run", reason)
            now = time.time()
            holder = Holder(socket.gethostname(), os.getpid(), run, now,
                            now + LEASE_SECONDS, token())
            path = f"{directory}/{(numbers[-1] + 1) if numbers else 0:06d}.json"
            if storage.create(path, _encode(holder)):
                for number in numbers:  # older leases: best effort, the newest one counts
                    try:
                        storage.remove(f"{directory}/{number:06d}.json")
                    except OSError:
                        pass
                return cls(storage, path, holder)
        raise ExperimentBusy(f"the lease of {storage.uri(directory)} is contended: try again")

    def keep(self, on_lost: Callable[[ExperimentBusy], None]) -> None:
        """Renew every RENEW_SECONDS until `release`; call `on_lost` once another run
        took the lease (this process stalled past its expiry)."""
        def renew() -> None:
            while not self._stop.wait(RENEW_SECONDS):
                try:
                    self.renew()
                except ExperimentBusy as exc:
                    on_lost(exc)
                    return
                except StorageError:
                    continue  # a passing storage fault: the lease lasts LEASE_SECONDS

        self._thread = threading.Thread(target=renew, name="experiment-lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Push the expiry on.

        Raises:
            ExperimentBusy: another run holds the lease now.
        """
        directory, name = self._path.rsplit("/", 1)
        newer = [n for n in _numbers(self._storage, directory) if n > int(name[:6])]
        if newer:
            current = _read(self._storage, f"{directory}/{newer[-1]:06d}.json")
            raise ExperimentBusy(
                f"this run lost the lease of its experiment to "
                f"{current.describe() if current else 'another run'}"
            )
        self.holder = Holder(**{**asdict(self.holder), "expires": time.time() + LEASE_SECONDS})
        self._storage.write_bytes(self._path, _encode(self.holder), durable=False)

    def release(self) -> None:
        """Stop renewing and delete the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = _read(self._storage, self._path)
        if current is not None and current.token == self.holder.token:
            self._storage.remove(self._path)


def _numbers(storage: Storage, directory: str) -> list[int]:
    names = storage.listdir(directory)
    return sorted(int(n[:6]) for n in names if len(n) == 11 and n[:6].isdigit()
                  and n.endswith(".json"))


def _read(storage: Storage, path: str) -> Holder | None:
    try:
        return Holder(**json.loads(storage.read_bytes(path)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # not a lease this version wrote: it binds no one


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder)).encode()
