"""Search spaces: domains, validation and sampling; pure functions, no I/O.

Grid axes multiply; `num_samples` repeats the whole grid, sampling the random domains
afresh each time (Ray's semantics). Every value must be plain JSON data, since each
trial's config is stored in its params.json.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect_tune.storage import ConfigError


@dataclass(frozen=True)
class Domain:
    """A parameter drawn by the search."""

    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class GridSearch(Domain):
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Choice(Domain):
    values: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        return self.values[rng.randrange(len(self.values))]


@dataclass(frozen=True)
class Uniform(Domain):
    lower: float
    upper: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.lower, self.upper)


@dataclass(frozen=True)
class LogUniform(Domain):
    lower: float
    upper: float

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))


@dataclass(frozen=True)
class RandInt(Domain):
    lower: int
    upper: int

    def sample(self, rng: random.Random) -> int:
        return rng.randrange(self.lower, self.upper)


def _values(kind: str, values: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{kind}({values!r}) needs a non-empty list of values")
    for value in values:
        _check_plain(value, f"{kind} value")
    return tuple(values)


def _bounds(kind: str, lower: float, upper: float, *, positive: bool = False) -> None:
    numbers = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in (lower, upper)
    )
    if not numbers or not lower < upper or (positive and lower <= 0):
        need = "finite 0 < lower < upper" if positive else "finite lower < upper"
        raise ConfigError(f"{kind}({lower!r}, {upper!r}) is invalid: need numbers with {need}")


def grid_search(values: Sequence[Any]) -> GridSearch:
    """Try every value; several grid axes multiply."""
    return GridSearch(_values("grid_search", values))


def choice(values: Sequence[Any]) -> Choice:
    """One of `values`, uniformly at random."""
    return Choice(_values("choice", values))


def uniform(lower: float, upper: float) -> Uniform:
    """A float uniformly in [lower, upper)."""
    _bounds("uniform", lower, upper)
    return Uniform(float(lower), float(upper))


def loguniform(lower: float, upper: float) -> LogUniform:
    """A float whose logarithm is uniform in [log(lower), log(upper))."""
    _bounds("loguniform", lower, upper, positive=True)
    return LogUniform(float(lower), float(upper))


def randint(lower: int, upper: int) -> RandInt:
    """An integer in [lower, upper): `upper` is excluded, as in Ray and `range`."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lower, upper)):
        raise ConfigError(f"randint({lower!r}, {upper!r}) needs integers")
    _bounds("randint", lower, upper)
    return RandInt(lower, upper)


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: key {key!r} is not a string")
            _check_plain(item, f"{where}/{key}")
        return
    raise ConfigError(
        f"param_space {where!r}: {type(value).__name__} object {value!r} is not supported; use "
        "numbers, strings, bools, None, lists, dicts, or grid_search/choice/uniform/"
        "loguniform/randint"
    )


def validate_space(space: Mapping[str, Any], where: str = "") -> None:
    """Raise ConfigError naming the first value that is neither plain data nor a Domain."""
    if not isinstance(space, Mapping):
        raise ConfigError(f"param_space must be a dict, got {type(space).__name__}")
    for key, value in space.items():
        path = f"{where}/{key}" if where else str(key)
        if not isinstance(key, str):
            raise ConfigError(f"param_space key {key!r} is not a string")
        if isinstance(value, Domain):
            continue
        if isinstance(value, Mapping):
            validate_space(value, path)
        else:
            _check_plain(value, path)


def _grid_axes(space: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    axes = []
    for key, value in space.items():
        if isinstance(value, GridSearch):
            axes.append((*prefix, key))
        elif isinstance(value, Mapping):
            axes.extend(_grid_axes(value, (*prefix, key)))
    return axes


def _resolve(
    space: Mapping[str, Any], grid: Mapping[tuple[str, ...], Any], rng: random.Random,
    prefix: tuple[str, ...] = (),
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in space.items():
        path = (*prefix, key)
        if isinstance(value, GridSearch):
            config[key] = copy.deepcopy(grid[path])
        elif isinstance(value, Domain):
            config[key] = value.sample(rng)
        elif isinstance(value, Mapping):
            config[key] = _resolve(value, grid, rng, path)
        else:
            config[key] = copy.deepcopy(value)
    return config


def grid_size(space: Mapping[str, Any]) -> int:
    """The number of points of the space's grid (1 without grid axes)."""
    return math.prod(len(_lookup(space, axis).values) for axis in _grid_axes(space))


def config_at(space: Mapping[str, Any], index: int, seed: int) -> dict[str, Any]:
    """The `index`-th config of the search: grid point `index` mod the grid's size (the
    last axis varies fastest), its random domains drawn from a generator seeded by
    `seed` and `index` alone, so any config is made without the ones before it."""
    axes = _grid_axes(space)
    point: dict[tuple[str, ...], Any] = {}
    rest = index
    for axis in reversed(axes):
        values = _lookup(space, axis).values
        rest, position = divmod(rest, len(values))
        point[axis] = values[position]
    return _resolve(space, point, random.Random(f"{seed}/{index}"))


def _lookup(space: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = space
    for key in path:
        value = value[key]
    return value


def space_to_json(space: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a space: {"lr": {"loguniform": [1e-4, 0.1]}, "layers": 2, ...}."""
    names = {GridSearch: "grid_search", Choice: "choice", Uniform: "uniform",
             LogUniform: "loguniform", RandInt: "randint"}
    out: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, (GridSearch, Choice)):
            out[key] = {names[type(value)]: list(value.values)}
        elif isinstance(value, (Uniform, LogUniform, RandInt)):
            out[key] = {names[type(value)]: [value.lower, value.upper]}
        elif isinstance(value, Mapping):
            out[key] = space_to_json(value)
        else:
            out[key] = value
    return out


_LISTS = {"grid_search": grid_search, "choice": choice}
_RANGES = {"uniform": uniform, "loguniform": loguniform, "randint": randint}


def space_from_json(data: Mapping[str, Any], where: str = "param_space") -> dict[str, Any]:
    """The inverse of `space_to_json`: a dict with the single key grid_search, choice
    (a list of values), uniform, loguniform or randint ([lower, upper]) is that domain;
    other dicts nest; everything else is a constant.

    Raises:
        ConfigError: naming the key whose domain is malformed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}"
        kind = next(iter(value)) if isinstance(value, Mapping) and len(value) == 1 else None
        if kind in _LISTS or kind in _RANGES:
            out[key] = _domain(path, kind, value[kind])
        elif isinstance(value, Mapping):
            out[key] = space_from_json(value, path)
        else:
            out[key] = value
    validate_space(out)
    return out


def _domain(path: str, kind: str, arguments: Any) -> Domain:
    try:
        if kind in _LISTS:
            return _LISTS[kind](arguments)
        if not isinstance(arguments, list) or len(arguments) != 2:
            raise ConfigError(f"{kind} takes [lower, upper], got {arguments!r}")
        return _RANGES[kind](*arguments)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
