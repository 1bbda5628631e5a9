"""`LiveTable`: a sweep's progress as a table redrawn in place on an interactive terminal.

While it is shown, Prefect's console log handlers print through its console, so log
lines scroll above the table instead of tearing it.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from prefect_tune.flows.progress import ProgressReporter
from prefect_tune.flows.table import cell
from prefect_tune.storage import CLIReporter
from prefect_tune.storage.records import AUTO_KEYS, flatten


def is_interactive(console: Console) -> bool:
    """Whether `console` is a terminal that can redraw a table in place."""
    return console.is_terminal and not console.is_dumb_terminal


class LiveTable:
    """Shows `reporter`'s trials on `console` while entered, redrawn
    `settings.refresh_per_second` times a second; the last table stays on screen."""

    def __init__(self, reporter: ProgressReporter, settings: CLIReporter,
                 console: Console) -> None:
        self.reporter, self.settings, self.console = reporter, settings, console
        self._live = Live(get_renderable=self.render, console=console, auto_refresh=True,
                          refresh_per_second=settings.refresh_per_second,
                          redirect_stdout=True, redirect_stderr=True)
        self._handlers: list[tuple[PrefectConsoleHandler, Console]] = []

    def __enter__(self) -> Self:
        for handler in _console_handlers():
            self._handlers.append((handler, handler.console))
            handler.console = self.console
        self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            self._live.stop()
        finally:
            for handler, console in self._handlers:
                handler.console = console

    def render(self) -> Group:
        """The headline (elapsed time, counts, best trial) and the table of trials."""
        reporter = self.reporter
        with reporter.lock:
            minutes, seconds = divmod(int(reporter.elapsed()), 60)
            headline = Text.assemble(
                (f"sweep {reporter.experiment}", "bold"), f" · {minutes}:{seconds:02d} · ",
                reporter.counts(), reporter.best_text(), no_wrap=True, overflow="ellipsis")
            trials = list(reporter.shown())
        metrics = list(self.settings.metric_columns or (
            [reporter.metric] if reporter.metric else
            list(dict.fromkeys(k for _, _, row in trials for k in flatten(row)
                               if k not in AUTO_KEYS))[:3]))
        params = list(self.settings.parameter_columns or dict.fromkeys(
            k for spec, _, _ in trials for k in flatten(spec.config)))
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name in ["trial", "status"]:
            table.add_column(name, no_wrap=True)
        for name in ["iter", *metrics, *params]:
            table.add_column(name, justify="right", no_wrap=True, overflow="ellipsis")
        for spec, status, row in trials:
            flat, config = flatten(row), flatten(spec.config)
            best = spec.trial_id == reporter.best
            table.add_row(spec.trial_name, status, cell(row.get("training_iteration")),
                          *(cell(flat.get(m)) for m in metrics),
                          *(cell(config.get(p)) for p in params),
                          style="green" if best else None)
        hidden = len(reporter.status) - len(trials)
        more = [Text(f"… {hidden} more trials", style="dim")] if hidden > 0 else []
        return Group(headline, table, *more)


def _console_handlers() -> list[PrefectConsoleHandler]:
    """Prefect's console handlers, on every logger that has one."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict
                                      .values() if isinstance(logger, logging.Logger))]
    return list({id(h): h for logger in loggers for h in logger.handlers
                 if isinstance(h, PrefectConsoleHandler)}.values())
