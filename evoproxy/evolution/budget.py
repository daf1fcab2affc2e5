"""``--time-budget`` as the main knob: the population sized from a rate measured at steady state, the
generations learned from the run's real pace.

A search given ``time_budget`` but no ``population`` and/or no ``generations`` sizes them before
generation 0 from the rate it measures on this machine:

1. **Measure at steady state**: score ``WARMUP_TREES`` random trees (their own random stream, the same
   for every seed, so that runs of several seeds on one machine get the same sizes) untimed, which starts the ``--jobs`` workers and loads the statistics in them, then
   time ``CALIBRATION_TREES`` more: ``rate`` = trees / seconds. (Timing the first trees measured the
   start-up: a 600 s NB201 run measured 1.8 trees/s and then evolved at about 20.) Every scored tree
   stays in the memo.
2. **Afford**: ``F = rate * (time_budget - seconds searched so far)`` trees. The budget counts the search
   itself: the calibration trees, the generations and the checkpoints. Loading the statistics (in this process
   and, in the warm-up, in the workers) is preparation: it comes before the budget's clock starts, and
   ``run.json`` records it as ``preparation_seconds`` (a first run extracts the statistics; later runs read
   them from the disk cache, and the budget buys the same search either way).
3. **Population** (when not given): a square schedule, total ``sqrt(F / TREES_PER_SLOT)`` (or
   ``F / (TREES_PER_SLOT * (generations + 1))`` when the generations are given), split over the
   islands and rounded *down* to the ladder ``POPULATIONS`` (steps of 1.5x), so that the small
   differences between runs of one command on one machine give the same population. A generation with
   multi-fidelity scores ``TREES_PER_SLOT`` = 4.5 trees per population slot (the committed
   multi-fidelity runs, ``results/multi_fidelity/runs``: 4.1-4.9 in evolved generations).
4. **Re-sized once at its real pace**: random calibration trees are rejected more often (hence are
   cheaper) than children, so after generation ``RESIZE_AFTER`` the population is sized again, by the same
   rule, from the trees per second of the evolved generations so far and the seconds left (``sizing.resized``
   in ``config.json``); from the next generation on, the population has that size.
5. **Generations** (when not given): open. The run goes on until the next generation would pass the
   budget, predicted from the mean of the last ``PACE_WINDOW`` generations (the run learns its real
   pace, which differs from the calibration's: random trees are rejected more often than children),
   or until ``--patience`` generations without a better fitness: whichever comes first, and the log
   and ``stopped`` say which.

Such a run is recorded as machine-dependent in ``config.json`` (``sizing``) and is repeatable through
``--resume`` or by passing the recorded population with ``--generations`` set to the generations it ran.
A run with explicit sizes measures nothing; only where its budget stops it early does it depend on the machine.
"""
from __future__ import annotations

import bisect
import math

WARMUP_TREES = 16
CALIBRATION_TREES = 64
TREES_PER_SLOT = 4.5
POPULATIONS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MIN_POPULATION, MAX_POPULATION = POPULATIONS[0], POPULATIONS[-1]
MAX_GENERATIONS = 10_000  # "open": the budget or --patience ends the run
PACE_WINDOW = 3
RESIZE_AFTER = 2


def on_ladder(total: float, lo: int) -> int:
    """The largest ladder population <= ``total`` (at least ``lo`` and ``MIN_POPULATION``)."""
    i = bisect.bisect_right(POPULATIONS, total) - 1
    return max(POPULATIONS[max(i, 0)], lo)


def choose_sizes(rate: float, seconds: float, islands: int, population: int | None, generations: int | None,
                 smallest: int = MIN_POPULATION) -> tuple[int, int]:
    """(population per island, generations) for ``seconds`` at ``rate`` trees/s (see the module docstring)."""
    afford = max(rate, 0.0) * max(seconds, 0.0)
    if population is None:
        if generations is None:
            total = math.sqrt(afford / TREES_PER_SLOT)
        else:
            total = afford / (TREES_PER_SLOT * (generations + 1))
        population = on_ladder(total / islands, smallest)
    return population, MAX_GENERATIONS if generations is None else generations


def smallest_population(c) -> int:
    """The least population per island that ``c``'s elites (and, with islands, migrants) leave room in."""
    return max(c.elites, c.migrants if c.islands > 1 else 0) + 1


def next_generation_seconds(log: list) -> float:
    """The predicted time of the next generation: the mean of the last ``PACE_WINDOW`` evolved ones (generation
    0 alone, while it is the only one)."""
    seconds = [float(row["seconds"]) for row in log]
    recent = seconds[1:][-PACE_WINDOW:] or seconds[:1]
    return sum(recent) / len(recent) if recent else 0.0


def stalled_for(log: list) -> int:
    """Generations since the best fitness (``best_fitness`` of ``log.csv``'s rows) last improved."""
    best, since = -math.inf, 0
    for row in log:
        v = float(row["best_fitness"])
        since = 0 if v > best + 1e-12 else since + 1
        best = max(best, v)
    return since


def stop_reason(config, log: list, elapsed: float) -> str | None:
    """Why the run stops after the last generation of ``log`` (None: it goes on)."""
    g = int(log[-1]["generation"])
    if g >= config.generations:
        return None
    if config.patience and stalled_for(log) >= config.patience:
        return f"converged: best fitness unchanged for {config.patience} generations (after generation {g})"
    if config.time_budget is not None and elapsed + next_generation_seconds(log) > config.time_budget:
        return f"time budget {config.time_budget:g} s reached after generation {g}"
    return None


def sizing_record(rate: float, trees: int, seconds: float, left: float, population: int, generations: int,
                  given: dict) -> dict:
    """What ``config.json`` records about the sizing."""
    return {"sized_by": "time_budget", "machine_dependent": True,
            "wall_clock": "time_budget is the only wall-clock setting; screening uses the deterministic --screen-cost",
            "rule": "evoproxy.budget: rate from calibration trees after a warm-up; F = rate * seconds left; "
                    f"population sqrt(F / {TREES_PER_SLOT:g}) on the ladder {list(POPULATIONS)}; generations open: "
                    "until the next would pass the budget (the pace of the last generations) or --patience",
            "warmup_trees": WARMUP_TREES, "calibration_trees": trees, "calibration_seconds": round(seconds, 3),
            "trees_per_second": round(rate, 3), "seconds_left": round(left, 3),
            "population": population, "generations": generations,
            "given": given}


def size_for_budget(search) -> None:
    """Size ``search.config``'s unset population/generations (a fresh :class:`evoproxy.evolution.engine.Search` whose
    statistics are loaded) and set ``search.sizing`` (its ``warmup_seconds`` are preparation, its
    ``calibration_seconds`` part of the search: step 2 of the module docstring)."""
    import dataclasses
    import random
    import time

    from primitives.core import derive_seed

    c = search.config
    random.seed(derive_seed("search-calibration", 0))  # the same trees for every seed: the sizes follow the machine
    warmup = [search.space.random_tree() for _ in range(WARMUP_TREES)]
    t_warm = time.perf_counter()
    search._score(warmup, search._new_counts())  # starts the workers, loads the statistics in them (untimed)
    t0 = time.perf_counter()
    trees = [search.space.random_tree() for _ in range(CALIBRATION_TREES)]
    search._score(trees, search._new_counts())  # the memo keeps them
    seconds = max(time.perf_counter() - t0, 1e-6)
    rate = CALIBRATION_TREES / seconds
    left = c.time_budget - seconds
    given = {"population": c.population, "generations": c.generations}
    population, generations = choose_sizes(rate, left, c.islands, c.population, c.generations,
                                           smallest=smallest_population(c))
    search.config = dataclasses.replace(c, population=population, generations=generations)
    search.sizing = sizing_record(rate, CALIBRATION_TREES, seconds, left, population, generations, given)
    search.sizing["warmup_seconds"] = round(t0 - t_warm, 3)


def resize_for_budget(search) -> bool:
    """After generation ``RESIZE_AFTER`` of a run whose population the budget sized: size it again from the real
    pace (step 4 of the module docstring); True when the population changed."""
    import dataclasses

    c, sizing = search.config, search.sizing
    if not sizing or sizing.get("given", {}).get("population") is not None or "resized" in sizing \
            or search.generation != RESIZE_AFTER:
        return False
    evolved = search.log[1:]
    seconds = sum(float(r["seconds"]) for r in evolved)
    rate = sum(int(r["evaluated"]) for r in evolved) / max(seconds, 1e-6)
    left = c.time_budget - search.elapsed
    given = sizing.get("given", {}).get("generations")
    remaining = None if given is None else max(given - search.generation - 1, 0)
    population, _ = choose_sizes(rate, left, c.islands, None, remaining, smallest=smallest_population(c))
    sizing["resized"] = {"after_generation": RESIZE_AFTER, "trees_per_second": round(rate, 3),
                         "seconds_left": round(left, 3), "population": population, "was": c.population}
    changed = population != c.population
    search.config = dataclasses.replace(c, population=population)
    search._write_config()
    return changed
