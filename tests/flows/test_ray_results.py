"""What Ray Tune's result tests (test_result_grid, test_experiment_analysis,
test_tuner_restore) expect of results, translated: the best row per trial, the best
checkpoint by any metric, the progress.csv fallback, get_best_result's rules, repr, and
can_restore as soon as fit() created the experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner, grid_search
from prefect_tune.flows.results import ResultGrid
from prefect_tune.storage import (
    Checkpoint,
    ConfigError,
    NoResultError,
    RunConfig,
)
from prefect_tune.tasks import get_context, report

from ..conftest import make_backend

pytestmark = pytest.mark.usefixtures("prefect_server")

NAN = float("nan")
#: Each trial's losses, one report (and one checkpoint) each.
CURVES = {"a": [3.0, 1.0, 2.0], "b": [4.0, NAN, 0.5]}


def curve(config: dict[str, Any]) -> None:
    for step, loss in enumerate(CURVES[config["curve"]], start=1):
        report({"loss": loss, "acc": -loss, "step": step},
               checkpoint=Checkpoint.from_dict({"step": step}))


def fit(url: str, name: str, options: dict[str, Any] | None = None,
        curves: list[str] | None = None, **tune: Any) -> ResultGrid:
    return Tuner(curve, param_space={"curve": grid_search(curves or list(CURVES))},
                 tune_config=TuneConfig(isolation="thread", **tune),
                 run_config=RunConfig(name=name, storage_path=url,
                                      storage_options=options)).fit()


def test_get_dataframe_with_a_filter_metric_has_each_trials_best_row(tmp_path: Path) -> None:
    grid = fit(str(tmp_path), "filtered")

    last = grid.get_dataframe()
    assert list(last["step"]) == [3, 3] and list(last["loss"]) == [2.0, 0.5]
    lowest = grid.get_dataframe(filter_metric="loss", filter_mode="min")
    assert list(lowest["step"]) == [2, 3] and list(lowest["loss"]) == [1.0, 0.5]
    highest = grid.get_dataframe(filter_metric="loss", filter_mode="max")  # NaN never wins
    assert list(highest["step"]) == [1, 1] and list(highest["loss"]) == [3.0, 4.0]
    assert list(highest["training_iteration"]) == [1, 1]
    assert list(highest["trial_id"]) == list(last["trial_id"])  # one row per trial
    with pytest.raises(ConfigError, match="give both"):
        grid.get_dataframe(filter_metric="loss")


def test_a_trials_best_checkpoint_by_any_metric_and_mode(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    s3 = make_backend("s3", request, tmp_path)
    grid = fit(s3.url, "best-checkpoint", s3.options)
    a, b = grid

    def step(checkpoint: Checkpoint) -> int:
        return int(checkpoint.to_dict()["step"])

    assert step(a.get_best_checkpoint("loss", "min")) == 2
    assert step(a.get_best_checkpoint("loss", "max")) == 1
    assert step(a.get_best_checkpoint("acc", "max")) == 2
    assert step(b.get_best_checkpoint("loss", "min")) == 3
    assert step(b.get_best_checkpoint("loss", "max")) == 1  # NaN never wins
    assert a.get_best_checkpoint("loss", "min").path.startswith(f"{s3.url}/best-checkpoint/")
    with pytest.raises(NoResultError, match="reported a usable value of 'missing'"):
        a.get_best_checkpoint("missing", "min")
    with pytest.raises(ConfigError, match="mode='best' is invalid"):
        a.get_best_checkpoint("loss", "best")  # type: ignore[arg-type]


def test_metrics_dataframe_falls_back_to_progress_csv(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    gcs = make_backend("gcs", request, tmp_path)
    result = fit(gcs.url, "fallback", gcs.options, curves=["a"])[0]
    expected = result.metrics_dataframe

    gcs.fs.rm(f"{result.path.split('://', 1)[1]}/result.json")
    fallback = type(result)(result.outcome, result.store).metrics_dataframe

    assert list(fallback["loss"]) == list(expected["loss"]) == CURVES["a"]
    assert list(fallback["training_iteration"]) == [1, 2, 3]


def test_get_best_result_follows_rays_rules(tmp_path: Path) -> None:
    one = fit(str(tmp_path), "one", curves=["a"])  # no metric, no mode
    assert one.get_best_result() is one[0]  # a single trial is the best one

    two = fit(str(tmp_path), "two")
    with pytest.raises(ConfigError, match="needs a metric and a mode") as no_metric:
        two.get_best_result()
    assert isinstance(no_metric.value, ValueError)
    assert two.get_best_result("loss", "min").config == {"curve": "b"}  # last values

    with pytest.raises(NoResultError, match="no trial reported a usable value of 'nope'") \
            as unusable:
        two.get_best_result("nope", "min")
    assert isinstance(unusable.value, RuntimeError)


def test_repr_of_a_result_shows_the_users_metrics(tmp_path: Path) -> None:
    result = fit(str(tmp_path), "repr", curves=["a"])[0]

    text = repr(result)

    assert text.startswith(f"Result(trial={result.outcome.trial_name!r}, status=TERMINATED, "
                           "metrics={'loss': 2.0, 'acc': -2.0, 'step': 3}, checkpoint=")
    for bookkeeping in ("trial_id", "timestamp", "checkpoint_dir_name", "training_iteration"):
        assert bookkeeping not in text


def test_can_restore_is_true_as_soon_as_fit_created_the_experiment(tmp_path: Path) -> None:
    experiment = tmp_path / "early"
    seen: list[bool] = []

    def probe(config: dict[str, Any]) -> None:
        seen.append(Tuner.can_restore(get_context().experiment_path))
        report({"x": 1})

    assert not Tuner.can_restore(experiment)
    Tuner(probe, tune_config=TuneConfig(isolation="thread"),
          run_config=RunConfig(name="early", storage_path=str(tmp_path))).fit()

    assert seen == [True]  # while its first trial ran
    assert Tuner.can_restore(experiment)
