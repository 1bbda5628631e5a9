"""What trials get besides their config: resources (how many trials fit on this machine
at once, which GPUs each gets: `with_resources`, `TuneConfig(resources_per_trial=...)`)
and shared objects (`with_parameters`)."""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import cloudpickle

from prefect_tune.storage import ConfigError
from prefect_tune.storage.scratch import scratch_dir
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


def with_parameters(trainable: T, **objects: Any) -> T:
    """`trainable`, called with `objects` as keyword arguments: a function as
    `trainable(config, **objects)`, a class trainable's `setup(config, **objects)`.

    The objects (a dataset, a tokenizer) never enter a trial's config, params.json or
    experiment.json. A trial process does not get them pickled into its job either: the
    first time the trainable leaves this process, the objects are written once to a local
    file, and each process loads them from it once. Trials on another machine (Dask)
    need that file at the same path (a shared mount).
    """
    shared = _Shared(objects)
    if is_class_trainable(trainable):
        assert isinstance(trainable, type)
        base: Any = trainable

        def setup(self: Any, config: dict[str, Any]) -> None:
            base.setup(self, config, **shared.objects)

        return type(trainable.__name__, (trainable,), {  # type: ignore[return-value]
            "setup": setup, "__module__": trainable.__module__,
            "__qualname__": trainable.__qualname__,
        })

    @functools.wraps(trainable)
    def wrapped(config: dict[str, Any]) -> Any:
        return trainable(config, **shared.objects)

    return wrapped  # type: ignore[return-value]


_LOADED: dict[str, dict[str, Any]] = {}


class _Shared:
    """Objects shared by every trial; pickled as the path of a file holding them."""

    def __init__(self, objects: dict[str, Any]) -> None:
        self._objects: dict[str, Any] | None = objects
        self._path: str | None = None

    @property
    def objects(self) -> dict[str, Any]:
        if self._objects is None:
            assert self._path is not None
            if self._path not in _LOADED:
                with open(self._path, "rb") as handle:
                    _LOADED[self._path] = pickle.load(handle)
            self._objects = _LOADED[self._path]
        return self._objects

    def __getstate__(self) -> dict[str, Any]:
        if self._path is None:
            path = os.path.join(scratch_dir("parameters-"), "objects.pickle")
            with open(path, "wb") as handle:
                cloudpickle.dump(self._objects, handle)
            self._path = path
        return {"_objects": None, "_path": self._path}
