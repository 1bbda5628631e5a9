"""Scheduler records every trial of an experiment shares through its storage.

A record is one empty object `<experiment>/.scheduler/<key>/<trial id>=<value>`: the value
is in the name, so one listing reads a whole key (every trial's value at one rung, say)
without a read per trial, on a local disk, an NFS mount, S3 or GCS alike. Trials post
their own records and read the others' to take a scheduler's decision themselves, at the
report that caused it, wherever they run; a restored sweep finds every record where it
was, so nothing about a scheduler needs a snapshot.
"""

from __future__ import annotations

import math

from prefect_tune.storage.filesystem import Storage
from prefect_tune.storage.layout import ExperimentLayout


class Board:
    """The shared scheduler records of one experiment."""

    def __init__(self, storage: Storage, layout: ExperimentLayout) -> None:
        self.storage = storage
        self.layout = layout

    def post(self, key: str, trial_id: str, value: float) -> dict[str, float]:
        """Record `value` as trial `trial_id`'s under `key` (replacing its earlier one: a
        resumed trial posts again), and return every trial's value under `key`."""
        directory = self.layout.board_dir(key)
        found = self._values(directory)
        mine = f"{trial_id}={float(value)!r}"
        if found.get(trial_id) != (mine, value):
            self.storage.touch(f"{directory}/{mine}")
            if trial_id in found:
                self.storage.remove(f"{directory}/{found[trial_id][0]}")
        return {**{t: v for t, (_, v) in found.items()}, trial_id: value}

    def values(self, key: str) -> dict[str, float]:
        """Every trial's value under `key`."""
        return {t: v for t, (_, v) in self._values(self.layout.board_dir(key)).items()}

    def _values(self, directory: str) -> dict[str, tuple[str, float]]:
        found: dict[str, tuple[str, float]] = {}
        for name in self.storage.listdir(directory):
            trial_id, sep, text = name.rpartition("=")
            try:
                value = float(text)
            except ValueError:
                continue  # not a record (a leftover temp file)
            if sep and not math.isnan(value):
                found[trial_id] = (name, value)
        return found
