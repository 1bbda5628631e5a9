"""`Searcher`: the interface every searcher implements (`prefect_tune.flows.search` has
the built-in ones)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

#: How a restored trial ended: "running" (it runs again), or how the searcher was told.
RestoredState = Literal["running", "complete", "pruned", "error"]


class Searcher:
    """The base class of searchers; subclass it for your own.

    `suggest(trial_id)` returns the new trial's config (a dict of plain JSON values),
    None for "nothing now" (the sweep asks again when a trial ends) or
    `Searcher.FINISHED` (no more trials). A searcher that returns None while no trial
    runs ends the sweep. A custom searcher is not stored with the experiment: pass it
    again to `Tuner.restore(..., search_alg=...)`, which replays the stored trials into
    it through `on_trial_restored`.
    """

    FINISHED: ClassVar[str] = "FINISHED"
    #: Whether `suggest` can ever return FINISHED (`num_samples=-1` needs it, or a
    #: time budget).
    can_finish: bool = True

    def __init__(self, metric: str | None = None, mode: Literal["min", "max"] | None = None
                 ) -> None:
        self.metric, self.mode = metric, mode

    def set_search_properties(self, metric: str | None, mode: str | None,
                              config: Mapping[str, Any], *, seed: int = 0) -> None:
        """Called once by the sweep before anything else: TuneConfig's metric and mode
        (where the searcher has none), the Tuner's search space and the experiment's
        seed."""
        if self.metric is None:
            self.metric, self.mode = metric, mode  # type: ignore[assignment]

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        raise NotImplementedError(f"{type(self).__name__} must implement suggest(trial_id)")

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """A trial's latest row (nested metrics as they were reported)."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """A trial ended: with its last row, or with `error` (its last row, if any)."""

    def on_trial_pruned(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """A scheduler stopped the trial early, at its last row `result`. By default it
        completes, as Ray tells it; OptunaSearch tells Optuna PRUNED instead."""
        self.on_trial_complete(trial_id, result)

    def on_trial_restored(self, trial_id: str, config: dict[str, Any],
                          state: RestoredState, result: dict[str, Any] | None) -> None:
        """A trial an earlier run of the experiment suggested, in suggestion order:
        "running" ones run again and are told as usual when they end."""

    def budget(self, num_samples: int) -> int | None:
        """How many trials the sweep runs for `num_samples` (None: no limit)."""
        return None if num_samples == -1 else num_samples

    def to_json(self) -> dict[str, Any]:
        """How experiment.json keeps the searcher ({"name": ...} and its settings)."""
        return {"name": "custom", "class": f"{type(self).__module__}.{type(self).__qualname__}"}
