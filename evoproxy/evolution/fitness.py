"""Fitness of a proxy's score vector against the ground truth (pure functions on arrays).

Every fitness is computed for both orientations of the scores (``s`` and ``-s``) and the better
one is kept, so a formula that ranks in reverse is as good as its negation; the orientation is
stored in the proxy file.

    value, orientation = oriented_fitness("spearman", scores, truth, size)

Registered fitnesses:

* ``spearman`` (default), ``kendall``;
* ``spearman_top20`` / ``spearman_top50``: EMQ's rho_s@k on the search samples;
* ``subset_min``: EZNAS's robust fitness, the minimum Spearman over ``SUBSETS`` fixed random halves
  of the samples (seeded by the run's seed);
* ``partial``: partial Spearman given the size signal (model size on MQ, params on NAS-Bench-201);
* ``spearman_partial``: the mean of ``spearman`` and ``partial``, rewarding a ranking that is right
  overall *and* beyond the size signal (what a bit allocation under a size budget needs).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from evoproxy.errors import ConfigError
from evoproxy.scoring.metrics import kendall, partial_spearman, spearman, spearman_top

SUBSETS = 10
_FITNESS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        _FITNESS[name] = fn
        return fn

    return wrap


def fitness_names() -> list[str]:
    return list(_FITNESS)


def check_fitness(name: str) -> str:
    if name not in _FITNESS:
        raise ConfigError(f"unknown fitness {name!r}; known: {', '.join(_FITNESS)}")
    return name


@register("spearman")
def f_spearman(s, y, size, seed):
    return spearman(s, y)


@register("kendall")
def f_kendall(s, y, size, seed):
    return kendall(s, y)


@register("spearman_top20")
def f_top20(s, y, size, seed):
    return spearman_top(s, y, 20)


@register("spearman_top50")
def f_top50(s, y, size, seed):
    return spearman_top(s, y, 50)


def subsets(n: int, seed: int, count: int = SUBSETS) -> list[np.ndarray]:
    rng = np.random.default_rng([int(seed), n, 7])
    return [np.sort(rng.permutation(n)[: max(2, n // 2)]) for _ in range(count)]


@register("subset_min")
def f_subset_min(s, y, size, seed):
    s, y = np.asarray(s, float), np.asarray(y, float)
    return min(spearman(s[i], y[i]) for i in subsets(len(s), seed))


@register("partial")
def f_partial(s, y, size, seed):
    if size is None:
        raise ConfigError("the 'partial' fitness needs the benchmark's size signal")
    return partial_spearman(s, y, size)


@register("spearman_partial")
def f_spearman_partial(s, y, size, seed):
    return 0.5 * (f_spearman(s, y, size, seed) + f_partial(s, y, size, seed))


def fitness_value(name: str, scores, truth, size=None, seed: int = 0) -> float:
    """The fitness ``name`` of ``scores`` as they are (no re-orientation); NaN or None -> -inf."""
    v = _FITNESS[check_fitness(name)](np.asarray(scores, dtype=float), truth, size, seed)
    return float(v) if v is not None and math.isfinite(v) else -math.inf


def oriented_fitness(name: str, scores, truth, size=None, seed: int = 0) -> tuple[float, int]:
    """(fitness, orientation): the better of the fitness of ``scores`` and of ``-scores``; NaN -> -inf."""
    s = np.asarray(scores, dtype=float)
    best, orient = -math.inf, 1
    for o in (1, -1):
        v = fitness_value(name, o * s, truth, size, seed)
        if v > best:
            best, orient = v, o
    return best, orient
