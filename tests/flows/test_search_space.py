"""Search spaces: grid expansion, sampling, validation and the JSON form."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefect_tune.flows import TuneConfig, Tuner
from prefect_tune.flows.search_space import (
    choice,
    config_at,
    grid_search,
    grid_size,
    loguniform,
    randint,
    space_to_json,
    uniform,
    validate_space,
)
from prefect_tune.storage import RunConfig
from prefect_tune.storage.errors import ConfigError

DRAWS = 2000


def generate(space: dict[str, Any], num_samples: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    return [config_at(space, i, seed) for i in range(num_samples * grid_size(space))]


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


# Distributions. Each test draws N values with a fixed seed, so it is deterministic. The
# tolerances are 5 binomial (or mean) standard deviations: another seed, or a harmless
# change in draw order, fails a check with a chance below 6e-7, while a wrong distribution
# misses it by far more.
N = 4000
SEED = 20261121


def draws(domain: Any, num_samples: int = N, seed: int = SEED) -> list[Any]:
    return [c["v"] for c in generate({"v": domain}, num_samples=num_samples, seed=seed)]


def frequency_tolerance(p: float, n: int = N) -> float:
    """5 binomial standard deviations of the frequency of an event of probability p."""
    return 5 * math.sqrt(p * (1 - p) / n)


def assert_frequencies(values: list[Any], expected: dict[Any, float]) -> None:
    counts = Counter(values)
    assert set(counts) <= set(expected), f"unexpected values {set(counts) - set(expected)}"
    for value, p in expected.items():
        assert abs(counts[value] / len(values) - p) <= frequency_tolerance(p, len(values)), (
            f"{value!r}: {counts[value]} of {len(values)}, expected {p:.3f}"
        )


def test_choice_draws_each_value_equally_often() -> None:
    """choice over 4 values gives each about a quarter (within 5 binomial sigma, ~3.4%)."""
    options = ["a", "b", "c", "d"]
    assert_frequencies(draws(choice(options)), {v: 0.25 for v in options})


def test_uniform_has_the_bounds_mean_and_flat_quarters_of_its_range() -> None:
    """uniform(-2, 3) stays in [-2, 3), reaches both ends, and is flat (mean, quarters)."""
    lower, upper = -2.0, 3.0
    values = draws(uniform(lower, upper))
    assert all(lower <= v < upper for v in values)
    width = upper - lower
    # P(no draw in the outer 1% at one end) = 0.99**4000 ~ 3e-18
    assert min(values) < lower + 0.01 * width and max(values) > upper - 0.01 * width
    # the mean of N uniform draws has standard deviation width / sqrt(12 N) ~ 0.023
    assert abs(statistics.fmean(values) - (lower + upper) / 2) <= 5 * width / math.sqrt(12 * N)
    quarters = [min(int((v - lower) / width * 4), 3) for v in values]
    assert_frequencies(quarters, {q: 0.25 for q in range(4)})


def test_loguniform_is_uniform_in_log_space_not_in_linear_space() -> None:
    """loguniform(1e-4, 1e-1): log10 is uniform on [-4, -1] (mean -2.5, a third per
    decade), and the median is near 10**-2.5, far below the linear midpoint 0.05."""
    values = draws(loguniform(1e-4, 1e-1))
    assert all(1e-4 <= v <= 1e-1 for v in values)
    logs = [math.log10(v) for v in values]
    # log10 is uniform on a width of 3: the mean's standard deviation is 3 / sqrt(12 N)
    assert abs(statistics.fmean(logs) + 2.5) <= 5 * 3 / math.sqrt(12 * N)
    decades = [min(int(x + 4), 2) for x in logs]  # 0: [1e-4, 1e-3), 1: [1e-3, 1e-2), ...
    assert_frequencies(decades, {d: 1 / 3 for d in range(3)})
    # a uniform sampler would put the median near 0.05 and 90% of draws in the top decade
    assert statistics.median(values) < 0.01
    # the sample median of log10 has standard deviation 3 * 0.5 / sqrt(N) ~ 0.024
    assert abs(math.log10(statistics.median(values)) + 2.5) <= 5 * 3 * 0.5 / math.sqrt(N)


def test_randint_covers_lower_to_upper_minus_one_equally() -> None:
    """randint(-2, 3) draws exactly -2..2 (upper excluded), each about a fifth."""
    values = draws(randint(-2, 3))
    assert set(values) == set(range(-2, 3))
    assert_frequencies(values, {v: 0.2 for v in range(-2, 3)})
    assert set(draws(randint(7, 8), num_samples=50)) == {7}  # a single value


def test_num_samples_repeats_the_grid_and_samples_each_repeat_afresh() -> None:
    """grid x num_samples: every grid value once per sample, fresh random draws each time."""
    space = {"g": grid_search(["x", "y", "z"]), "u": uniform(0, 1), "c": choice([1, 2, 3, 4])}
    configs = generate(space, num_samples=N // 3)
    assert len(configs) == 3 * (N // 3)
    assert [c["g"] for c in configs] == ["x", "y", "z"] * (N // 3)
    assert len({c["u"] for c in configs}) == len(configs)  # never a repeated draw
    assert_frequencies([c["c"] for c in configs], {v: 0.25 for v in (1, 2, 3, 4)})
    for value in "xyz":  # within each grid value too, the draws follow the domain
        assert_frequencies([c["c"] for c in configs if c["g"] == value],
                           {v: 0.25 for v in (1, 2, 3, 4)})


def test_nested_dicts_sample_every_leaf_independently() -> None:
    """Each leaf of a nested space is drawn from its own domain, independently of others."""
    space = {
        "top": uniform(0, 1),
        "model": {"width": randint(1, 5), "opt": {"lr": loguniform(1e-4, 1e-1),
                                                  "momentum": uniform(0, 1)}},
        "data": {"kind": choice(["a", "b"]), "fixed": 3},
    }
    configs = generate(space, num_samples=N)
    top = [c["top"] for c in configs]
    momentum = [c["model"]["opt"]["momentum"] for c in configs]
    assert all(c["data"]["fixed"] == 3 for c in configs)
    assert all(a != b for a, b in zip(top, momentum, strict=True))
    # independent leaves: the correlation of N pairs has standard deviation ~1/sqrt(N)
    assert abs(statistics.correlation(top, momentum)) <= 5 / math.sqrt(N)
    for leaf in (top, momentum):
        assert abs(statistics.fmean(leaf) - 0.5) <= 5 / math.sqrt(12 * N)
    assert_frequencies([c["model"]["width"] for c in configs], {v: 0.25 for v in range(1, 5)})
    assert_frequencies([c["data"]["kind"] for c in configs], {"a": 0.5, "b": 0.5})
    logs = [math.log10(c["model"]["opt"]["lr"]) for c in configs]
    assert abs(statistics.fmean(logs) + 2.5) <= 5 * 3 / math.sqrt(12 * N)


def nothing(config: dict[str, Any]) -> None:
    return None


@pytest.mark.usefixtures("prefect_server")
def test_tuner_draws_its_configs_with_the_seeded_sampler(tmp_path: Path) -> None:
    """Tuner(seed=S) runs exactly the configs config_at makes for seed S, in order."""
    space = {
        "g": grid_search([1, 2]), "c": choice(["a", "b", "c", "d"]), "u": uniform(-2, 3),
        "lr": loguniform(1e-4, 1e-1), "n": randint(0, 10), "nested": {"m": uniform(0, 1)},
    }
    grid = Tuner(
        nothing, param_space=space,
        tune_config=TuneConfig(num_samples=6, seed=SEED, isolation="thread"),
        run_config=RunConfig(name="exp", storage_path=str(tmp_path / "runs")),
    ).fit()

    expected = generate(space, num_samples=6, seed=SEED)
    assert [r.config for r in grid] == expected
    assert [json.loads((Path(r.path) / "params.json").read_text()) for r in grid] == expected
    experiment = json.loads((tmp_path / "runs" / "exp" / "experiment.json").read_text())
    assert experiment["search"]["seed"] == SEED
    assert "search_alg" not in experiment["tune"]  # the default searcher
    assert len({c["u"] for c in expected}) == len(expected)  # not one draw reused
