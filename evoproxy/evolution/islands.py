"""Island evolution: several populations evolved side by side, ring migration, restarts of stagnant islands.

With ``islands`` = 1 (the default) the search is the single population it always was, draw for draw.
With more islands (each of ``population`` candidates, its own elites and tournaments):

* **Randomness** per (seed, generation, island): every island draws from its own Python ``random``
  stream, seeded with :func:`island_seed` at the start of each generation (island 0's seed is the
  single population's), so the draws do not depend on ``--jobs``, on the scoring order, or on a
  resume (the checkpoint holds every island).
* **Batched scoring**: each round of candidates of a generation is drawn island by island
  (:func:`interleave`), then the candidates of all islands are scored in one call, so ``--jobs``
  workers share the islands' work; the outcomes go back to each island in order. The memo of scored
  formulas is shared: an island never re-scores a formula another island already scored.
* **Migration** every ``migration_interval`` generations (generation g > 0 with g % interval == 0,
  after the generation's populations are formed): the ``migrants`` best of every island (a snapshot
  taken before any island changes) are copied to the next island of the ring (i -> i+1 mod n),
  replacing its worst members; with diversity on, a migrant whose formula the target already holds
  stays home.
* **Restart**: an island whose best fitness has not improved (migrants included) for
  ``restart_after`` generations (0: never) draws a fresh random population at the next generation,
  like generation 0, keeping nothing; the global hall of fame keeps what it found.

``log.csv`` keeps its columns (best, median, unique formulas and pairwise distance over the union of
the islands); with more than one island, ``islands.csv`` has one row per generation and island.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from evoproxy.language.tree import ProxyTree, canonical, parse_tree, render

ISLAND_COLUMNS = ("generation", "island", "best_fitness", "median_fitness", "unique_formulas",
                  "mean_pairwise_distance", "restarted", "migrants_in", "generations_without_improvement",
                  "best_formula")


@dataclass
class Individual:
    tree: ProxyTree
    key: str
    fitness: float
    orientation: int
    scores: list
    generation: int

    def to_json(self) -> dict:
        return {"tree": self.tree.to_json(), "fitness": self.fitness, "orientation": self.orientation,
                "scores": self.scores, "generation": self.generation}

    @classmethod
    def from_json(cls, d: dict) -> "Individual":
        tree = parse_tree(d["tree"])
        return cls(tree, canonical(tree), float(d["fitness"]), int(d["orientation"]), list(d["scores"]),
                   int(d["generation"]))


@dataclass
class Island:
    """One population and its progress: ``best`` fitness so far, the generation that ``improved`` it last."""

    population: list = field(default_factory=list)
    best: float = float("-inf")
    improved: int = 0
    restarts: int = 0

    def to_json(self) -> dict:
        return {"population": [i.to_json() for i in self.population], "best": self.best, "improved": self.improved,
                "restarts": self.restarts}

    @classmethod
    def from_json(cls, d: dict) -> "Island":
        return cls([Individual.from_json(i) for i in d["population"]], float(d["best"]), int(d["improved"]),
                   int(d["restarts"]))

    def stagnant(self, generation: int, restart_after: int) -> bool:
        """Whether the island restarts at ``generation`` (its best unchanged for ``restart_after`` generations)."""
        return restart_after > 0 and generation - 1 - self.improved >= restart_after

    def record(self, generation: int, restarted: bool) -> None:
        best = max(i.fitness for i in self.population)
        if restarted:
            self.restarts += 1
            self.best, self.improved = best, generation
        elif best > self.best:
            self.best, self.improved = best, generation


def island_seed(seed: int, generation: int, island: int) -> int:
    """The seed of ``island``'s random stream in ``generation`` (island 0: the single population's seed)."""
    from primitives.core import derive_seed

    if island == 0:
        return derive_seed("search", int(seed), int(generation))
    return derive_seed("search", int(seed), int(generation), "island", int(island))


def interleave(procs: list, seeds: list, score) -> list:
    """Run the islands' generation procedures together; returns what each returns.

    A procedure is a generator that yields ``(trees, threshold)`` (a list of trees and the fitness they must be
    able to reach, or None) and receives their outcomes, until it returns its population. Each runs on its own
    ``random`` stream (seeded from ``seeds``); the trees every procedure yields in one round are scored by one
    ``score(trees, thresholds)`` call (one threshold per tree), in island order."""
    states, pending, results = {}, {}, [None] * len(procs)

    def advance(i, value):
        random.setstate(states[i])
        try:
            pending[i] = procs[i].send(value)
        except StopIteration as stop:
            pending.pop(i, None)
            results[i] = stop.value
        states[i] = random.getstate()

    for i, s in enumerate(seeds):
        random.seed(s)
        states[i] = random.getstate()
        advance(i, None)
    while pending:
        order = sorted(pending)
        batch = [t for i in order for t in pending[i][0]]
        thresholds = [pending[i][1] for i in order for _ in pending[i][0]]
        outcomes = score(batch, thresholds)
        at = 0
        for i in order:
            n = len(pending[i][0])
            advance(i, outcomes[at:at + n])
            at += n
    return results


def migrate(populations: list, migrants: int, diversity: bool) -> list[int]:
    """Ring migration in place (see the module docstring); returns how many arrived on each island."""
    n = len(populations)
    movers = [sorted(p, key=lambda i: (-i.fitness, i.generation, i.key))[:migrants] for p in populations]
    arrived = [0] * n
    for i in range(n):
        j = (i + 1) % n
        target = populations[j]
        held = {x.key for x in target}
        incoming = [m for m in movers[i] if not (diversity and m.key in held)]
        worst_first = sorted(range(len(target)), key=lambda s: (target[s].fitness, -target[s].generation, target[s].key))
        for slot, m in zip(worst_first, incoming):
            target[slot] = m
        arrived[j] = min(len(incoming), len(target))
    return arrived


def island_row(generation: int, index: int, island: Island, restarted: bool, arrived: int) -> dict:
    from evoproxy.evolution.selection import mean_pairwise_distance

    fit = np.array([i.fitness for i in island.population])
    best = max(island.population, key=lambda i: i.fitness)
    return {"generation": generation, "island": index, "best_fitness": round(float(fit.max()), 6),
            "median_fitness": round(float(np.median(fit)), 6),
            "unique_formulas": len({i.key for i in island.population}),
            "mean_pairwise_distance": round(mean_pairwise_distance([i.scores for i in island.population]), 6),
            "restarted": int(restarted), "migrants_in": arrived,
            "generations_without_improvement": generation - island.improved, "best_formula": render(best.tree)}


def write_island_log(path, rows: list) -> None:
    """``islands.csv``: one row per generation and island (written atomically)."""
    import csv
    import io

    from mqbench.fileio import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ISLAND_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
