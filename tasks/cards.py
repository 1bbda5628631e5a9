"""Trial cards: a markdown artifact on a trial's task run for each attempt, with the
trial's config, which attempt it was and how it ended (its error, whether Prefect
retries it), and its final metrics, so that a failed-then-retried trial is plain in
the Prefect UI without reading logs.

Posting an artifact is an API round trip (16-24 ms on Prefect's ephemeral server). In
the sweep's process a background thread posts the cards (`posting`), so no trial waits
on the API; a trial elsewhere (a Dask worker) posts its card itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.context import TaskRunContext

from prefect_tune.storage import TrialOutcome, TrialSpec, TrialStatus
from prefect_tune.storage.records import AUTO_KEYS, flatten
from prefect_tune.tasks.plan import TrialPlan

_LOG = logging.getLogger("prefect_tune.cards")
#: The posters of the sweeps running in this process, by flow run id.
_posters: dict[UUID, _Poster] = {}


class _Poster:
    """Posts artifacts in order from a thread in the caller's context (its Prefect
    settings); `close` posts what is queued, then ends the thread."""

    def __init__(self) -> None:
        self._queue: queue.Queue[ArtifactCreate | None] = queue.Queue()
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._post,),
                                        name="trial-cards", daemon=True)
        self._thread.start()

    def put(self, artifact: ArtifactCreate) -> None:
        self._queue.put(artifact)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _post(self) -> None:
        with get_client(sync_client=True) as client:
            while (artifact := self._queue.get()) is not None:
                _create(client, artifact)


def _create(client: Any, artifact: ArtifactCreate) -> None:
    try:
        client.create_artifact(artifact)
    except Exception as exc:  # noqa: BLE001 - a card must never fail a trial
        _LOG.warning("could not post the card of task run %s: %s", artifact.task_run_id, exc)


@contextlib.contextmanager
def posting(flow_run_id: UUID) -> Iterator[None]:
    """While entered, the cards of flow run `flow_run_id`'s trials in this process are
    posted by a background thread; on exit, every queued card is posted first."""
    poster = _posters[flow_run_id] = _Poster()
    try:
        yield
    finally:
        del _posters[flow_run_id]
        poster.close()


def post_card(plan: TrialPlan, spec: TrialSpec, attempt: int, outcome: TrialOutcome,
              retried: bool = False) -> None:
    """Put the card of `spec`'s attempt `attempt` that ended with `outcome` on the
    current task run, if `plan` has cards; `retried`: Prefect runs the trial again."""
    context = TaskRunContext.get()
    if context is None or not plan.cards:
        return
    run = context.task_run
    artifact = ArtifactCreate(
        type="markdown", task_run_id=run.id, flow_run_id=run.flow_run_id,
        description=f"{spec.trial_name}, attempt {attempt}: {_ending(outcome, retried)}",
        data=card(spec, attempt, plan.max_failures, outcome, retried))
    poster = _posters.get(run.flow_run_id) if run.flow_run_id else None
    if poster is not None:
        poster.put(artifact)
    else:
        with get_client(sync_client=True) as client:
            _create(client, artifact)


def card(spec: TrialSpec, attempt: int, max_failures: int, outcome: TrialOutcome,
         retried: bool) -> str:
    """The card's markdown: the attempt and its end, then the config and the last
    metrics at full precision, the latest checkpoint and the error."""
    of = f" of up to {max_failures + 1}" if max_failures >= 0 else ""
    lines = [f"### {spec.trial_name}: attempt {attempt}{of}, {_ending(outcome, retried)}",
             "", f"{outcome.num_reports} results reported.", "",
             "| config | value |", "|---|---|"]
    lines += [f"| {k} | {_text(v)} |" for k, v in flatten(spec.config).items()]
    if outcome.last_metrics:
        lines += ["", "| last result | value |", "|---|---|"]
        lines += [f"| {k} | {_text(v)} |" for k, v in flatten(outcome.last_metrics).items()
                  if k not in AUTO_KEYS or k == "training_iteration"]
    if outcome.latest_checkpoint is not None:
        lines += ["", f"Latest checkpoint: `{outcome.latest_checkpoint.dir_name}`"]
    if outcome.error:
        lines += ["", "```", outcome.error.strip()[-4000:], "```"]
    return "\n".join(lines)


def _ending(outcome: TrialOutcome, retried: bool) -> str:
    if outcome.error:
        then = "Prefect retries it" if retried else "the trial errored"
        return f"failed ({outcome.error_summary[:120]}); {then}"
    if outcome.stopped_early:
        return f"stopped early by the scheduler ({outcome.stopped_early})"
    return {TrialStatus.TERMINATED: "finished", TrialStatus.PAUSED: "paused by the scheduler",
            TrialStatus.STOPPED: "stopped by the sweep"}.get(outcome.status, "ended")


def _text(value: Any) -> str:
    """A value as a markdown table cell shows it: its text, with no "|" or line break."""
    return str(value).replace("|", "\\|").replace("\n", " ")
