"""Local temp directories, kept where a killed process's successor finds and removes them;
and atomic writes of local files.

Every temp directory prefect-tune makes lives under `<tmp>/prefect-tune-<uid>/<pid>/`.
A process that dies (killed, out of memory) cannot remove its own; the next sweep
removes those of every process that no longer runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from prefect_tune.storage.layout import token


def _root() -> str:
    return os.path.join(tempfile.gettempdir(), f"prefect-tune-{os.getuid()}")


def scratch_dir(prefix: str) -> str:
    """A new temp directory of this process; the caller removes it when done."""
    directory = os.path.join(_root(), str(os.getpid()))
    os.makedirs(directory, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=directory)


def clean_scratch() -> None:
    """Remove the temp directories of processes that no longer run."""
    try:
        names = os.listdir(_root())
    except FileNotFoundError:
        return
    for name in names:
        if name.isdigit() and not running(int(name)):
            shutil.rmtree(os.path.join(_root(), name), ignore_errors=True)


def running(pid: int) -> bool:
    """Whether process `pid` of this machine runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_local_atomic(path: str, data: bytes, *, durable: bool = True,
                       create_dirs: bool = True) -> None:
    """Write `data` to a temp file beside `path`, fsync it if `durable`, and rename it
    over `path`: readers see the old or the new content.

    Raises:
        FileNotFoundError: the directory of `path` does not exist, and not `create_dirs`.
    """
    temp = f"{path}.tmp-{token()}"
    try:
        try:
            handle = open(temp, "wb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            if not create_dirs:
                raise
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = open(temp, "wb")  # noqa: SIM115
        with handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
