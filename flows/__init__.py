"""Sweeps: the Tuner, search spaces, and results.

`Tuner` and `Trainer` are imported on first use: reading an experiment (the
`prefect-tune` commands `ls`, `show`, `best`, `export`) does not pay for importing Prefect.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from prefect_tune.flows.config import TuneConfig
from prefect_tune.flows.resources import with_parameters, with_resources
from prefect_tune.flows.results import Result, ResultGrid
from prefect_tune.flows.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
)
from prefect_tune.flows.search import (
    BasicVariantGenerator,
    ConcurrencyLimiter,
    OptunaSearch,
    Repeater,
    Searcher,
)
from prefect_tune.flows.search_space import choice, grid_search, loguniform, randint, uniform
from prefect_tune.flows.tracking import MLflowLoggerCallback
from prefect_tune.storage.callbacks import Callback

if TYPE_CHECKING:
    from prefect_tune.flows.trainer import Trainer
    from prefect_tune.flows.tuner import Tuner

_LAZY = {"Trainer": "prefect_tune.flows.trainer", "Tuner": "prefect_tune.flows.tuner"}

__all__ = [
    "ASHAScheduler",
    "BasicVariantGenerator",
    "Callback",
    "ConcurrencyLimiter",
    "FIFOScheduler",
    "HyperBandScheduler",
    "MLflowLoggerCallback",
    "MedianStoppingRule",
    "OptunaSearch",
    "PopulationBasedTraining",
    "Repeater",
    "Result",
    "ResultGrid",
    "Searcher",
    "Trainer",
    "TuneConfig",
    "Tuner",
    "choice",
    "grid_search",
    "loguniform",
    "randint",
    "uniform",
    "with_parameters",
    "with_resources",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
