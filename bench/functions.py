"""The searchers' test functions of `search.py`, standard library only (Ray's
environment imports it too): Branin (2-D) and Hartmann-6, with their search spaces as
(name, lower, upper) and their known minima."""

from __future__ import annotations

import math

from hartmann import hartmann6


def branin(x: dict[str, float]) -> float:
    """Branin-Hoo on [-5, 10] x [0, 15]: minimum 0.397887 at three points."""
    x1, x2 = x["x1"], x["x2"]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def hartmann(x: dict[str, float]) -> float:
    return hartmann6([x[f"x{i}"] for i in range(1, 7)])


#: name -> (function, space as (parameter, lower, upper), known minimum)
PROBLEMS = {
    "branin": (branin, [("x1", -5.0, 10.0), ("x2", 0.0, 15.0)], 0.397887),
    "hartmann6": (hartmann, [(f"x{i}", 0.0, 1.0) for i in range(1, 7)], -3.32237),
}
