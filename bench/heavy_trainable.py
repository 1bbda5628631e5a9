"""The trainable of `startup.py`: its module imports prefect and pandas, as a training
script that builds its Tuner at import does (and as `prefect-tune demo`'s module does)."""

from __future__ import annotations

from typing import Any

import pandas  # noqa: F401 - the imports whose cost a new interpreter pays again
import prefect  # noqa: F401

from prefect_tune.tasks import report


def train(config: dict[str, Any]) -> None:
    report({"trial": config["trial"]})
