"""A trial's working directory, and its copy to storage.

Each trial has a local working directory of its own on the machine it runs on
(`storage.layout.working_dir`: never shared by two trials, kept across the trial's
attempts there). A trial in a process of its own runs with it as its cwd, Ray's `chdir`
to the trial directory; in a thread the cwd is the sweep's, so a trial writes to
`get_context().working_dir`. With `SyncConfig(sync_artifacts=True)` the files in it are
copied to `<trial>/artifacts/` in storage, where they cannot clash with the trial's own
files: at each checkpoint (`sync_artifacts_on_checkpoint`) and when the attempt ends.
"""

from __future__ import annotations

import os

from prefect_tune.storage import TrialDir
from prefect_tune.storage.layout import ARTIFACTS_DIR, working_dir


class WorkingDir:
    """The working directory of `trial` in `experiment` (created if missing); `sync()`
    copies it to storage, `close()` removes it if the trial left nothing in it."""

    def __init__(self, experiment: str, trial: TrialDir) -> None:
        self.trial = trial
        self.path = working_dir(experiment, trial.name)
        os.makedirs(self.path, exist_ok=True)
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns)

    def sync(self) -> None:
        """Copy each file that is new or changed since the last sync (by size and
        modification time) to `<trial>/artifacts/<its relative path>`, each file
        atomically; a file removed meanwhile is skipped, and nothing is deleted."""
        for root, _, names in os.walk(self.path):
            for name in sorted(names):
                local = os.path.join(root, name)
                relative = os.path.relpath(local, self.path).replace(os.sep, "/")
                try:
                    stat = os.stat(local)
                    if self._sent.get(relative) == (stat.st_size, stat.st_mtime_ns):
                        continue
                    with open(local, "rb") as handle:
                        data = handle.read()
                except FileNotFoundError:
                    continue
                self.trial.storage.write_bytes(
                    self.trial.file(f"{ARTIFACTS_DIR}/{relative}"), data, durable=False)
                self._sent[relative] = (stat.st_size, stat.st_mtime_ns)

    def close(self) -> None:
        """Remove the directory if the trial left nothing in it. (Its experiment's
        directory stays: another trial may be creating its own in it.)"""
        try:
            os.rmdir(self.path)
        except OSError:  # not empty, or gone: nothing to do
            pass
