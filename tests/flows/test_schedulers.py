"""Schedulers stop trials at the report that caused the decision, from deterministic
learning curves (tests/flows/curves.py: a config fixes its curve), one trial at a time so
that the order of arrival at each rung is fixed; the decisions survive a SIGKILL of the
driver and a restore; bad settings are refused naming the value."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TuneConfig,
    Tuner,
    grid_search,
    loguniform,
)
from prefect_tune.flows.results import ResultGrid
from prefect_tune.storage import (
    CheckpointConfig,
    ConfigError,
    RunConfig,
    TrialStatus,
    resolve_storage,
)
from prefect_tune.storage.board import Board
from prefect_tune.storage.layout import ExperimentLayout

from . import curves

pytestmark = pytest.mark.usefixtures("prefect_server")
REPO = str(Path(__file__).resolve().parents[2])
ASHA = ASHAScheduler(max_t=8, grace_period=1, reduction_factor=2)


def sweep(trainable: Any, tmp_path: Path, scheduler: Any, space: dict[str, Any],
          **tune: Any) -> ResultGrid:
    return Tuner(
        trainable, param_space=space,
        tune_config=TuneConfig(metric="loss", mode="min", scheduler=scheduler,
                               max_concurrent_trials=1, **tune),
        run_config=RunConfig(name="sched", storage_path=str(tmp_path / "runs")),
    ).fit()


def by_curve(grid: ResultGrid) -> dict[str, tuple[TrialStatus, int, str | None]]:
    names = {tuple(curve): name for name, curve in
             (("A", curves.A), ("B", curves.B), ("C", curves.C), ("D", curves.D))}
    return {names[tuple(r.config["curve"])]: (r.status, r.outcome.num_reports,
                                              r.stopped_early) for r in grid}


#: ASHA, rungs at 1, 2, 4, max_t 8, trials A, B, C, D in turn (loss, lower is better):
#: A is first at every rung and runs to max_t; B is in the best half at rungs 1 and 2
#: (4 vs A's 5, 4 vs A's 4) but not at rung 4 (4 vs A's 2); C (6) and D (7) are outside
#: the best half at rung 1.
ASHA_DECISIONS = {"A": (8, None), "B": (4, "rung 4"), "C": (1, "rung 1"), "D": (1, "rung 1")}


def assert_asha_decisions(grid: ResultGrid) -> None:
    found = by_curve(grid)
    for name, (reports, rung) in ASHA_DECISIONS.items():
        status, num_reports, early = found[name]
        assert (name, status, num_reports) == (name, TrialStatus.TERMINATED, reports)
        if rung is None:
            assert early is None
        else:
            assert early is not None and f"at rung {rung.split()[1]} " in early, early


def kill_driver(storage: Path, marker: Path, scheduler: Any, curves_: str, kill: str,
                kill_at: int) -> None:
    """Run a sweep of curves.follow over `curves_` (an expression over module `curves`)
    with `scheduler`, one trial at a time, in a driver process that the trial whose curve
    is `kill` SIGKILLs, with itself, before reporting step `kill_at`."""
    run_killed(textwrap.dedent(f"""
        from prefect_tune.flows import (ASHAScheduler, HyperBandScheduler, TuneConfig,
                                        Tuner, grid_search)
        from prefect_tune.storage import RunConfig
        from tests.flows import curves
        space = {{"curve": grid_search({curves_}), "kill": {kill}, "kill_at": {kill_at},
                  "marker": {str(marker)!r}}}
        Tuner(curves.follow, param_space=space,
              tune_config=TuneConfig(metric="loss", mode="min", max_concurrent_trials=1,
                                     scheduler={scheduler!r}),
              run_config=RunConfig(name="sched", storage_path={str(storage)!r})).fit()
    """))


def run_killed(code: str) -> None:
    driver = subprocess.run([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                            capture_output=True, timeout=300, check=False)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()[-2000:]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_asha_stops_each_trial_outside_the_best_half_of_a_rung(
    tmp_path: Path, isolation: str
) -> None:
    grid = sweep(curves.follow, tmp_path, ASHA,
                 {"curve": grid_search([curves.A, curves.B, curves.C, curves.D])},
                 isolation=isolation)

    assert_asha_decisions(grid)
    b = next(r for r in grid if r.config["curve"] == curves.B)
    assert b.stopped_early == (
        "loss=4 at training_iteration=4 is outside the best 1/2 of the 1 other trials at "
        "rung 4 (cutoff 2)"
    )
    assert b.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3, 4]
    table = grid.get_dataframe().set_index("trial_id")
    assert table.loc[b.trial_id, "stopped_early"] == b.stopped_early
    csv = (Path(grid.experiment_path) / "results.csv").read_text()
    assert "stopped_early" in csv.splitlines()[0] and "rung 4" in csv


def test_asha_decides_for_class_trainables_at_the_step_that_caused_it(tmp_path: Path) -> None:
    grid = sweep(curves.Follow, tmp_path, ASHA,
                 {"curve": grid_search([curves.A, curves.B, curves.C, curves.D])})

    assert_asha_decisions(grid)


MEDIAN_CURVES = [[5, 4, 3, 2], [6, 5, 4, 3], [3, 3, 3, 3], [9, 9, 1, 1], [5.5] * 4]


def test_median_rule_stops_trials_worse_than_the_others_running_means(tmp_path: Path) -> None:
    # D is worse at step 1 than the median of A, B, C (5); E at step 2 than the median of
    # the running means of A, B, C at 2 (4.5, 5.5, 3): D never reached step 2.
    grid = sweep(curves.follow, tmp_path,
                 MedianStoppingRule(grace_period=1, min_samples_required=2),
                 {"curve": grid_search(MEDIAN_CURVES)})

    reports = [r.outcome.num_reports for r in grid]
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 5
    assert reports == [4, 4, 4, 1, 2]
    assert [r.stopped_early is not None for r in grid] == [False, False, False, True, True]
    assert grid[4].stopped_early == (
        "its best loss=5.5 by training_iteration=2 is worse than the median 4.5 of the "
        "running means of 3 other trials"
    )


def test_fifo_runs_every_trial_to_its_end(tmp_path: Path) -> None:
    grid = sweep(curves.follow, tmp_path, FIFOScheduler(),
                 {"curve": grid_search([curves.A, curves.D])})

    assert [(r.outcome.num_reports, r.stopped_early) for r in grid] == [(8, None), (8, None)]
    assert not (Path(grid.experiment_path) / ".scheduler").exists()


def test_a_restore_after_the_driver_is_killed_makes_the_same_decisions(tmp_path: Path) -> None:
    """B kills the driver (and its own process) before its step 3, after it passed rungs 1
    and 2; the restored sweep resumes B from its checkpoint at step 2, and every decision
    is the uninterrupted run's."""
    storage, marker = tmp_path / "runs", tmp_path / "killed"
    kill_driver(storage, marker, ASHA, "[curves.A, curves.B, curves.C, curves.D]",
                "curves.B", 3)
    assert marker.exists()

    grid = Tuner.restore(str(storage / "sched"), curves.follow).fit()

    assert_asha_decisions(grid)
    b = next(r for r in grid if r.config["curve"] == curves.B)
    assert b.metrics_dataframe["training_iteration"].tolist() == [1, 2, 3, 4]
    assert b.outcome.attempts == 2


@pytest.mark.parametrize("make, message", [
    (lambda: ASHAScheduler(max_t=1, grace_period=2), r"max_t=1\) is below grace_period=2"),
    (lambda: ASHAScheduler(reduction_factor=1), r"reduction_factor=1\) is invalid"),
    (lambda: HyperBandScheduler(reduction_factor=0.5), r"reduction_factor=0.5\) is invalid"),
    (lambda: PopulationBasedTraining(), r"hyperparam_mutations=\{\}\) is invalid"),
    (lambda: PopulationBasedTraining(hyperparam_mutations={"lr": []}),
     "the mutation of 'lr' is \\[\\]"),
    (lambda: Tuner(curves.grow, param_space={"lr": 0.1}, tune_config=TuneConfig(
        metric="score", mode="max", scheduler=PopulationBasedTraining(
            hyperparam_mutations={"momentum": [0.8, 0.9]}))),
     r"mutates \['momentum'\], which the search space does not have"),
    (lambda: Tuner(curves.follow, run_config=RunConfig(checkpoint_config=CheckpointConfig(
        num_to_keep=0)), tune_config=TuneConfig(metric="loss", mode="min",
                                                scheduler=HyperBandScheduler())),
     r"HyperBandScheduler pauses trials .*\(num_to_keep=0\) keeps none"),
    (lambda: MedianStoppingRule(min_samples_required=0), r"min_samples_required=0"),
    (lambda: TuneConfig(scheduler=ASHAScheduler(metric="loss")), r"mode=None\) is invalid"),
    (lambda: TuneConfig(scheduler=ASHAScheduler()), "ASHAScheduler needs a metric"),
    (lambda: TuneConfig(scheduler="asha"), "'asha' is not a scheduler"),  # type: ignore[arg-type]
])
def test_bad_scheduler_settings_are_refused_naming_the_value(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def never_reports_it(config: dict[str, Any]) -> None:
    from prefect_tune.tasks import report

    report({"accuracy": 0.5})


def reports_time_backwards(config: dict[str, Any]) -> None:
    from prefect_tune.tasks import report

    for epoch in (1, 2, 1):
        report({"loss": 1.0, "epoch": epoch})


@pytest.mark.parametrize("trainable, scheduler, message", [
    (never_reports_it, ASHA,
     "the scheduler's metric 'loss' is not among the reported metrics ['accuracy', "),
    (reports_time_backwards, ASHAScheduler(time_attr="epoch", max_t=8),
     "the scheduler's time_attr 'epoch' went from 2 to 1; it must increase"),
])
def test_a_trial_breaking_the_schedulers_needs_fails_naming_it(
    tmp_path: Path, trainable: Any, scheduler: Any, message: str
) -> None:
    grid = sweep(trainable, tmp_path, scheduler, {})

    (result,) = grid
    assert result.status is TrialStatus.ERROR
    assert result.outcome.attempts == 1  # a MetricError is not retried
    assert message in (result.outcome.error or "")


def test_the_board_keeps_one_value_per_trial_and_key() -> None:
    storage = resolve_storage(f"memory://board-{uuid.uuid4().hex}")
    board = Board(storage, ExperimentLayout(storage.root))
    assert board.post("rung", "t1", 3.0) == {"t1": 3.0}
    assert board.post("rung", "t2", -1e-7) == {"t1": 3.0, "t2": -1e-7}
    assert board.post("rung", "t1", 2.5) == {"t1": 2.5, "t2": -1e-7}  # replaced
    assert board.values("rung") == {"t1": 2.5, "t2": -1e-7}
    assert board.values("other") == {}


def test_the_scheduler_is_stored_with_the_experiment(tmp_path: Path) -> None:
    grid = sweep(curves.follow, tmp_path, ASHA, {"curve": grid_search([curves.A])})

    stored = json.loads((Path(grid.experiment_path) / "experiment.json").read_text())
    assert stored["tune"]["scheduler"] == {
        "name": "ASHAScheduler", "time_attr": "training_iteration", "metric": None,
        "mode": None, "max_t": 8, "grace_period": 1, "reduction_factor": 2, "brackets": 1,
        "promotion": False,
    }
    assert TuneConfig(**stored["tune"]).scheduler == ASHA


def segments(result: Any) -> list[int]:
    return result.metrics_dataframe["training_iteration"].tolist()


def test_asha_with_promotion_pauses_at_each_rung_and_promotes_the_best(tmp_path: Path) -> None:
    """Rungs 1, 2, 4, max_t 8, one trial at a time: A, B, C, D each pause at rung 1; B
    (4, the best half of A and B) is promoted at once; once no trial is left to start,
    each rung promotes its best, so B, then A, climb to max_t; C and D are never promoted.
    Every iteration is in each result once, although A and B ran in four segments."""
    grid = sweep(curves.follow, tmp_path, replace(ASHA, promotion=True),
                 {"curve": grid_search([curves.A, curves.B, curves.C, curves.D])})

    found = by_curve(grid)
    assert found["A"] == (TrialStatus.TERMINATED, 8, None)
    assert found["B"] == (TrialStatus.TERMINATED, 8, None)
    for name in "CD":
        status, reports, early = found[name]
        assert (status, reports) == (TrialStatus.TERMINATED, 1)
        assert early is not None and early.startswith("not promoted past rung 1: outside the "
                                                      "best 1/2 of the 4 trials there")
    a = next(r for r in grid if r.config["curve"] == curves.A)
    assert segments(a) == list(range(1, 9))
    assert a.checkpoint is not None and a.checkpoint.to_dict() == {"step": 8}


def test_hyperband_halves_each_bracket_in_step(tmp_path: Path) -> None:
    """max_t 4, reduction factor 2: the first bracket holds 4 trials, milestones 1 and
    2. At 1 the best two (B 4, A 5) go on and C, D stop; at 2 A and B tie at 4 and the
    earlier one, A, goes on to max_t."""
    grid = sweep(curves.follow, tmp_path, HyperBandScheduler(max_t=4, reduction_factor=2),
                 {"curve": grid_search([c[:4] for c in (curves.A, curves.B, curves.C,
                                                        curves.D)])})

    assert [(r.status, r.outcome.num_reports) for r in grid] == [
        (TrialStatus.TERMINATED, 4), (TrialStatus.TERMINATED, 2),
        (TrialStatus.TERMINATED, 1), (TrialStatus.TERMINATED, 1)]
    assert [r.stopped_early for r in grid] == [
        None,
        "outside the best 1 of the 2 trials of its HyperBand bracket at training_iteration=2",
        "outside the best 2 of the 4 trials of its HyperBand bracket at training_iteration=1",
        "outside the best 2 of the 4 trials of its HyperBand bracket at training_iteration=1",
    ]
    assert segments(grid[0]) == [1, 2, 3, 4]


def test_a_hyperband_sweep_killed_mid_bracket_restores_to_the_same_decisions(
    tmp_path: Path
) -> None:
    """The driver dies as A is about to report step 2 in its second segment (B already
    paused there); the restored sweep resumes A from its checkpoint and decides as the
    uninterrupted one did."""
    storage, marker = tmp_path / "runs", tmp_path / "killed"
    kill_driver(storage, marker, HyperBandScheduler(max_t=4, reduction_factor=2),
                "[c[:4] for c in (curves.A, curves.B, curves.C, curves.D)]", "curves.A[:4]", 2)
    before = Tuner.restore(str(storage / "sched"), curves.follow).get_results()
    assert [r.status for r in before] == [TrialStatus.RUNNING, TrialStatus.PAUSED,
                                          TrialStatus.TERMINATED, TrialStatus.TERMINATED]
    assert (before.num_paused, before.num_stopped_early) == (1, 2)
    shown = subprocess.run([os.path.join(os.path.dirname(sys.executable), "prefect-tune"),
                            "show", str(storage / "sched")], capture_output=True, text=True,
                           check=True, timeout=120).stdout
    assert "4 trials: 0 terminated, 0 errored, 0 stopped" not in shown
    assert "2 terminated, 0 errored, 0 stopped, 1 paused (2 stopped early by the " \
           "scheduler)" in shown

    grid = Tuner.restore(str(storage / "sched"), curves.follow).fit()

    assert [(r.status, r.outcome.num_reports) for r in grid] == [
        (TrialStatus.TERMINATED, 4), (TrialStatus.TERMINATED, 2),
        (TrialStatus.TERMINATED, 1), (TrialStatus.TERMINATED, 1)]
    assert [r.stopped_early is None for r in grid] == [True, False, False, False]
    assert segments(grid[0]) == [1, 2, 3, 4]


def test_an_asha_promotion_sweep_killed_late_restores_to_the_same_decisions(
    tmp_path: Path
) -> None:
    """The driver dies as A is about to report step 3, after B has finished: the restored
    sweep ranks rungs that hold B's values without B running again, resumes A, and ends
    as the uninterrupted sweep did."""
    storage, marker = tmp_path / "runs", tmp_path / "killed"
    kill_driver(storage, marker, replace(ASHA, promotion=True),
                "[curves.A, curves.B, curves.C, curves.D]", "curves.A", 3)
    before = {tuple(r.config["curve"]): r.status
              for r in Tuner.restore(str(storage / "sched"), curves.follow).get_results()}
    assert before[tuple(curves.B)] is TrialStatus.TERMINATED

    grid = Tuner.restore(str(storage / "sched"), curves.follow).fit()

    found = by_curve(grid)
    assert found["A"] == (TrialStatus.TERMINATED, 8, None)
    assert found["B"] == (TrialStatus.TERMINATED, 8, None)
    assert [found[n][:2] for n in "CD"] == [(TrialStatus.TERMINATED, 1)] * 2
    a = next(r for r in grid if r.config["curve"] == curves.A)
    assert segments(a) == list(range(1, 9))


#: Never 0.2: an exploit always shows in T1's config.
PBT = PopulationBasedTraining(perturbation_interval=2, hyperparam_mutations={
    "lr": [0.05, 0.1, 0.15]}, seed=7)


def pbt_sweep(tmp_path: Path, trainable: Any = curves.grow) -> ResultGrid:
    return Tuner(
        trainable, param_space={"lr": grid_search([0.1, 0.2])},
        tune_config=TuneConfig(metric="score", mode="max", scheduler=PBT,
                               max_concurrent_trials=1),
        run_config=RunConfig(name="pbt", storage_path=str(tmp_path / "runs"),
                             stop={"training_iteration": 6},
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    ).fit()


def assert_pbt_decisions(grid: ResultGrid) -> None:
    """T0 (lr 0.1) runs to 6 first; T1 (lr 0.2) pauses at 2 with 0.4, the worse of the
    two, and exploits T0: it goes on from T0's last checkpoint (0.6), with T0's config
    explored; at 4 it leads, and goes on as it is."""
    t0, t1 = grid
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 2
    assert t0.metrics_dataframe["score"].round(6).tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    draws = PBT.rng(t1.trial_id, 2.0)  # the seed's draws for T1 at 2: its donor, then...
    assert draws.choice([t0.trial_id]) == t0.trial_id
    explored = PBT.explore(dict(t0.config), draws)  # ...its explored config
    lr = explored["lr"]
    rows = t1.metrics_dataframe
    assert rows["training_iteration"].tolist() == [1, 2, 3, 4, 5, 6]
    assert rows["score"].round(6).tolist() == [round(v, 6) for v in (
        0.2, 0.4, 0.6 + lr, 0.6 + 2 * lr, 0.6 + 3 * lr, 0.6 + 4 * lr)]
    assert t1.config == explored and explored["lr"] != 0.2
    assert json.loads((Path(t1.path) / "params.json").read_text()) == explored
    (entry,) = [json.loads(line) for line in
                (Path(t1.path) / "perturbations.json").read_text().splitlines()]
    assert (entry["time"], entry["donor"], entry["donor_checkpoint"], entry["config"]) == (
        2.0, t0.trial_id, "checkpoint_000005", explored)


def test_pbt_exploits_the_better_trial_from_a_copy_of_its_checkpoint(tmp_path: Path) -> None:
    grid = pbt_sweep(tmp_path)

    assert_pbt_decisions(grid)
    # num_to_keep=1 left T0 only its last checkpoint, and T1 a copy of it, since replaced
    assert [p.name for p in sorted(Path(grid[0].path).glob("checkpoint_*"))] == \
        ["checkpoint_000005"]


def test_a_pbt_sweep_killed_after_an_exploit_restores_to_the_same_decisions(
    tmp_path: Path
) -> None:
    storage, marker = tmp_path / "runs", tmp_path / "killed"
    code = textwrap.dedent(f"""
        from prefect_tune.flows import PopulationBasedTraining, TuneConfig, Tuner, grid_search
        from prefect_tune.storage import CheckpointConfig, RunConfig
        from tests.flows import curves
        Tuner(curves.grow, param_space={{"lr": grid_search([0.1, 0.2]),
                                         "marker": {str(marker)!r}}},
              tune_config=TuneConfig(metric="score", mode="max", max_concurrent_trials=1,
                                     scheduler={PBT!r}),
              run_config=RunConfig(name="pbt", storage_path={str(storage)!r},
                                   stop={{"training_iteration": 6}},
                                   checkpoint_config=CheckpointConfig(num_to_keep=1))).fit()
    """)
    run_killed(code)
    assert marker.exists()

    grid = Tuner.restore(str(storage / "pbt"), curves.grow).fit()

    assert_pbt_decisions(grid)


def test_a_trial_without_checkpoints_restarts_from_scratch_after_a_pause_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid = sweep(curves.follow_without_checkpoints, tmp_path,
                 HyperBandScheduler(max_t=4, reduction_factor=2),
                 {"curve": grid_search([c[:4] for c in (curves.A, curves.B, curves.C,
                                                        curves.D)])})

    assert [r.outcome.num_reports for r in grid] == [4, 2, 1, 1]  # the same decisions
    assert segments(grid[0]) == [1, 2, 3, 4]  # each iteration once, after two restarts
    assert f"trial {grid[0].outcome.trial_name} paused at training_iteration=1 without a " \
           "checkpoint: it will start from scratch when resumed" in caplog.text


def test_a_pbt_sweep_killed_between_its_record_of_an_exploit_and_the_copy_redoes_it(
    tmp_path: Path
) -> None:
    """The driver dies once the exploit is in T1's perturbations.json, before T0's
    checkpoint is copied into T1's: the restored sweep finds the record and carries the
    exploit out as recorded."""
    storage = tmp_path / "runs"
    run_killed(textwrap.dedent(f"""
        import os, signal
        from prefect_tune.flows import PopulationBasedTraining, TuneConfig, Tuner, grid_search
        from prefect_tune.storage import CheckpointConfig, RunConfig
        from prefect_tune.storage.trial_dir import TrialDir
        from tests.flows import curves

        def die(self, index, source):
            os.killpg(os.getpgid(0), signal.SIGKILL)

        TrialDir.replace_checkpoint = die  # the sweep dies where the copy would start
        Tuner(curves.grow, param_space={{"lr": grid_search([0.1, 0.2])}},
              tune_config=TuneConfig(metric="score", mode="max", max_concurrent_trials=1,
                                     scheduler={PBT!r}),
              run_config=RunConfig(name="pbt", storage_path={str(storage)!r},
                                   stop={{"training_iteration": 6}},
                                   checkpoint_config=CheckpointConfig(num_to_keep=1))).fit()
    """))
    (t1,) = [p for p in (storage / "pbt").glob("grow_*") if (p / "perturbations.json").exists()]
    assert json.loads((t1 / "trial.json").read_text())["status"] == "PAUSED"

    grid = Tuner.restore(str(storage / "pbt"), curves.grow).fit()

    assert_pbt_decisions(grid)


def test_a_pbt_with_domains_survives_experiment_json() -> None:
    pbt = PopulationBasedTraining(hyperparam_mutations={
        "lr": loguniform(1e-4, 1e-1), "batch": [16, 32, 64]}, seed=3)
    stored = json.loads(json.dumps(TuneConfig(metric="m", mode="max", scheduler=pbt).stored()))
    assert stored["scheduler"]["hyperparam_mutations"] == {
        "lr": {"loguniform": [1e-4, 1e-1]}, "batch": [16, 32, 64]}
    assert TuneConfig(**stored).scheduler == pbt


def test_a_pbt_exploit_whose_donor_checkpoint_is_gone_is_skipped_and_not_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grid = pbt_sweep(tmp_path, curves.grow_then_lose_donors)

    t0, t1 = grid
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 2
    assert t1.config["lr"] == 0.2  # it went on as it was, from its own state
    assert t1.metrics_dataframe["score"].round(6).tolist() == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
    assert not (Path(t1.path) / "perturbations.json").exists()
    assert f"trial {t1.outcome.trial_name} could not exploit {t0.trial_id}" in caplog.text


def lines(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_recorded_exploit_whose_donor_checkpoint_is_gone_at_restore_is_called_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The driver dies once T1's exploit of T0 is recorded, before the copy; then T0's
    checkpoint is deleted. The restored sweep cannot carry the exploit out: it records
    it called off, with T1's own config, and T1 goes on as it was, with a warning."""
    storage = tmp_path / "runs"
    run_killed(textwrap.dedent(f"""
        import os, signal
        from prefect_tune.flows import TuneConfig, Tuner, grid_search
        from prefect_tune.storage import CheckpointConfig, RunConfig
        from prefect_tune.storage.trial_dir import TrialDir
        from tests.flows import curves
        from tests.flows.test_schedulers import PBT

        def die(self, index, source):
            os.killpg(os.getpgid(0), signal.SIGKILL)

        TrialDir.replace_checkpoint = die
        Tuner(curves.grow, param_space={{"lr": grid_search([0.1, 0.2])}},
              tune_config=TuneConfig(metric="score", mode="max", max_concurrent_trials=1,
                                     scheduler=PBT),
              run_config=RunConfig(name="pbt", storage_path={str(storage)!r},
                                   stop={{"training_iteration": 6}},
                                   checkpoint_config=CheckpointConfig(num_to_keep=1))).fit()
    """))
    (t1_dir,) = [p for p in (storage / "pbt").glob("grow_*")
                 if (p / "perturbations.json").exists()]
    (exploit,) = lines(t1_dir / "perturbations.json")
    donor = storage / "pbt" / exploit["donor_name"] / exploit["donor_checkpoint"]
    shutil.rmtree(donor)

    grid = Tuner.restore(str(storage / "pbt"), curves.grow).fit()

    t0, t1 = grid
    assert [r.status for r in grid] == [TrialStatus.TERMINATED] * 2
    assert lines(t1_dir / "perturbations.json") == [
        exploit, {"time": 2.0, "cancelled": True, "config": {"lr": 0.2}}]
    assert t1.config == {"lr": 0.2}
    assert t1.metrics_dataframe["score"].round(6).tolist() == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
    assert f"trial {t1.outcome.trial_name} could not exploit {t0.trial_id}" in caplog.text
