"""Experiment-level bookkeeping: the results tables and the Prefect artifacts."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import cast
from uuid import UUID

import pandas as pd
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from prefect_tune.storage import ExperimentStore, TrialOutcome
from prefect_tune.storage.layout import RESULTS_CSV, RESULTS_JSON
from prefect_tune.storage.records import flatten, records_json

#: Least seconds between two updates of the progress artifact.
PROGRESS_SECONDS = 1.0
#: Rows in the results table artifact; the full table is results.csv in storage.
ARTIFACT_ROWS = 20


def artifact_key(experiment: str, kind: str) -> str:
    """A stable artifact key: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", experiment.lower()).strip("-") or "sweep"
    return f"{slug[:60]}-{kind}"


def write_results(store: ExperimentStore, frame: pd.DataFrame) -> None:
    """Write results.csv and results.json (a JSON array of rows), each atomically."""
    store.write_file(RESULTS_CSV, frame.to_csv(index=False).encode())
    store.write_file(RESULTS_JSON, records_json(frame).encode())


class Progress:
    """The sweep's progress artifact. Updated at most every PROGRESS_SECONDS, and always
    when the last trial finishes: an API call per finished trial would cost more than a
    tiny trial does. Its description counts the trials by status. Without a `total` (a
    search without a trial budget) it shows 0% until `finish`."""

    def __init__(self, experiment: str, total: int | None) -> None:
        self.total = None if total is None else max(total, 1)
        self.artifact_id = cast(UUID, create_progress_artifact(
            0.0, key=artifact_key(experiment, "progress"),
            description=f"Trials of {experiment} finished so far",
        ))
        self._last = time.monotonic()

    def advance(self, done: int, counts: Callable[[], str]) -> None:
        """`done` trials ended; `counts()` says how many run, ended and paused (asked
        only when the artifact is updated: counting every trial at each end would cost
        a sweep of n trials n squared)."""
        now = time.monotonic()
        if now - self._last >= PROGRESS_SECONDS or self.total is not None and \
                done >= self.total:
            share = 0.0 if self.total is None else min(100.0, 100.0 * done / self.total)
            update_progress_artifact(self.artifact_id, share, description=counts())
            self._last = now

    def finish(self, counts: str) -> None:
        """The sweep ended: every trial it will run has."""
        update_progress_artifact(self.artifact_id, 100.0, description=counts)


def publish_results(
    experiment: str, store: ExperimentStore, frame: pd.DataFrame, best: TrialOutcome | None,
    metric: str | None, mode: str | None, column: str | None = None,
) -> None:
    """The top-trials table (sorted by `column`, the metric's column in `frame`) and a
    markdown summary of the best trial."""
    table = frame
    if column and mode and column in frame.columns:
        table = frame.sort_values(
            column, ascending=mode == "min", na_position="last",
            key=lambda column: pd.to_numeric(column, errors="coerce"),
        )
    keep = [c for c in table.columns if c not in ("trial_id", "error")]
    create_table_artifact(
        json.loads(table[keep].head(ARTIFACT_ROWS).to_json(orient="records")),
        key=artifact_key(experiment, "results"),
        description=f"Top {ARTIFACT_ROWS} trials of {experiment}; all in {RESULTS_CSV}",
    )
    create_markdown_artifact(
        summary_markdown(experiment, store, frame, best, metric),
        key=artifact_key(experiment, "summary"),
        description=f"Best trial of {experiment}",
    )
    link = store.storage.link(store.layout.root)
    if link is not None:
        create_link_artifact(
            link, link_text=link, key=artifact_key(experiment, "storage"),
            description=f"Where {experiment} is stored: checkpoints, results, state",
        )


def summary_markdown(
    experiment: str, store: ExperimentStore, frame: pd.DataFrame, best: TrialOutcome | None,
    metric: str | None,
) -> str:
    counts = Counter(frame["status"]) if not frame.empty else Counter()
    lines = [
        f"# Sweep `{experiment}`",
        "",
        f"**Trials:** {len(frame)} ({', '.join(f'{s} {n}' for s, n in sorted(counts.items()))})",
        "",
    ]
    if best is not None:
        value = flatten(best.last_metrics).get(metric) if metric else None
        row = frame[frame["trial_id"] == best.trial_id].iloc[0]
        lines += [
            f"**Best trial:** `{best.trial_name}`"
            + (f" with {metric} = {value}" if metric else ""),
            "",
            "```json",
            json.dumps(best.config, indent=2, sort_keys=True),
            "```",
            "",
            f"**Checkpoint:** `{row['best_checkpoint']}`",
            "",
        ]
    lines.append(f"**Results:** `{store.path}/{RESULTS_CSV}`, `{store.path}/{RESULTS_JSON}`")
    return "\n".join(lines)
