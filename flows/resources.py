"""Per-trial resources: how many trials fit on this machine at once, and which GPUs each
trial gets (`with_resources`, `TuneConfig(resources_per_trial=...)`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from prefect_tune.storage import ConfigError
from prefect_tune.tasks.plan import Resources
from prefect_tune.tasks.trainable import is_class_trainable

T = TypeVar("T", bound=Callable[..., Any])
_ATTRIBUTE = "__prefect_tune_resources__"


def with_resources(trainable: T, resources: Mapping[str, float]) -> T:
    """`trainable`, asking for `resources` ({"cpu": n, "gpu": m}) per trial.

    The sweep then runs at most as many trials at once as this machine's CPUs and GPUs
    allow, and gives each trial process its own GPUs (`CUDA_VISIBLE_DEVICES`, out of the
    ones this process may use) and `OMP_NUM_THREADS` of its CPUs. A class trainable is
    returned as a subclass, a function as a wrapper of the same name.
    """
    parsed = Resources.parse(resources)
    if is_class_trainable(trainable):
        assert isinstance(trainable, type)
        return type(trainable.__name__, (trainable,), {  # type: ignore[return-value]
            _ATTRIBUTE: parsed, "__module__": trainable.__module__,
            "__qualname__": trainable.__qualname__,
        })

    @functools.wraps(trainable)
    def wrapped(config: dict[str, Any]) -> Any:
        return trainable(config)

    setattr(wrapped, _ATTRIBUTE, parsed)
    return wrapped  # type: ignore[return-value]


def resources_of(trainable: object) -> Resources | None:
    """What `with_resources` attached to `trainable`, if anything."""
    found = getattr(trainable, _ATTRIBUTE, None)
    return found if isinstance(found, Resources) else None


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


def capacity(resources: Resources, gpus: list[str], isolation: str) -> int:
    """How many trials asking for `resources` fit on this machine at once.

    Raises:
        ConfigError: a trial asks for more than the machine has, or GPUs in a thread.
    """
    cpus = os.cpu_count() or 1
    if resources.gpu and isolation != "process":
        raise ConfigError(
            f"trials asking for {resources.gpu} GPU(s) need TuneConfig(isolation='process'): "
            "a thread shares its process's devices"
        )
    if resources.cpu > cpus or resources.gpu > len(gpus):
        raise ConfigError(
            f"a trial asks for {resources.cpu:g} CPUs and {resources.gpu} GPUs, but this "
            f"machine has {cpus} CPUs and {len(gpus)} GPUs (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); ask for less, or run on a bigger "
            "machine"
        )
    fits = [int(cpus // resources.cpu)] if resources.cpu else []
    fits += [len(gpus) // resources.gpu] if resources.gpu else []
    return min(fits, default=cpus)
