"""The deployable `sweep` flow called in-process: JSON parameters in, a summary out, and the
same experiment as `Tuner.fit()` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from prefect_tune.flows.search_space import (
    grid_search,
    loguniform,
    randint,
    space_from_json,
    space_to_json,
)
from prefect_tune.flows.sweep import sweep
from prefect_tune.storage import ConfigError

DEMO = "prefect_tune.flows.demo:train_linear"
SPACE = {"lr": {"grid_search": [0.05, 0.1]}, "epochs": 3, "steps_per_epoch": 5}


def test_json_space_round_trips() -> None:
    space = {"lr": loguniform(1e-4, 0.1), "layers": grid_search([1, 2]),
             "opt": {"seed": randint(0, 10), "name": "sgd"}, "epochs": 3}
    assert space_from_json(space_to_json(space)) == space


@pytest.mark.parametrize(("space", "named"), [
    ({"lr": {"loguniform": [0.1]}}, "param_space.lr: loguniform takes [lower, upper]"),
    ({"opt": {"lr": {"uniform": [2, 1]}}}, "param_space.opt.lr: uniform(2, 1) is invalid"),
    ({"layers": {"grid_search": []}}, "param_space.layers: grid_search([]) needs"),
])
def test_a_malformed_json_domain_names_its_key(space: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=r"^" + named.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        space_from_json(space)


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_runs_a_sweep_and_returns_its_summary(tmp_path: Path) -> None:
    summary = sweep(trainable=DEMO, param_space=SPACE, metric="loss", mode="min",
                    name="flow-sweep", storage_path=str(tmp_path), num_to_keep=1,
                    checkpoint_score_attribute="loss", checkpoint_score_order="min")
    table = pd.read_csv(tmp_path / "flow-sweep" / "results.csv")
    best = table.loc[table["loss"].idxmin()]
    assert summary["trials"] == {"TERMINATED": 2}
    assert summary["best"]["trial"] == best["trial_name"]
    assert summary["best"]["checkpoint"] == best["best_checkpoint"]
    assert summary["best"]["config"]["lr"] == best["config/lr"]


@pytest.mark.usefixtures("prefect_server")
def test_an_existing_experiment_is_refused_unless_resumed(tmp_path: Path) -> None:
    args = {"trainable": DEMO, "param_space": SPACE, "name": "again",
            "storage_path": str(tmp_path)}
    first = sweep(**args)
    with pytest.raises(ConfigError, match="already exists"):
        sweep(**args)
    resumed = sweep(**args, resume=True)
    assert resumed["trials"] == first["trials"] == {"TERMINATED": 2}


@pytest.mark.usefixtures("prefect_server")
def test_parameters_are_validated_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ParameterTypeError, match="num_samples"):
        sweep(trainable=DEMO, num_samples=0, storage_path=str(tmp_path))
    with pytest.raises(ParameterTypeError, match="trainable"):
        sweep(trainable="not a path", storage_path=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("prefect_server")
def test_an_unknown_trainable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"module 'no_such_pkg.mod' cannot be imported"):
        sweep(trainable="no_such_pkg.mod:fn", storage_path=str(tmp_path))


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_takes_a_searcher_by_name_with_json_settings(tmp_path: Path) -> None:
    plane = {"x": {"uniform": [-1, 1]}, "y": {"uniform": [-1, 1]}}
    args = {"trainable": "tests.flows.search_trainables:quadratic", "param_space": plane,
            "metric": "loss", "mode": "min", "storage_path": str(tmp_path)}
    summary = sweep(**args, num_samples=5, name="by-name", search_alg="optuna",
                    search_settings={"sampler": "random", "seed": 4})

    assert summary["trials"] == {"TERMINATED": 5}
    stored = json.loads((tmp_path / "by-name" / "experiment.json").read_text())
    assert stored["tune"]["search_alg"] == {  # metric and mode: TuneConfig's
        "name": "optuna", "metric": None, "mode": None, "sampler": "random", "seed": 4,
        "space": None}
    with pytest.raises(ParameterTypeError, match="search_alg"):
        sweep(**args, search_alg="hyperopt")
    with pytest.raises(ConfigError, match=r"sampler='annealing'\) is not a sampler"):
        sweep(**args, search_alg="optuna", search_settings={"sampler": "annealing"})
    with pytest.raises(ConfigError, match="search_settings .*'trials'"):
        sweep(**args, search_alg="optuna", search_settings={"trials": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-name"]


def test_every_parameter_has_help_text_for_the_run_form() -> None:
    """The UI's run form shows each parameter's description (the docstring's Args)."""
    schema = parameter_schema(sweep.fn).model_dump()["properties"]

    assert {name for name, field in schema.items() if not field.get("description")} == set()
    assert "loguniform" in schema["param_space"]["description"]
    assert schema["search_alg"]["enum"] == ["variants", "optuna"]
