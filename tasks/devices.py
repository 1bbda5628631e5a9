"""The GPUs a process gives the trials it runs: each running trial holds its own.

Every process that runs trial tasks (the sweep's, or a Dask worker) hands out its own
devices, so trials on one machine never share a GPU, whichever process placed them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect_tune.storage import ConfigError

_HELD: set[str] = set()
_LOCK = threading.Lock()


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else the NVIDIA
    devices the driver lists."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None:
        return [d.strip() for d in mask.split(",") if d.strip()]
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


@contextmanager
def claim(count: int) -> Iterator[tuple[str, ...]]:
    """`count` of this process's GPUs that no other running trial holds, held until the
    block ends.

    Raises:
        ConfigError: fewer are free (on Dask: a worker declares more GPUs in its
            resources than it has).
    """
    if not count:
        yield ()
        return
    with _LOCK:
        free = [d for d in visible_gpus() if d not in _HELD]
        if len(free) < count:
            raise ConfigError(
                f"a trial asks for {count} GPU(s), but only {len(free)} of this process's "
                f"GPUs ({','.join(visible_gpus()) or 'none'}) are free; a Dask worker must "
                "not declare more GPUs in --resources than CUDA_VISIBLE_DEVICES gives it"
            )
        devices = tuple(free[:count])
        _HELD.update(devices)
    try:
        yield devices
    finally:
        with _LOCK:
            _HELD.difference_update(devices)
