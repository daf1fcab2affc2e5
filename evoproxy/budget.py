"""``--time-budget`` as the main knob: population and generation count sized from a measured scoring rate.

A search given ``time_budget`` but no ``population`` and/or no ``generations`` sizes them once, before
generation 0, from the rate it measures on this machine:

1. **Measure**: score ``CALIBRATION_TREES`` random trees (their own random stream, derived from the seed)
   through the search's scoring path (screening, ``--jobs`` workers, the memo, which keeps them):
   ``rate`` = trees / seconds.
2. **Afford**: ``F = rate * (time_budget - seconds spent so far)`` trees.
3. **Size**, counting ``TREES_PER_SLOT`` = 2 scored trees per population slot and generation (rejected
   and duplicate candidates make a slot cost more than one tree: the committed NB201 and MQ runs scored
   1.8-2.2 per slot and generation over the whole run, 1.6-1.9 in evolved generations, 3.4-11.2 in
   generation 0). Random calibration trees are rejected more often, hence cheaper, than evolved ones,
   so the rate is optimistic and the stop rule below usually ends the run:
   neither given: a square schedule, total population P = sqrt(F / 2) split over the islands,
   generations = F / (2 P) - 1; population given: generations = F / (2 P) - 1; generations given:
   P = F / (2 (generations + 1)). Per island the population is kept in [``MIN_POPULATION``,
   ``MAX_POPULATION``] (and above ``elites`` and ``migrants``), generations in [1, ``MAX_GENERATIONS``].

The budget's stop rule still applies (stop after the generation whose successor would pass the budget),
so a run whose later generations are slower than measured ends in time, and one that is faster ends at
the sized generation count. The sizes depend on the machine's speed: such a run is recorded as
machine-dependent in its ``config.json`` (``sizing``) and is repeatable only through ``--resume`` or by
passing the recorded sizes explicitly. A run with explicit sizes does not measure anything; only where
its budget stops it early does it depend on the machine.
"""
from __future__ import annotations

import math

CALIBRATION_TREES = 64
TREES_PER_SLOT = 2.0
MIN_POPULATION, MAX_POPULATION = 8, 512
MAX_GENERATIONS = 10_000


def _clamp(v: float, lo: int, hi: int) -> int:
    return int(min(max(round(v), lo), hi))


def choose_sizes(rate: float, seconds: float, islands: int, population: int | None, generations: int | None,
                 smallest: int = MIN_POPULATION) -> tuple[int, int]:
    """(population per island, generations) for ``seconds`` at ``rate`` trees/s (see the module docstring)."""
    afford = max(rate, 0.0) * max(seconds, 0.0)
    lo = max(MIN_POPULATION, smallest)
    if population is None:
        if generations is None:
            total = math.sqrt(afford / TREES_PER_SLOT)
        else:
            total = afford / (TREES_PER_SLOT * (generations + 1))
        population = _clamp(total / islands, lo, max(MAX_POPULATION, lo))
    if generations is None:
        generations = _clamp(math.floor(afford / (TREES_PER_SLOT * population * islands)) - 1, 1, MAX_GENERATIONS)
    return population, generations


def sizing_record(rate: float, trees: int, seconds: float, left: float, population: int, generations: int,
                  given: dict) -> dict:
    """What ``config.json`` records about the sizing."""
    return {"sized_by": "time_budget", "machine_dependent": True,
            "wall_clock": "time_budget is the only wall-clock setting; screening uses the deterministic --screen-cost",
            "rule": "evoproxy.budget: rate from calibration trees; F = rate * seconds left; "
                    "2 trees per population slot and generation",
            "calibration_trees": trees, "calibration_seconds": round(seconds, 3),
            "trees_per_second": round(rate, 3), "seconds_left": round(left, 3),
            "population": population, "generations": generations,
            "given": given}


def size_for_budget(search, t_prep: float) -> None:
    """Size ``search.config``'s unset population/generations (a fresh :class:`evoproxy.evolution.Search` whose
    statistics are loaded; ``t_prep``: when it started) and set ``search.sizing``."""
    import dataclasses
    import random
    import time

    from primitives.core import derive_seed

    c = search.config
    random.seed(derive_seed("search-calibration", int(c.seed)))
    t0 = time.perf_counter()
    trees = [search.space.random_tree() for _ in range(CALIBRATION_TREES)]
    search._score(trees, search._new_counts())  # the memo keeps them
    seconds = max(time.perf_counter() - t0, 1e-6)
    rate = CALIBRATION_TREES / seconds
    left = c.time_budget - (time.perf_counter() - t_prep)
    given = {"population": c.population, "generations": c.generations}
    population, generations = choose_sizes(rate, left, c.islands, c.population, c.generations,
                                           smallest=max(c.elites, c.migrants if c.islands > 1 else 0) + 1)
    search.config = dataclasses.replace(c, population=population, generations=generations)
    search.sizing = sizing_record(rate, CALIBRATION_TREES, seconds, left, population, generations, given)
