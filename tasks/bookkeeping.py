"""Experiment-level bookkeeping: the results tables and the Prefect artifacts."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast
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
from prefect_tune.storage.records import AUTO_KEYS, flatten, rank_key
from prefect_tune.storage.retention import best_of

#: Least seconds between two updates of the progress artifact.
PROGRESS_SECONDS = 1.0
#: Rows in the results table artifact; the full table is results.csv in storage.
ARTIFACT_ROWS = 20
_FIXED = ("trial_id", "trial_name", "status")
_TAIL = ("best_score", "num_checkpoints", "best_checkpoint", "error")


def artifact_key(experiment: str, kind: str) -> str:
    """A stable artifact key: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", experiment.lower()).strip("-") or "sweep"
    return f"{slug[:60]}-{kind}"


def results_frame(
    outcomes: Sequence[TrialOutcome], store: ExperimentStore, score_attribute: str | None,
    score_order: str,
) -> pd.DataFrame:
    """One row per trial: identity, status, config/..., last metrics, best checkpoint."""
    rows = []
    for outcome in outcomes:
        metrics = {
            k: v for k, v in flatten(outcome.last_metrics).items()
            if k not in AUTO_KEYS or k == "training_iteration"
        }
        best = best_of(outcome.checkpoints, score_attribute, score_order, 1)
        rows.append({
            "trial_id": outcome.trial_id,
            "trial_name": outcome.trial_name,
            "status": str(outcome.status),
            **{f"config/{k}": _scalar(v) for k, v in flatten(outcome.config).items()},
            **{k: _scalar(v) for k, v in metrics.items() if k not in _FIXED + _TAIL},
            "best_score": outcome.best_score,
            "num_checkpoints": len(outcome.checkpoints),
            "best_checkpoint": store.checkpoint(outcome.trial_name, best[0].index).path
            if best else None,
            "error": outcome.error_summary or None,
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=[*_FIXED, *_TAIL])
    middle = [c for c in frame.columns if c not in _FIXED + _TAIL]
    return frame[[*_FIXED, *middle, *_TAIL]]


def write_results(store: ExperimentStore, frame: pd.DataFrame) -> None:
    """Write results.csv and results.json (a JSON array of rows), each atomically."""
    store.write_file(RESULTS_CSV, frame.to_csv(index=False).encode())
    store.write_file(RESULTS_JSON, frame.to_json(orient="records", indent=2).encode())


class Progress:
    """The sweep's progress artifact. Updated at most every PROGRESS_SECONDS, and always
    when the last trial finishes: an API call per finished trial would cost more than a
    tiny trial does."""

    def __init__(self, experiment: str, total: int) -> None:
        self.total = max(total, 1)
        self.artifact_id = cast(UUID, create_progress_artifact(
            0.0, key=artifact_key(experiment, "progress"),
            description=f"Trials of {experiment} finished so far",
        ))
        self._last = time.monotonic()

    def advance(self, done: int) -> None:
        now = time.monotonic()
        if done >= self.total or now - self._last >= PROGRESS_SECONDS:
            update_progress_artifact(self.artifact_id, 100.0 * done / self.total)
            self._last = now


def publish_results(
    experiment: str, store: ExperimentStore, frame: pd.DataFrame, best: TrialOutcome | None,
    metric: str | None, mode: str | None,
) -> None:
    """The top-trials table and a markdown summary of the best trial."""
    table = frame
    if metric and mode and metric in frame.columns:
        table = frame.sort_values(
            metric, ascending=mode == "min", na_position="last",
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
    if not store.storage.is_local:  # a local path is no link a browser follows
        create_link_artifact(
            store.path, link_text=store.path, key=artifact_key(experiment, "storage"),
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


def best_outcome(
    outcomes: Sequence[TrialOutcome], metric: str | None, mode: str | None
) -> TrialOutcome | None:
    """The trial whose last `metric` is best (NaN and missing never win)."""
    if not metric or not mode:
        return None
    candidates = [
        (rank_key(_number(flatten(o.last_metrics).get(metric)), mode), o) for o in outcomes
    ]
    candidates = [c for c in candidates if c[0][0]]
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isinf(value) else float(value)


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value
