"""Sweeps: the Tuner, search spaces, and results."""

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
from prefect_tune.flows.trainer import Trainer
from prefect_tune.flows.tuner import Tuner
from prefect_tune.storage.callbacks import Callback

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
