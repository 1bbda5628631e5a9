"""`CurveBoard`: the sweep's learning curves in the Prefect UI, while it runs and after.

A markdown artifact (`<experiment>-curves`) shows every trial's metric against its
`training_iteration` in one chart, then a table of the trials (best first) with their
status, latest and best values, config and a small curve each. The charts are SVG images
inlined as data URIs, which the UI renders with no server to host them. A new version
is published at most every `every` seconds while results come in, and when the sweep
ends; the UI shows the latest under the key.
"""

from __future__ import annotations

import base64
import time
from typing import Any, cast

from prefect.artifacts import create_markdown_artifact

from prefect_tune.flows.table import cell
from prefect_tune.storage import Callback, TrialOutcome, TrialSpec
from prefect_tune.storage.ranking import Order, best_by, value_of
from prefect_tune.storage.records import flatten
from prefect_tune.tasks.bookkeeping import artifact_key

#: Points drawn per trial: longer curves are thinned evenly (the last point kept).
MAX_POINTS = 200
#: Trials in the table; the chart shows every trial.
MAX_ROWS = 50
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


class CurveBoard(Callback):
    """Publishes the curves artifact of the sweep's `metric` (ranked by `mode`), at most
    every `every` seconds."""

    def __init__(self, metric: str, mode: Order, every: float = 5.0) -> None:
        self.metric, self.mode, self.every = metric, mode, every
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self.trials: dict[str, TrialSpec] = {}
        self.status: dict[str, str] = {}
        self.experiment = ""
        self._last = 0.0

    def setup(self, experiment: str, path: str) -> None:
        self.experiment = experiment

    def on_trial_start(self, trial: TrialSpec) -> None:
        self.trials[trial.trial_id] = trial
        self.status[trial.trial_id] = "running"
        self.curves.setdefault(trial.trial_id, [])

    def on_trial_result(self, trial: TrialSpec, result: dict[str, Any]) -> None:
        value = value_of(result, self.metric)
        if value is not None:
            self.curves[trial.trial_id].append((float(result["training_iteration"]), value))
        if time.monotonic() - self._last >= self.every:
            self.publish()

    def on_trial_complete(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self.status[trial.trial_id] = "stopped early" if outcome.stopped_early else \
            outcome.status.value.lower()

    def on_trial_error(self, trial: TrialSpec, outcome: TrialOutcome) -> None:
        self.status[trial.trial_id] = "errored"

    def on_experiment_end(self, results: Any) -> None:
        self.publish()

    def publish(self) -> None:
        """Create the artifact's next version from the curves so far."""
        self._last = time.monotonic()
        create_markdown_artifact(markdown=self.markdown(),
                                 key=artifact_key(self.experiment, "curves"),
                                 description=f"Learning curves of {self.experiment}")

    def markdown(self) -> str:
        drawn = {t: c for t, c in self.curves.items() if c}
        if not drawn:
            return f"# {self.experiment}: learning curves\n\nNo {self.metric} reported yet."
        best = cast(str, best_by(((self._best(c), t) for t, c in drawn.items()), self.mode))
        colors = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(drawn)}
        order = sorted(drawn, key=lambda t: (t != best, self._rank(drawn[t])))
        lines = [
            f"# {self.experiment}: {self.metric} by training_iteration",
            "",
            (f"{len(drawn)} trials; best {self.metric} = {self._best(drawn[best]):.6g} "
            f"({self.trials[best].trial_name})"),
            "",
            image(chart({t: drawn[t] for t in order}, colors, best, 720, 360),
                  f"{self.metric} of every trial"),
            "",
            f"| trial | status | iteration | {self.metric} | best | config | curve |",
            "|---|---|---|---|---|---|---|",
        ]
        for trial in order[:MAX_ROWS]:
            points = drawn[trial]
            config = ", ".join(f"{k}={cell(v)}"
                               for k, v in flatten(self.trials[trial].config).items())
            lines.append(
                f"| {self.trials[trial].trial_name} | {self.status[trial]} | "
                f"{points[-1][0]:g} | {points[-1][1]:.6g} | {self._best(points):.6g} | "
                f"{config} | {image(chart({trial: points}, colors, None, 160, 48), 'curve')} |")
        if len(order) > MAX_ROWS:
            lines.append(f"\n{len(order) - MAX_ROWS} more trials in the chart above; all "
                         "of them in results.csv.")
        return "\n".join(lines)

    def _best(self, points: list[tuple[float, float]]) -> float:
        return (min if self.mode == "min" else max)(v for _, v in points)

    def _rank(self, points: list[tuple[float, float]]) -> float:
        return self._best(points) * (1 if self.mode == "min" else -1)


def chart(curves: dict[str, list[tuple[float, float]]], colors: dict[str, str],
          best: str | None, width: int, height: int) -> str:
    """An SVG line chart of `curves` (x: iteration, y: value), `best` drawn thicker."""
    xs = [x for points in curves.values() for x, _ in points]
    ys = [y for points in curves.values() for _, y in points]
    pad = 4 if width < 300 else 40
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def at(x: float, y: float) -> str:
        return (f"{pad + (x - x0) / (x1 - x0) * (width - 2 * pad):.1f},"
                f"{height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad):.1f}")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if pad > 4:
        parts += [f'<text x="4" y="14" font-size="11">{y1:.4g}</text>',
                  f'<text x="4" y="{height - pad}" font-size="11">{y0:.4g}</text>',
                  f'<text x="{pad}" y="{height - 8}" font-size="11">{x0:g}</text>',
                  (f'<text x="{width - pad}" y="{height - 8}" font-size="11" '
                   f'text-anchor="end">{x1:g}</text>')]
    for trial, points in curves.items():
        shown = thin(points)
        stroke = 3 if trial == best else 1.5
        if len(shown) == 1:
            x, y = at(*shown[0]).split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colors[trial]}"/>')
        else:
            parts.append(f'<polyline fill="none" stroke="{colors[trial]}" '
                         f'stroke-width="{stroke}" points="'
                         + " ".join(at(x, y) for x, y in shown) + '"/>')
    parts.append("</svg>")
    return "".join(parts)


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most MAX_POINTS of `points`, evenly spaced, the last one kept."""
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / (MAX_POINTS - 1)
    return [points[int(i * step)] for i in range(MAX_POINTS - 1)] + [points[-1]]


def image(svg: str, alt: str) -> str:
    """Markdown for `svg` as an inline image."""
    return f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
