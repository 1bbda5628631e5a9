"""The resume planner, a pure function of stored outcomes and a policy; an immutable
Tuner; storage resolved once per run."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.core import Block

from prefect_tune.flows import Tuner, grid_search
from prefect_tune.flows.plan import Resume, plan_trials
from prefect_tune.flows.sweep import sweep
from prefect_tune.storage import (
    CheckpointRecord,
    ConfigError,
    RunConfig,
    TrialOutcome,
    TrialSpec,
    TrialStatus,
    TuneStorage,
)
from prefect_tune.tasks import report

SPECS = tuple(TrialSpec(f"t_{i}", f"train_t_{i}", {"x": i}) for i in range(5))


def stored() -> list[TrialOutcome | None]:
    """Trial 0 finished, 1 errored after 2 attempts, 2 running, 3 stopped, 4 never began."""
    def outcome(spec: TrialSpec, status: TrialStatus, attempts: int) -> TrialOutcome:
        return TrialOutcome(spec.trial_id, spec.trial_name, spec.config, status,
                            last_metrics={"loss": 1.0}, num_reports=3, attempts=attempts,
                            checkpoints=(CheckpointRecord(2, {"loss": 1.0}),))
    return [outcome(SPECS[0], TrialStatus.TERMINATED, 1), outcome(SPECS[1], TrialStatus.ERROR, 2),
            outcome(SPECS[2], TrialStatus.RUNNING, 1), outcome(SPECS[3], TrialStatus.STOPPED, 1),
            None]


def ids(outcomes: Any) -> list[str]:
    return [getattr(o, "spec", o).trial_id for o in outcomes]


def test_a_new_experiment_runs_every_trial_from_scratch() -> None:
    plan = plan_trials(SPECS, [], None)
    assert (plan.kept, plan.stopped) == ((), ())
    assert [(w.spec, w.prior, w.restart, w.prior_attempts) for w in plan.work] == [
        (spec, None, False, 0) for spec in SPECS
    ]


def test_default_restore_resumes_unfinished_and_keeps_finished_and_errored() -> None:
    plan = plan_trials(SPECS, stored(), Resume())
    assert ids(plan.kept) == ["t_0", "t_1"]
    assert ids(plan.work) == ["t_2", "t_3", "t_4"]
    assert [w.prior_attempts for w in plan.work] == [1, 1, 0]
    assert plan.stopped == ()


def test_resume_errored_continues_the_attempt_count() -> None:
    plan = plan_trials(SPECS, stored(), Resume(errored=True))
    assert ids(plan.kept) == ["t_0"]
    assert [(w.spec.trial_id, w.restart, w.prior_attempts) for w in plan.work] == [
        ("t_1", False, 2), ("t_2", False, 1), ("t_3", False, 1), ("t_4", False, 0),
    ]


def test_restart_errored_starts_from_scratch() -> None:
    plan = plan_trials(SPECS, stored(), Resume(restart_errored=True))
    (errored,) = [w for w in plan.work if w.spec.trial_id == "t_1"]
    assert (errored.restart, errored.prior_attempts) == (True, 0)


def test_not_resuming_unfinished_records_them_stopped_keeping_their_record() -> None:
    before = stored()
    plan = plan_trials(SPECS, before, Resume(unfinished=False))
    assert plan.work == ()
    assert ids(plan.kept) == ["t_0", "t_1"]
    assert [(o.trial_id, o.status) for o in plan.stopped] == [
        ("t_2", TrialStatus.STOPPED), ("t_3", TrialStatus.STOPPED), ("t_4", TrialStatus.STOPPED),
    ]
    assert plan.stopped[0] == replace(before[2], status=TrialStatus.STOPPED)  # type: ignore[arg-type]
    assert plan.stopped[2].num_reports == 0


def test_a_flow_run_retry_resubmits_finished_trials_for_their_cached_outcome() -> None:
    plan = plan_trials(SPECS, stored(), Resume(errored=True, finished=True))
    assert plan.kept == ()
    assert ids(plan.work) == ["t_0", "t_1", "t_2", "t_3", "t_4"]
    assert plan.work[0].prior is not None and plan.work[0].prior.status is TrialStatus.TERMINATED


def one_report(config: dict[str, Any]) -> None:
    report({"loss": config["x"]})


@pytest.mark.usefixtures("prefect_server")
def test_the_tuner_does_not_change_when_it_fits_or_restores(tmp_path: Path) -> None:
    """fit() and restore() return results and new Tuners; the Tuner they are called on
    keeps its settings, so a second fit() of it names the same experiment (and is refused
    as existing)."""
    tuner = Tuner(one_report, param_space={"x": grid_search([1, 2])},
                  run_config=RunConfig(storage_path=str(tmp_path)))
    name, settings = tuner.run_config.name, (tuner.run_config, tuner.tune_config)
    assert name is not None and name.startswith("one_report_")
    grid = tuner.fit()
    assert grid.num_terminated == 2
    assert (tuner.run_config, tuner.tune_config) == settings
    with pytest.raises(ConfigError, match="already exists"):
        tuner.fit()
    restored = Tuner.restore(str(tmp_path / name), one_report, resume_errored=True)
    assert restored is not tuner and restored.run_config.name == name
    assert [r.status for r in restored.fit()] == [TrialStatus.TERMINATED] * 2
    assert [r.status for r in tuner.get_results()] == [TrialStatus.TERMINATED] * 2


@pytest.mark.usefixtures("prefect_server")
def test_a_resumed_flow_run_loads_its_storage_block_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployable flow with resume=True resolves its storage (a saved block) once per
    run: one Block.load, however many places read the experiment."""
    block_name = f"once-{uuid.uuid4().hex[:8]}"
    TuneStorage(url=str(tmp_path)).save(block_name)
    loads: list[str] = []
    real_load = Block.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[Block], name: str, *args: Any, **kwargs: Any) -> Any:
        loads.append(name)
        return real_load(cls, name, *args, **kwargs)

    monkeypatch.setattr(Block, "load", classmethod(counting_load))
    args = {"trainable": "prefect_tune.flows.demo:train_linear", "name": "by-block",
            "param_space": {"lr": 0.1, "epochs": 2}, "storage_block": f"tune-storage/{block_name}"}
    sweep(**args)
    assert loads == [f"tune-storage/{block_name}"]
    sweep(**args, resume=True)
    assert loads == [f"tune-storage/{block_name}"] * 2
