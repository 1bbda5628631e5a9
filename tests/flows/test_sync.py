"""SyncConfig: trials that write to a local staging directory which a syncer (a command or
a function) copies into storage; what is refused up front; retries, timeouts and failures
that are reported, never skipped; and staging that is cleaned and never fills up."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.storage import (
    Checkpoint,
    CheckpointConfig,
    ConfigError,
    FailureConfig,
    RunConfig,
    SyncConfig,
    TrialStatus,
)
from prefect_tune.storage.layout import MANIFEST, staging_trial_dir
from prefect_tune.tasks import get_context, report

from ..conftest import CallLog, make_backend

pytestmark = pytest.mark.usefixtures("prefect_server")

COPY = 'mkdir -p {target} && cp -R {source}/. {target}/'


def staged_checkpoints(config: dict[str, Any]) -> list[str]:
    """Checkpoint directories in this trial's staging directory right now."""
    context = get_context()
    staging = staging_trial_dir(config["local_dir"], context.experiment_name,
                                context.trial_name)
    return sorted(n for n in os.listdir(staging) if "checkpoint" in n)


def train(config: dict[str, Any]) -> None:
    """Five steps, a checkpoint each; records what staging holds after each report."""
    for step in range(1, 6):
        report({"loss": config["scale"] / step, "staged": len(staged_checkpoints(config))},
               checkpoint=Checkpoint.from_dict({"step": step}))


def tuner(tmp_path: Path, trainable: Any, sync: SyncConfig, space: dict[str, Any],
          storage: str | None = None, options: dict[str, Any] | None = None,
          **run: Any) -> Tuner:
    local_dir = str(tmp_path / "staging")
    return Tuner(
        trainable, param_space={**space, "local_dir": local_dir},
        tune_config=TuneConfig(max_concurrent_trials=2),
        run_config=RunConfig(name="exp", storage_path=storage or str(tmp_path / "storage"),
                             storage_options=options, sync_config=sync, local_dir=local_dir,
                             **run),
    )


def test_a_sync_command_carries_every_checkpoint_and_row_into_storage(tmp_path: Path) -> None:
    grid = tuner(tmp_path, train, SyncConfig(syncer=COPY), {"scale": grid_search([1, 2])},
                 checkpoint_config=CheckpointConfig(num_to_keep=2)).fit()
    for result in grid:
        assert result.status is TrialStatus.TERMINATED
        frame = result.metrics_dataframe
        assert frame["training_iteration"].tolist() == [1, 2, 3, 4, 5]
        assert frame["staged"].tolist() == [0] * 5  # committed copies leave staging
        trial_dir = Path(result.path)
        kept = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
        assert kept == ["checkpoint_000003", "checkpoint_000004"]
        assert all((trial_dir / name / MANIFEST).exists() for name in kept)
        assert result.checkpoint.to_dict() == {"step": 5}
    assert os.listdir(tmp_path / "staging") == []  # cleaned once the data is in storage
    restored = Tuner.restore(str(tmp_path / "storage" / "exp"), train).get_results()
    assert [r.metrics["loss"] for r in restored] == [0.2, 0.4]


def to_s3(source: str, target: str) -> None:
    """A function syncer: copies with its own S3 client, counting its calls."""
    options = json.loads(Path(source).parents[2].joinpath("s3.json").read_text())
    fs = fsspec.filesystem("s3", **options)
    CallLog(str(Path(source).parents[2] / "syncs.log")).record(target)
    for directory, _, names in os.walk(source):
        for name in names:
            local = os.path.join(directory, name)
            fs.put_file(local, f"{target}/{os.path.relpath(local, source)}")


def test_a_sync_function_copies_to_s3(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    backend = make_backend("s3", request, tmp_path)
    (tmp_path / "s3.json").write_text(json.dumps(backend.options))
    grid = tuner(tmp_path, train, SyncConfig(syncer=to_s3), {"scale": 1},
                 storage=backend.url, options=backend.options).fit()
    result = grid[0]
    assert result.status is TrialStatus.TERMINATED
    assert result.path.startswith("s3://")
    assert [c.to_dict() for c, _ in result.best_checkpoints] == [{"step": s} for s in range(1, 6)]
    assert result.metrics_dataframe["staged"].tolist() == [0] * 5
    syncs = CallLog(str(tmp_path / "syncs.log")).calls()
    assert len(syncs) == 6 and {s[0] for s in syncs} == {result.path}  # 5 checkpoints + end


def waits_for_a_periodic_sync(config: dict[str, Any]) -> None:
    """Reports one row, no checkpoint; then waits (at most 30 s) until the row is in
    storage, which only a periodic sync can have put there."""
    report({"first": 1})
    stored = Path(get_context().trial_path) / "result.json"
    deadline = time.monotonic() + 30
    while not (stored.exists() and stored.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    report({"seen": int(stored.exists() and '"first": 1' in stored.read_text())})


def test_rows_reach_storage_every_sync_period(tmp_path: Path) -> None:
    grid = tuner(tmp_path, waits_for_a_periodic_sync,
                 SyncConfig(syncer=COPY, sync_period=0.2), {}).fit()
    assert grid[0].metrics["seen"] == 1


def flaky_syncer(source: str, target: str) -> None:
    """Fails twice per sync (per fresh log), then copies."""
    log = CallLog(str(Path(source).parents[2] / "syncs.log"))
    log.record("try")
    if len(log.calls()) % 3:
        raise OSError("throttled")
    fs = fsspec.filesystem("file")
    fs.makedirs(target, exist_ok=True)
    fs.put(source + "/", target, recursive=True)


def failing_syncer(source: str, target: str) -> None:
    CallLog(str(Path(source).parents[2] / "syncs.log")).record("try")
    raise OSError("bucket is gone")


def one_checkpoint(config: dict[str, Any]) -> None:
    report({"loss": 1.0}, checkpoint=Checkpoint.from_dict({"step": 1}))


def test_a_failing_sync_is_retried(tmp_path: Path) -> None:
    grid = tuner(tmp_path, one_checkpoint, SyncConfig(syncer=flaky_syncer), {}).fit()
    assert grid[0].status is TrialStatus.TERMINATED
    assert grid[0].checkpoint.to_dict() == {"step": 1}
    assert len(CallLog(str(tmp_path / "syncs.log")).calls()) == 6  # 2 syncs x 3 tries


def test_a_sync_that_keeps_failing_fails_the_trial_and_keeps_staging(tmp_path: Path) -> None:
    grid = tuner(tmp_path, one_checkpoint, SyncConfig(syncer=failing_syncer, sync_attempts=2),
                 {}, failure_config=FailureConfig(max_failures=1)).fit()
    result = grid[0]
    assert result.status is TrialStatus.ERROR and result.outcome.attempts == 2
    assert "SyncError: syncing " in (result.outcome.error or "")
    assert "failed 2 times; last: the syncer function raised OSError: bucket is gone" in (
        result.outcome.error or "")
    assert len(CallLog(str(tmp_path / "syncs.log")).calls()) == 4  # 2 attempts x 2 tries
    assert result.checkpoint is None  # never committed: its manifest was never written
    assert not list(Path(result.path).glob(f"checkpoint_*/{MANIFEST}"))
    staged = Path(staging_trial_dir(str(tmp_path / "staging"), "exp", result.outcome.trial_name))
    assert len(list(staged.glob("checkpoint_*"))) == 1  # not safely in storage: kept


def test_a_hanging_sync_command_times_out_and_is_reported(tmp_path: Path) -> None:
    grid = tuner(tmp_path, one_checkpoint,
                 SyncConfig(syncer="sleep 30 # {source} {target}", sync_timeout=0.3,
                            sync_attempts=2), {}).fit()
    assert grid[0].status is TrialStatus.ERROR
    assert "failed 2 times; last: the sync command timed out after 0.3 s" in (
        grid[0].outcome.error or "")


def test_a_command_that_copies_to_the_wrong_place_is_caught(tmp_path: Path) -> None:
    grid = tuner(tmp_path, one_checkpoint,
                 SyncConfig(syncer="mkdir -p {target} && cp -R {source} {target}/"), {}).fit()
    assert grid[0].status is TrialStatus.ERROR
    assert "lacks ['checkpoint.json']" in (grid[0].outcome.error or "")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"syncer": "aws s3 sync {source} s3://bucket"}, r"lacks \{target\}: a sync command"),
    ({"syncer": "rsync -a {target}"}, r"lacks \{source\}: a sync command"),
    ({"syncer": 3}, r"syncer=3 is invalid"),
    ({"sync_period": 0}, r"sync_period=0 is invalid"),
    ({"sync_timeout": -1}, r"sync_timeout=-1 is invalid"),
    ({"sync_attempts": 0}, r"sync_attempts=0 is invalid"),
])
def test_bad_sync_settings_are_refused_up_front(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyncConfig(**kwargs)


def test_conflicting_targets_and_a_needless_local_dir_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"upload_dir='/a'\) and storage_path='/b' differ"):
        RunConfig(storage_path="/b", sync_config=SyncConfig(upload_dir="/a"))
    with pytest.raises(ConfigError, match=r"local_dir='/tmp/x' is the staging directory of a "
                                          r"syncer, but there is none"):
        RunConfig(local_dir="/tmp/x")


def plain(config: dict[str, Any]) -> None:
    report({"loss": 1.0}, checkpoint=Checkpoint.from_dict({"step": 1}))


@pytest.mark.parametrize("syncer", ["auto", None])
def test_upload_dir_and_a_shared_directory_write_straight_to_storage(
    tmp_path: Path, syncer: str | None
) -> None:
    grid = Tuner(plain, run_config=RunConfig(
        name="exp", sync_config=SyncConfig(syncer=syncer, upload_dir=str(tmp_path / "up")),
    )).fit()
    assert grid[0].status is TrialStatus.TERMINATED
    assert grid[0].checkpoint.path.startswith(str(tmp_path / "up" / "exp"))
