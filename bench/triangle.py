"""The population-based training problem of `pbt.py`, standard library only (Ray's
environment imports it too): Ray Tune's `pbt_function.py` toy, whose best learning rate
follows a triangle wave of the accuracy, with its noise drawn from a generator seeded by
the config's seed and the step, so every tuner faces the same problem. Each step also
burns a fixed CPU loop (not a sleep)."""

from __future__ import annotations

import random

MIDPOINT = 100  # the best lr rises up to this accuracy, then falls
TARGET = 2 * MIDPOINT  # what a tuner must reach
MAX_STEPS = 1000
LRS = [0.0001, 0.0003, 0.02, 0.015]  # the starting population: all far from the best


def step(accuracy: float, lr: float, seed: int, number: int) -> float:
    """The accuracy after one more step (number `number`) at learning rate `lr`."""
    rng = random.Random(f"{seed}:{number}:{lr}")
    best = 0.01 * accuracy / MIDPOINT if accuracy < MIDPOINT else \
        0.01 - 0.01 * (accuracy - MIDPOINT) / MIDPOINT
    best = min(0.01, max(0.001, best))
    error = max(lr, best) / min(lr, best)
    if error < 3:
        accuracy += (1.0 / error) * rng.random()
    elif lr > best:
        accuracy -= (error - 3) * rng.random()
    accuracy += 2 * rng.gauss(0, 1)
    return max(0.0, accuracy)
