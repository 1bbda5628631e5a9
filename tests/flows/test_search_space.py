"""Search spaces: grid expansion, sampling, validation and the JSON form."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from prefect_tune.flows.search_space import (
    choice,
    generate_configs,
    grid_search,
    loguniform,
    randint,
    space_to_json,
    uniform,
    validate_space,
)
from prefect_tune.storage.errors import ConfigError

DRAWS = 2000


def generate(space: dict[str, Any], num_samples: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    return generate_configs(space, num_samples, random.Random(seed))


def test_grid_axes_multiply() -> None:
    configs = generate({"a": grid_search([1, 2]), "b": grid_search(["x", "y", "z"])})
    assert len(configs) == 6
    pairs = [(c["a"], c["b"]) for c in configs]
    assert sorted(pairs) == sorted((a, b) for a in (1, 2) for b in ("x", "y", "z"))


def test_num_samples_repeats_grid_in_order() -> None:
    configs = generate({"a": grid_search([1, 2])}, num_samples=2)
    assert [c["a"] for c in configs] == [1, 2, 1, 2]


def test_nested_dicts_with_domains_resolve() -> None:
    space = {"model": {"layers": grid_search([1, 2]), "opt": {"lr": uniform(0.1, 0.2)}}}
    configs = generate(space)
    assert [c["model"]["layers"] for c in configs] == [1, 2]
    for config in configs:
        assert 0.1 <= config["model"]["opt"]["lr"] < 0.2


def test_plain_values_pass_through() -> None:
    space = {"fixed": 3, "name": "run", "flag": True, "none": None, "items": [1, "a"],
             "nested": {"depth": 4}}
    assert generate(space) == [space]


def test_same_seed_gives_identical_configs() -> None:
    space = {"lr": loguniform(1e-4, 1e-1), "bs": choice([16, 32, 64]), "g": grid_search([1, 2])}
    assert generate(space, num_samples=3, seed=7) == generate(space, num_samples=3, seed=7)


def test_different_seeds_give_different_configs() -> None:
    space = {"lr": loguniform(1e-4, 1e-1), "x": uniform(0, 1)}
    assert generate(space, num_samples=3, seed=1) != generate(space, num_samples=3, seed=2)


@pytest.mark.parametrize(
    ("make", "lower", "upper"),
    [(uniform, -2.0, 3.0), (loguniform, 1e-4, 1e-1)],
    ids=["uniform", "loguniform"],
)
def test_float_samples_lie_within_bounds(
    make: Callable[[float, float], Any], lower: float, upper: float
) -> None:
    values = [c["v"] for c in generate({"v": make(lower, upper)}, num_samples=DRAWS)]
    assert all(isinstance(v, float) for v in values)
    assert all(lower <= v <= upper for v in values)


def test_randint_excludes_upper_and_covers_range() -> None:
    values = {c["v"] for c in generate({"v": randint(3, 6)}, num_samples=DRAWS)}
    assert values == {3, 4, 5}


def test_choice_only_returns_listed_values() -> None:
    options = ["a", 2, None]
    values = [c["v"] for c in generate({"v": choice(options)}, num_samples=DRAWS)]
    assert set(values) <= set(options)


def test_validate_space_names_key_path_of_unknown_object() -> None:
    with pytest.raises(ConfigError) as info:
        validate_space({"model": {"layer": object()}})
    assert "model/layer" in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: uniform(2, 1),
        lambda: loguniform(0, 1),
        lambda: randint(1.5, 3),  # type: ignore[arg-type]
        lambda: grid_search([]),
    ],
    ids=["uniform(2,1)", "loguniform(0,1)", "randint(1.5,3)", "grid_search([])"],
)
def test_bad_bounds_raise_config_error(make: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError):
        make()


def test_space_to_json() -> None:
    space = {"lr": loguniform(0.0001, 0.1), "layers": grid_search([1, 2]), "fixed": 3}
    assert space_to_json(space) == {
        "lr": {"loguniform": [0.0001, 0.1]},
        "layers": {"grid_search": [1, 2]},
        "fixed": 3,
    }
