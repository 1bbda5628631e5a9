"""The path authority: every name and path prefect-tune writes is built here.

    <storage>/<experiment>/
        experiment.json                       written once: search, settings, trials
        .storage-marker.json                  rewritten by each sweep run, read by trials
        .lease/000000.json                    held by the run writing the experiment
        results.csv  results.json
        <trainable>_<5 hex>_<00000>/          one per trial
            trial.json                        status, attempts, checkpoint records
            params.json  result.json  progress.csv  [error.txt]
            [artifacts/]                      its working directory's files (sync_artifacts)
            checkpoint_000000/ ...            committed: holds .checkpoint.json
                [.metadata.json]              the checkpoint's metadata, if set
            .checkpoint_000001.tmp-<hex>/     being written (never read as a checkpoint)

>>> layout = ExperimentLayout("/data/exp")
>>> layout.checkpoint_dir("train_a1b2c_00000", 3)
'/data/exp/train_a1b2c_00000/checkpoint_000003'
>>> ExperimentLayout("bucket/sweeps/exp").trial_file("train_a1b2c_00000", PARAMS)
'bucket/sweeps/exp/train_a1b2c_00000/params.json'
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from prefect_tune.storage.records import checkpoint_dir_name

EXPERIMENT_STATE = "experiment.json"
TRIAL_STATE = "trial.json"
#: Written by the sweep, read back by every trial: proves the trial sees the same storage.
STORAGE_MARKER = ".storage-marker.json"
#: The lease of the run that writes the experiment (see storage/lease.py).
LEASE_DIR = ".lease"
#: Prefect's persisted trial-task results (keyed "<experiment>-<trial id>").
PREFECT_RESULTS = ".prefect-results"
#: Holds the records trials share for a scheduler's decisions (see `storage.board`).
SCHEDULER_DIR = ".scheduler"
#: One file per trial the search added, named by its sequence number (`trial_entry`).
TRIALS_DIR = ".trials"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
PARAMS = "params.json"
RESULT_LOG = "result.json"
PROGRESS = "progress.csv"
ERROR_FILE = "error.txt"
#: A trial's population-based training history: one JSON line per exploit.
PERTURBATIONS = "perturbations.json"
#: Written last into a checkpoint directory; its presence is what makes it committed.
MANIFEST = ".checkpoint.json"
#: The file `Checkpoint.from_dict` stores its data in.
DICT_FILE = "checkpoint.json"
DICT_PICKLE_FILE = "checkpoint.pkl"
#: The small JSON object `Checkpoint.set_metadata` stores in a checkpoint directory (Ray's
#: name). Copied and committed like any other file of the checkpoint; the one file that
#: may be replaced after commit (the manifest keeps the size it was committed with).
METADATA_FILE = ".metadata.json"
#: Where `SyncConfig(sync_artifacts=True)` copies a trial's working directory.
ARTIFACTS_DIR = "artifacts"

_CHECKPOINT = re.compile(r"^checkpoint_(\d{6,})$")
_STAGING = re.compile(r"^\.checkpoint_(\d{6,})\.(?:tmp|deleting)-[0-9a-f]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_LEFTOVER = re.compile(r"(^\.probe-|\.tmp-)[0-9a-f]{12}$")


def is_leftover(name: str) -> bool:
    """Whether `name` is a temp file a killed writer left (an atomic write's temp file or
    a storage probe): never read, safe to remove once no run writes the experiment."""
    return bool(_LEFTOVER.search(name))


def checkpoint_index(name: str) -> int | None:
    """The index of a committed-checkpoint directory name, None for any other name."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


def used_index(name: str) -> int | None:
    """The index a directory name claims, committed or not (indexes are never reused)."""
    match = _CHECKPOINT.match(name) or _STAGING.match(name)
    return int(match.group(1)) if match else None


def safe_name(name: str, limit: int = 40) -> str:
    """`name` reduced to [A-Za-z0-9_-] and at most `limit` characters."""
    return _UNSAFE.sub("_", name).strip("_")[:limit] or "trainable"


def default_experiment_name(trainable: str, now: datetime) -> str:
    """"<trainable>_<YYYY-MM-DD_HH-MM-SS>" (Ray's default)."""
    return f"{safe_name(trainable)}_{now:%Y-%m-%d_%H-%M-%S}"


def new_trial_prefix() -> str:
    """A fresh 5-hex prefix shared by the trial ids of one experiment."""
    return uuid.uuid4().hex[:5]


def trial_id(prefix: str, counter: int) -> str:
    return f"{prefix}_{counter:05d}"


def trial_name(trainable: str, trial_id: str) -> str:
    """Short and id-based: the config lives only in params.json (Ray #29586)."""
    return f"{safe_name(trainable)}_{trial_id}"


def token() -> str:
    """A random suffix for staging and probe names."""
    return uuid.uuid4().hex[:12]


def _cache(kind: str) -> str:
    """prefect-tune/<kind> in the user's cache directory."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "prefect-tune", kind)


def staging_trial_dir(local_dir: str | None, experiment: str, trial_name: str) -> str:
    """Where a syncer's trial writes locally: `<local_dir>/<experiment>/<trial>`, with
    `local_dir` by default prefect-tune/staging in the user's cache directory."""
    root = _cache("staging") if local_dir is None else local_dir
    return os.path.join(os.path.abspath(os.path.expanduser(root)), experiment, trial_name)


def working_dir(experiment: str, trial_name: str) -> str:
    """A trial's working directory on the machine it runs on (one per trial, kept
    across its attempts there while it holds files): prefect-tune/working/<experiment>/
    <trial> in the user's cache directory."""
    return os.path.join(_cache("working"), experiment, trial_name)


@dataclass(frozen=True)
class ExperimentLayout:
    """Paths inside one experiment directory; `root` is a filesystem path, no scheme."""

    root: str

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def trial_dir(self, trial_name: str) -> str:
        return self.join(trial_name)

    def trial_file(self, trial_name: str, file_name: str) -> str:
        return self.join(trial_name, file_name)

    def checkpoint_dir(self, trial_name: str, index: int) -> str:
        return self.join(trial_name, checkpoint_dir_name(index))

    def staging_dir(self, trial_name: str, index: int) -> str:
        """Where checkpoint `index` is written before it is committed."""
        return self.join(trial_name, f".{checkpoint_dir_name(index)}.tmp-{token()}")

    def board_dir(self, key: str) -> str:
        """Where the scheduler records under `key` are."""
        return self.join(SCHEDULER_DIR, key)

    def trial_entry(self, sequence: int) -> str:
        """The record of the `sequence`-th trial the search added."""
        return self.join(TRIALS_DIR, f"{sequence:08d}.json")

    def probe_file(self) -> str:
        """A fresh name for the storage probe, in the experiment directory."""
        return self.join(f".probe-{token()}")

    def trash_dir(self, trial_name: str, index: int) -> str:
        """Where checkpoint `index` is moved to be deleted; fixed, so a retry finds it."""
        return self.join(trial_name, f".{checkpoint_dir_name(index)}.deleting-0")
