"""A trainable whose module starts a thread when imported: a process forked from one
that imported it would lack that thread, so its trials start in new interpreters."""

from __future__ import annotations

import os
import threading
from typing import Any

from prefect_tune.tasks import report

BACKGROUND = threading.Thread(target=threading.Event().wait, name="import-time-poller",
                              daemon=True)
BACKGROUND.start()


def train(config: dict[str, Any]) -> None:
    report({"ppid": os.getppid()})
