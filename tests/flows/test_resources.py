"""Per-trial resources: concurrency limited by what fits, each trial's own GPUs (out of
the ones this process may use) and CPU threads; a trial asking for too much is refused.

No GPU is here: the tests give the process four device ids through CUDA_VISIBLE_DEVICES,
which is what trials are assigned from; that a framework then sees exactly those GPUs is
CUDA's part and was not run on a real GPU."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search, with_resources
from prefect_tune.storage import ConfigError, RunConfig
from prefect_tune.tasks import Trainable, get_context, report

pytestmark = pytest.mark.usefixtures("prefect_server")


class Probe:
    """Records each trial's devices, threads and running interval; trials wait until two
    run at once (or 60 s pass) so that concurrent ones overlap for sure."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def __call__(self, config: dict[str, Any]) -> None:
        folder = Path(self.folder)
        name = get_context().trial_id
        (folder / f"start-{name}").write_text(str(time.time()))
        deadline = time.monotonic() + 60
        while len(list(folder.glob("start-*"))) - len(list(folder.glob("end-*"))) < 2 \
                and len(list(folder.glob("start-*"))) < config["total"] \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        report({"x": 1})
        (folder / f"trial-{name}.json").write_text(json.dumps({
            "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": os.environ.get("OMP_NUM_THREADS"),
        }))
        (folder / f"end-{name}").write_text(str(time.time()))


def intervals(folder: Path) -> list[tuple[float, float, str]]:
    out = []
    for start in folder.glob("start-*"):
        name = start.name[len("start-"):]
        out.append((float(start.read_text()), float((folder / f"end-{name}").read_text()),
                    name))
    return out


def test_gpu_trials_run_two_at_a_time_on_distinct_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four visible GPUs, two per trial: at most two trials at once (although eight are
    allowed), each with two of the inherited ids, and trials that overlap share none."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    folder = tmp_path / "probe"
    folder.mkdir()
    grid = Tuner(
        with_resources(Probe(folder), {"gpu": 2}),
        param_space={"i": grid_search([0, 1, 2, 3]), "total": 4},
        tune_config=TuneConfig(max_concurrent_trials=8),
        run_config=RunConfig(name="gpus", storage_path=str(tmp_path / "runs")),
    ).fit()
    assert grid.num_terminated == 4
    spans = intervals(folder)
    seen = {name: json.loads((folder / f"trial-{name}.json").read_text()) for *_, name in spans}
    devices = {name: set(s["devices"].split(",")) for name, s in seen.items()}
    assert all(len(d) == 2 and d <= {"4", "5", "6", "7"} for d in devices.values())
    overlapping = [(a[2], b[2]) for a in spans for b in spans
                   if a[2] < b[2] and a[0] < b[1] and b[0] < a[1]]
    assert overlapping  # two did run at once
    assert all(not devices[a] & devices[b] for a, b in overlapping)
    assert max(sum(s[0] <= t < s[1] for s in spans) for t, _, _ in spans) == 2


def test_cpu_trials_get_their_threads_and_fit_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TuneConfig(resources_per_trial) does the same without a wrapper: with all of this
    machine's CPUs per trial, trials run one at a time, each with OMP_NUM_THREADS set."""
    cpus = os.cpu_count() or 1
    folder = tmp_path / "probe"
    folder.mkdir()
    grid = Tuner(
        Probe(folder), param_space={"i": grid_search([0, 1]), "total": 1},
        tune_config=TuneConfig(max_concurrent_trials=4, resources_per_trial={"CPU": cpus}),
        run_config=RunConfig(name="cpus", storage_path=str(tmp_path / "runs")),
    ).fit()
    assert grid.num_terminated == 2
    spans = sorted(intervals(folder))
    assert spans[0][1] <= spans[1][0]  # one after the other
    assert {json.loads((folder / f"trial-{n}.json").read_text())["threads"]
            for *_, n in spans} == {str(cpus)}
    assert {json.loads((folder / f"trial-{n}.json").read_text())["devices"]
            for *_, n in spans} == {None}  # no GPU asked for: the mask is left alone


class Steps(Trainable):
    def step(self) -> dict[str, Any]:
        return {"done": True, "devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_asking_for_more_than_the_machine_has_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    run = RunConfig(name="big", storage_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"asks for 0 CPUs and 4 GPUs, but this machine has "
                                          r"\d+ CPUs and 2 GPUs \(CUDA_VISIBLE_DEVICES='0,1'\)"):
        Tuner(with_resources(Steps, {"gpu": 4}), run_config=run).fit()
    with pytest.raises(ConfigError, match="isolation='process'"):
        Tuner(with_resources(Steps, {"gpu": 1}), run_config=run,
              tune_config=TuneConfig(isolation="thread")).fit()
    with pytest.raises(ConfigError, match="counts >= 0 and a whole number of GPUs"):
        with_resources(Steps, {"gpu": 0.5})
    assert list(tmp_path.iterdir()) == []


def test_a_class_trainable_with_resources_gets_its_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    grid = Tuner(with_resources(Steps, {"gpu": 1}),
                 run_config=RunConfig(name="cls", storage_path=str(tmp_path))).fit()
    assert grid[0].metrics["devices"] == "3"
    assert grid[0].outcome.trial_name.startswith("Steps_")


BIG = os.urandom(4 << 20)  # a 4 MiB "dataset"


def uses_dataset(config: dict[str, Any], *, dataset: bytes, vocab: dict[str, int]) -> None:
    import hashlib

    report({"digest": hashlib.sha256(dataset).hexdigest(), "words": len(vocab)})


class UsesDataset(Trainable):
    def setup(self, config: dict[str, Any], *, dataset: bytes = b"",
              vocab: dict[str, int] | None = None) -> None:
        self.size = len(dataset)

    def step(self) -> dict[str, Any]:
        return {"size": self.size, "done": True}


def test_shared_objects_reach_every_trial_once_and_are_never_stored(tmp_path: Path) -> None:
    """with_parameters: each trial process gets the objects, its job stays small (they
    are written to one file, not pickled into each trial), and no stored file holds them."""
    import hashlib

    import cloudpickle

    from prefect_tune.flows import with_parameters

    trainable = with_parameters(uses_dataset, dataset=BIG, vocab={"a": 1, "b": 2})
    grid = Tuner(trainable, param_space={"i": grid_search([0, 1, 2])},
                 run_config=RunConfig(name="shared", storage_path=str(tmp_path))).fit()
    assert grid.num_terminated == 3
    assert {r.metrics["digest"] for r in grid} == {hashlib.sha256(BIG).hexdigest()}
    assert {r.metrics["words"] for r in grid} == {2}
    assert os.getpid() not in {r.metrics["pid"] for r in grid}  # in child processes
    assert len(cloudpickle.dumps(trainable)) < 64 << 10  # the path, not the 4 MiB
    stored = max(p.stat().st_size for p in (tmp_path / "shared").rglob("*") if p.is_file())
    assert stored < 1 << 20
    classy = with_parameters(UsesDataset, dataset=BIG)
    grid = Tuner(classy, run_config=RunConfig(name="cls", storage_path=str(tmp_path))).fit()
    assert grid[0].metrics["size"] == len(BIG)
