"""Trial side: what a trainable calls, and the Prefect tasks that run trials."""

from prefect_tune.tasks.session import TrialContext, get_checkpoint, get_context, report

__all__ = ["TrialContext", "get_checkpoint", "get_context", "report"]
