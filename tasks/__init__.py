"""Trial side: what a trainable calls, and the Prefect tasks that run trials."""

from prefect_tune.tasks.session import TrialContext, get_checkpoint, get_context, report
from prefect_tune.tasks.trainable import Trainable

__all__ = ["Trainable", "TrialContext", "get_checkpoint", "get_context", "report"]
