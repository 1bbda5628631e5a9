"""The deployments of deployments/prefect.yaml, made from Python.

    python -m prefect_tune.deployments.deploy [--work-pool sweeps]

Creates "sweep/on-demand" and the scheduled "sweep/nightly" in the work pool (which must
exist: `prefect work-pool create sweeps --type process`).
"""

from __future__ import annotations

import argparse
from typing import Any, cast
from uuid import UUID

from prefect import deploy
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from prefect_tune.flows.sweep import sweep

#: The parameters both deployments share; each can be overridden per run with --param.
SWEEP_PARAMETERS: dict[str, Any] = {
    "trainable": "prefect_tune.flows.demo:train_linear",
    "param_space": {
        "lr": {"loguniform": [0.005, 0.2]},
        "steps_per_epoch": {"grid_search": [10, 20]},
        "epochs": 8,
    },
    "num_samples": 2,
    "metric": "loss",
    "mode": "min",
    "max_concurrent_trials": 2,
    "num_to_keep": 2,
    "max_failures": 2,
}


def deploy_sweeps(work_pool: str = "sweeps") -> list[UUID]:
    """Create or update both deployments; returns their ids."""
    # to_deployment and deploy are typed as sync-or-async; called here, they are sync.
    on_demand = cast(RunnerDeployment, sweep.to_deployment(
        "on-demand", parameters=SWEEP_PARAMETERS, entrypoint_type=EntrypointType.MODULE_PATH,
        description="A sweep started by hand; every parameter can be overridden with --param.",
    ))
    nightly = cast(RunnerDeployment, sweep.to_deployment(
        "nightly",
        parameters={**SWEEP_PARAMETERS, "resume": True},
        schedules=[Cron("0 2 * * *", timezone="UTC")],
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="A sweep every night at 02:00 UTC; runs never overlap.",
    ))
    return cast(list[UUID], deploy(on_demand, nightly, work_pool_name=work_pool, build=False,
                                   push=False, print_next_steps_message=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-pool", default="sweeps")
    args = parser.parse_args()
    for deployment_id in deploy_sweeps(args.work_pool):
        print(deployment_id)


if __name__ == "__main__":
    main()
