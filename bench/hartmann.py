"""The multi-fidelity problem of `asha.py`, standard library only (Ray's environment
imports it too): a fixed list of configs in [0, 1]^6, seeded, and each config's loss
after t steps: the Hartmann-6 function at the config plus a term that fades as 1/t, so
that low fidelities rank configs roughly as the final one does, as in a real training
curve. Each step also burns a fixed CPU loop (not a sleep)."""

from __future__ import annotations

import math
import random

ALPHA = (1.0, 1.2, 3.0, 3.2)
A = ((10, 3, 17, 3.5, 1.7, 8), (0.05, 10, 17, 0.1, 8, 14),
     (3, 3.5, 1.7, 10, 17, 8), (17, 8, 0.05, 10, 0.1, 14))
P = ((1312, 1696, 5569, 124, 8283, 5886), (2329, 4135, 8307, 3736, 1004, 9991),
     (2348, 1451, 3522, 2883, 3047, 6650), (4047, 8828, 8732, 5743, 1091, 381))
#: Steps of full fidelity (ASHA's max_t).
MAX_T = 27


def hartmann6(x: list[float]) -> float:
    """The Hartmann-6 function: minimum -3.32237 at a point of [0, 1]^6."""
    return -sum(ALPHA[i] * math.exp(-sum(A[i][j] * (x[j] - P[i][j] * 1e-4) ** 2
                                         for j in range(6))) for i in range(4))


def configs(seed: int, count: int = 81) -> list[list[float]]:
    """`count` points of [0, 1]^6, the same for every tuner given the same seed."""
    rng = random.Random(seed)
    return [[rng.random() for _ in range(6)] for _ in range(count)]


def loss(x: list[float], step: int) -> float:
    """The loss of config `x` after `step` steps (1-based)."""
    return hartmann6(x) + 1.0 / step


def target(points: list[list[float]]) -> float:
    """What a tuner must reach: the third-best loss of the list at full fidelity."""
    return sorted(loss(x, MAX_T) for x in points)[2]
