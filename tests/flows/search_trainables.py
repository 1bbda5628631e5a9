"""Trainables and searchers of the search tests (importable by a driver process)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from prefect_tune.flows import Searcher
from prefect_tune.tasks import report


def quadratic(config: dict[str, Any]) -> None:
    """A 2-D quadratic bowl with its minimum 0 at (0.3, -0.2)."""
    report({"loss": (config["x"] - 0.3) ** 2 + (config["y"] + 0.2) ** 2})


def span(config: dict[str, Any]) -> None:
    """Reports when it started and when it ended (wall clock), and its config's value."""
    began = time.time()
    time.sleep(0.2)  # the trial's work: long enough for two trials to overlap
    report({"began": began, "ended": time.time(), "loss": float(config.get("v", 0))})


def killing(config: dict[str, Any]) -> None:
    """Reports the config's x; the trial with config["kill"] == its index SIGKILLs its
    process group (the driver too) once: config["marker"] remembers it did."""
    if config["i"] == config["kill"] and not os.path.exists(config["marker"]):
        open(config["marker"], "w").close()
        os.killpg(os.getpgid(0), signal.SIGKILL)
    report({"loss": config["i"]})


class Counting(Searcher):
    """Suggests {"i": 0}, {"i": 1}, ... with `extra` merged in, then FINISHED after
    `last` (None: never); records what it was told."""

    def __init__(self, extra: dict[str, Any] | None = None, last: int | None = None) -> None:
        super().__init__()
        self.extra, self.last = extra or {}, last
        self.next = 0
        self.told: list[tuple[str, str, Any]] = []

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.last is not None and self.next > self.last:
            return Searcher.FINISHED
        self.next += 1
        return {"i": self.next - 1, **self.extra}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        self.told.append(("complete", trial_id, None if result is None else result.get("loss")))

    def on_trial_pruned(self, trial_id: str, result: dict[str, Any] | None) -> None:
        self.told.append(("pruned", trial_id, None if result is None else result.get("loss")))

    def on_trial_restored(self, trial_id: str, config: dict[str, Any], state: str,
                          result: dict[str, Any] | None) -> None:
        self.next = max(self.next, config["i"] + 1)
        self.told.append(("restored", trial_id, state))


class Broken(Searcher):
    def suggest(self, trial_id: str) -> Any:
        return ["not", "a", "dict"]


def counted(config: dict[str, Any]) -> None:
    """Appends its trial id to config["log"]; the trial that finds config["kill_after"]
    lines there SIGKILLs its process group (the driver too) once: config["marker"]
    remembers it did. Reports a quadratic of config["x"]."""
    from prefect_tune.tasks import get_context

    with open(config["log"], "a") as log:
        log.write(get_context().trial_id + "\n")
    with open(config["log"]) as log:
        started = len(log.read().splitlines())
    if started == config["kill_after"] and not os.path.exists(config["marker"]):
        open(config["marker"], "w").close()
        os.killpg(os.getpgid(0), signal.SIGKILL)
    report({"loss": (config["x"] - 0.3) ** 2})


CURVES = [[5, 4, 3, 2, 1, 1, 1, 1], [4, 4, 4, 4, 4, 4, 4, 4], [6, 2, 2, 2, 2, 2, 2, 2],
          [7, 6, 5, 4, 3, 2, 1, 0]]


def curve(config: dict[str, Any]) -> None:
    """Reports CURVES[config["c"]], one step at a time."""
    for loss in CURVES[config["c"]]:
        report({"loss": loss})


def grouped(config: dict[str, Any]) -> None:
    """Reports 10 * config["i"] + its index in its Repeater group."""
    report({"loss": 10 * config["i"] + config["__trial_index__"]})


def endless(config: dict[str, Any]) -> None:
    """Reports forever, every 50 ms."""
    while True:
        time.sleep(0.05)
        report({"loss": 1.0})
