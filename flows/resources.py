"""What trials get besides their config: resources (how many trials fit on this machine,
or on each Dask worker, at once: `with_resources`, `TuneConfig(resources_per_trial=...)`)
and shared objects (`with_parameters`)."""

from __future__ import annotations

import functools
import os
import pickle
import threading
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
    allow (on Dask: as the resources each worker declares allow), and gives each trial
    process its own GPUs (`CUDA_VISIBLE_DEVICES`, out of the ones the process running
    the trial may use) and `OMP_NUM_THREADS` of its CPUs. A class trainable is
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


def check_isolation(resources: Resources, isolation: str) -> None:
    """Raises ConfigError if trials asking for GPUs would run in threads."""
    if resources.gpu and isolation == "thread":
        raise ConfigError(
            f"trials asking for {resources.gpu} GPU(s) need TuneConfig(isolation='process') "
            "or 'spawn': a thread shares its process's devices"
        )


def capacity(resources: Resources, gpus: list[str], isolation: str) -> int:
    """How many trials asking for `resources` fit on this machine at once.

    Raises:
        ConfigError: a trial asks for more than the machine has, or GPUs in a thread.
    """
    check_isolation(resources, isolation)
    cpus = os.cpu_count() or 1
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


def on_dask(runner: object) -> bool:
    """Whether `runner` is prefect-dask's DaskTaskRunner (without importing it)."""
    return type(runner).__module__.startswith("prefect_dask")


def dask_resources(resources: Resources) -> dict[str, float]:
    """The Dask worker resources one trial takes ("CPU", "GPU"), for `dask.annotate`."""
    return {name: float(count) for name, count in (("CPU", resources.cpu),
                                                   ("GPU", resources.gpu)) if count}


def cluster_capacity(runner: Any, resources: Resources) -> int | None:
    """How many trials asking for `resources` the Dask cluster of `runner` runs at once,
    by the resources its workers declare (`dask worker --resources "GPU=2,CPU=8"`);
    None when the count of workers is not known before the cluster starts.

    Raises:
        ConfigError: no worker declares enough for one trial.
    """
    wanted = dask_resources(resources)
    if runner.address is None:  # a cluster the runner starts: its kwargs say it all
        kwargs = runner.cluster_kwargs or {}
        declared = [dict(kwargs.get("resources") or {})] * int(kwargs.get("n_workers", 1))
        known = "n_workers" in kwargs
        where = f"cluster_kwargs {kwargs!r}"
    else:
        from distributed import Client

        with Client(runner.address, timeout=30) as client:  # type: ignore[no-untyped-call]
            workers = client.scheduler_info()["workers"]
        declared = [dict(w.get("resources") or {}) for w in workers.values()]
        known = True
        where = f"the workers of {runner.address} ({declared or 'none'})"
    fits = [min(int(w.get(name, 0) // count) for name, count in wanted.items())
            for w in declared]
    if not any(fits):
        raise ConfigError(
            f"a trial asks for {wanted}, but no Dask worker declares that much: "
            f"{where}. Start workers with `dask worker --resources "
            f"\"{','.join(f'{k}={v:g}' for k, v in wanted.items())}\"` (or LocalCluster("
            "resources=...)); each worker then runs as many trials as its resources hold"
        )
    return sum(fits) if known else None


def with_parameters(trainable: T, **objects: Any) -> T:
    """`trainable`, called with `objects` as keyword arguments: a function as
    `trainable(config, **objects)`, a class trainable's `setup(config, **objects)`.

    The objects (a dataset, a tokenizer) never enter a trial's config, params.json or
    experiment.json. A trial process does not get them pickled into its job either: the
    first time the trainable leaves this process, the objects are written once to a local
    file, and each process loads them from it once; a warm worker loads them once for
    all the trial processes it forks. Trials on another machine (Dask) need that file at
    the same path (a shared mount).
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
_WRITING = threading.Lock()


class _Shared:
    """Objects shared by every trial; pickled as the path of a file holding them, and
    loaded when unpickled (a warm worker loads them once for all the trials it forks)."""

    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        self._path: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        with _WRITING:  # concurrent trials pickle it at once: one file for all
            if self._path is None:
                path = os.path.join(scratch_dir("parameters-"), "objects.pickle")
                with open(path, "wb") as handle:
                    cloudpickle.dump(self.objects, handle)
                self._path = path
        return {"_path": self._path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._path = path = state["_path"]
        if path not in _LOADED:
            with open(path, "rb") as handle:
                _LOADED[path] = pickle.load(handle)
        self.objects = _LOADED[path]
