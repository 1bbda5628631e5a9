"""Local temp directories, kept where a killed process's successor finds and removes them.

Every temp directory prefect-tune makes lives under `<tmp>/prefect-tune-<uid>/<pid>/`.
A process that dies (killed, out of memory) cannot remove its own; the next sweep
removes those of every process that no longer runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile


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
