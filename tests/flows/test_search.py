"""Searchers: lazy grid and random sampling, OptunaSearch learning through ask and tell,
ConcurrencyLimiter, Repeater, num_samples=-1 and time_budget_s, restore of a search from
storage alone after a SIGKILL, and bad input."""

from __future__ import annotations

import itertools
import json
import statistics
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from prefect_tune.flows import (
    ASHAScheduler,
    BasicVariantGenerator,
    ConcurrencyLimiter,
    OptunaSearch,
    Repeater,
    TuneConfig,
    Tuner,
    choice,
    grid_search,
    randint,
    uniform,
)
from prefect_tune.flows.results import ResultGrid
from prefect_tune.storage import ConfigError, RunConfig, TrialStatus

from . import search_trainables as st
from .test_schedulers import run_killed

pytestmark = pytest.mark.usefixtures("prefect_server")
PLANE = {"x": uniform(-1, 1), "y": uniform(-1, 1)}


def sweep(trainable: Any, tmp_path: Path, space: dict[str, Any], name: str = "search",
          **tune: Any) -> ResultGrid:
    settings = {"metric": "loss", "mode": "min", "isolation": "thread", "tag_trials": False,
                "max_concurrent_trials": 1, **tune}
    return Tuner(trainable, param_space=space, tune_config=TuneConfig(**settings),
                 run_config=RunConfig(name=name, storage_path=str(tmp_path / "runs"))).fit()


def journal(grid: ResultGrid) -> list[dict[str, Any]]:
    """The trials the search recorded, in order."""
    files = sorted((Path(grid.experiment_path) / ".trials").glob("*.json"))
    return [json.loads(f.read_text()) for f in files]


def test_a_grid_of_a_million_points_is_sampled_as_trials_start(tmp_path: Path) -> None:
    space = {"a": grid_search(list(range(1000))), "b": grid_search(list(range(1000))),
             "c": uniform(0, 1)}
    grid = sweep(st.quadratic, tmp_path, {**space, "x": 0.3, "y": -0.2},
                 time_budget_s=3, max_concurrent_trials=2)

    experiment = Path(grid.experiment_path) / "experiment.json"
    assert json.loads(experiment.read_text())["trials"] == []
    assert experiment.stat().st_size < 30_000  # the space's 2,000 grid values, no config
    recorded = journal(grid)
    assert 0 < len(recorded) == len(grid) < 10_000  # only the trials that started
    assert [(t["config"]["a"], t["config"]["b"]) for t in recorded[:3]] == \
        [(0, 0), (0, 1), (0, 2)]
    assert sorted(r.trial_id for r in grid) == [t["trial_id"] for t in recorded]


def test_any_config_of_the_search_is_made_without_the_ones_before_it() -> None:
    space = {"a": grid_search(list(range(1000))), "b": grid_search(list(range(1000))),
             "c": uniform(0, 1), "n": randint(0, 10)}
    first, again = BasicVariantGenerator(seed=7), BasicVariantGenerator(seed=7)
    for searcher in (first, again):
        searcher.set_search_properties("loss", "min", space)
    configs = [first.suggest(f"t{i}") for i in range(3)]
    again.on_trial_restored("t0", configs[0], "complete", None)
    again.on_trial_restored("t1", configs[1], "running", None)

    assert again.suggest("t2") == configs[2]  # a restore goes on where it was
    assert first.budget(2) == 2_000_000
    far = BasicVariantGenerator(seed=7)
    far.set_search_properties("loss", "min", space)
    far._next = 999_999
    assert far.suggest("last") | {"c": 0, "n": 0} == {"a": 999, "b": 999, "c": 0, "n": 0}


def best_losses(grid: ResultGrid) -> float:
    return min(r.metrics["loss"] for r in grid)


def test_optuna_learns_a_quadratic_better_than_random_search(tmp_path: Path) -> None:
    tpe, rand = [], []
    for seed in range(3):
        tpe.append(best_losses(sweep(st.quadratic, tmp_path, PLANE, f"tpe{seed}",
                                     num_samples=30, search_alg=OptunaSearch(seed=seed))))
        rand.append(best_losses(sweep(st.quadratic, tmp_path, PLANE, f"rand{seed}",
                                      num_samples=30, seed=seed)))

    assert statistics.median(tpe) < statistics.median(rand), (tpe, rand)


def test_with_a_seed_one_trial_at_a_time_two_optuna_runs_suggest_the_same_configs(
    tmp_path: Path
) -> None:
    runs = [sweep(st.quadratic, tmp_path, PLANE, f"same{i}", num_samples=12,
                  search_alg=OptunaSearch(seed=11)) for i in range(2)]

    first, second = ([(r.config["x"], r.config["y"]) for r in grid] for grid in runs)
    assert first == second and len(set(first)) == 12


def test_optuna_hears_of_pruned_trials_as_pruned_with_their_last_value(tmp_path: Path) -> None:
    search = OptunaSearch(seed=2)
    grid = sweep(st.curve, tmp_path, {"c": choice([0, 1, 2, 3]), "x": uniform(0, 1)},
                 num_samples=10, search_alg=search,
                 scheduler=ASHAScheduler(max_t=8, grace_period=1, reduction_factor=2))

    told = {t.params["x"]: t for t in search._study.trials}
    early = [r for r in grid if r.stopped_early]
    assert early and len(early) < len(grid)
    states = optuna.trial.TrialState
    for result in grid:
        trial = told[result.config["x"]]
        reports = result.outcome.num_reports
        if result.stopped_early:
            assert trial.state == states.PRUNED  # its value: Optuna's, the last one reported
            assert trial.intermediate_values == {reports: result.metrics["loss"]}
        else:
            assert (trial.state, trial.value, reports) == (states.COMPLETE,
                                                           result.metrics["loss"], 8)


def test_concurrency_limiter_keeps_trials_apart_and_finished_ends_the_search(
    tmp_path: Path
) -> None:
    searcher = st.Counting(last=3)
    grid = sweep(st.span, tmp_path, {}, num_samples=-1, max_concurrent_trials=3,
                 search_alg=ConcurrencyLimiter(searcher, max_concurrent=1))

    assert [r.config["i"] for r in grid] == [0, 1, 2, 3]  # FINISHED after 3
    spans = sorted((r.metrics["began"], r.metrics["ended"]) for r in grid)
    assert all(end <= begin for (_, end), (begin, _) in itertools.pairwise(spans))
    assert [kind for kind, _, _ in searcher.told] == ["complete"] * 4


def test_repeater_runs_each_config_repeat_times_and_tells_the_mean(tmp_path: Path) -> None:
    searcher = st.Counting()
    grid = sweep(st.grouped, tmp_path, {}, num_samples=6, max_concurrent_trials=2,
                 search_alg=Repeater(searcher, repeat=3))

    assert [(r.config["i"], r.config["__trial_index__"]) for r in grid] == \
        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    ids = [r.trial_id for r in grid]
    assert searcher.told == [("complete", ids[0], 1.0), ("complete", ids[3], 11.0)]


def test_a_restored_repeater_tells_its_searcher_of_each_group_once() -> None:
    inner = st.Counting()
    repeater = Repeater(inner, repeat=2)
    repeater.set_search_properties("loss", "min", {})
    for trial, i, index, state in (("t0", 0, 0, "complete"), ("t1", 0, 1, "error"),
                                   ("t2", 1, 0, "complete"), ("t3", 1, 1, "running")):
        repeater.on_trial_restored(trial, {"i": i, "__trial_index__": index}, state,
                                   {"loss": 4.0} if state == "complete" else None)
    assert repeater.suggest("t4") == {"i": 2, "__trial_index__": 0}

    assert inner.told == [("restored", "t0", "complete"), ("restored", "t2", "running")]
    repeater.on_trial_complete("t3", {"loss": 6.0})
    assert inner.told[-1] == ("complete", "t2", 5.0)  # the mean of the group's two


def test_time_budget_stops_the_running_trials_and_starts_no_more(tmp_path: Path) -> None:
    grid = sweep(st.endless, tmp_path, {"v": uniform(0, 1)}, num_samples=-1,
                 time_budget_s=2, max_concurrent_trials=2)

    assert len(grid) == 2
    assert {r.status for r in grid} == {TrialStatus.STOPPED}
    assert all(r.outcome.num_reports > 0 for r in grid)


def test_a_search_killed_mid_way_restores_to_exactly_num_samples_trials(tmp_path: Path) -> None:
    storage, log = tmp_path / "runs", tmp_path / "started"
    space = {"log": str(log), "kill_after": 4,
             "marker": str(tmp_path / "killed")}
    run_killed(textwrap.dedent(f"""
        from prefect_tune.flows import OptunaSearch, TuneConfig, Tuner, uniform
        from prefect_tune.storage import RunConfig
        from tests.flows import search_trainables as st
        Tuner(st.counted, param_space={{**{space!r}, "x": uniform(0, 1)}},
              tune_config=TuneConfig(metric="loss", mode="min", num_samples=8,
                                     max_concurrent_trials=1, isolation="thread",
                                     search_alg=OptunaSearch(seed=3)),
              run_config=RunConfig(name="killed", storage_path={str(storage)!r})).fit()
    """))
    assert len(log.read_text().splitlines()) == 4

    grid = Tuner.restore(str(storage / "killed"), st.counted).fit()

    assert len(grid) == 8 and {r.status for r in grid} == {TrialStatus.TERMINATED}
    assert len(journal(grid)) == 8 == len({r.config["x"] for r in grid})
    started = log.read_text().splitlines()
    assert len(started) == 9 and started[3] == started[4]  # only the killed one ran again
    assert sorted(set(started)) == sorted(r.trial_id for r in grid)


def test_a_custom_searcher_is_replayed_on_restore(tmp_path: Path) -> None:
    first = st.Counting(last=5)
    sweep(st.span, tmp_path, {}, "custom", num_samples=3, search_alg=first)
    path = str(tmp_path / "runs" / "custom")

    with pytest.raises(ConfigError, match="search_alg="):
        Tuner.restore(path, st.span)

    again = st.Counting(last=5)
    tuner = Tuner.restore(path, st.span, search_alg=again)
    assert [kind for kind, _, _ in again.told] == []
    grid = tuner.fit()

    assert [r.config["i"] for r in grid] == [0, 1, 2]  # the budget of 3 was spent
    assert [(kind, state) for kind, _, state in again.told] == [("restored", "complete")] * 3


@pytest.mark.parametrize(("tune", "message"), [
    ({"num_samples": -1}, "never does: set TuneConfig\\(time_budget_s"),
    ({"search_alg": OptunaSearch(), "num_samples": 2}, "grid_search in param_space"),
    ({"time_budget_s": 0}, "time_budget_s=0 is invalid"),
    ({"num_samples": -2}, "num_samples=-2 is invalid"),
])
def test_bad_search_settings_are_refused_before_anything_runs(
    tmp_path: Path, tune: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Tuner(st.quadratic, param_space={"x": grid_search([1, 2]), "y": 0},
              tune_config=TuneConfig(**tune),
              run_config=RunConfig(name="bad", storage_path=str(tmp_path)))
    assert not (tmp_path / "bad").exists()


def test_optuna_refuses_what_it_cannot_represent_naming_the_value() -> None:
    with pytest.raises(ConfigError, match=r"sampler='annealing'\) is not a sampler"):
        OptunaSearch(sampler="annealing")
    with pytest.raises(ConfigError, match=r"'opt'.*holds lists or dicts"):
        OptunaSearch(space={"opt": choice([[1, 2], [3]])})
    with pytest.raises(ConfigError, match="needs a metric and a mode"):
        OptunaSearch().set_search_properties(None, None, PLANE)


def test_a_searcher_that_suggests_no_config_fails_the_sweep_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Broken.suggest\(.*returned \['not', 'a', "
                                          "'dict'\\]; a searcher returns a config dict"):
        sweep(st.quadratic, tmp_path, {}, num_samples=2, search_alg=st.Broken())
