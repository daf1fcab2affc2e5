"""The search's answer chosen on items the fitness never saw (``--validation``).

A search with ``validation`` > 0 draws ``round(validation * samples)`` more search-split items
(:func:`evoproxy.evolution.searchsample.search_items`). After every generation each new member of the hall of
fame is scored on them, in its search orientation, with the search's fitness function; ``best.json``
is the member with the best validation fitness (ties: the better search fitness). The fitness never
uses these items, so the choice is not fitted to the same items twice: the hall of fame holds the
formulas that fit the search sample best, and the validation items pick the one that generalises.
"""
from __future__ import annotations

import math

import numpy as np


class Validation:
    """The validation items' statistics (stacked once) and truth; ``fitness(individual)`` scores one member."""

    def __init__(self, workspace, recipe, truth, size, fitness: str, seed: int, jobs: int = 1, progress: bool = False):
        """``workspace``: the benchmark's :class:`primitives.workspace.Workspace`; ``recipe``: the validation items'
        :class:`evoproxy.evolution.searchdata.DataRecipe`."""
        from evoproxy.language.vectorised import stack

        self.n = len(recipe.ids)
        stats = workspace.statistics(recipe.ids, recipe.request, jobs=jobs, progress=progress, cache_dir=recipe.cache_dir)
        self.stacked = stack(stats)
        self.truth = np.asarray(truth, dtype=float)
        self.size = None if size is None else np.asarray(size, dtype=float)
        self.name, self.seed = fitness, seed

    def fitness(self, individual) -> float:
        """The search fitness of ``individual``'s scores on the validation items (its orientation kept; -inf
        when the formula fails or is not finite there)."""
        from evoproxy.evolution.fitness import fitness_value
        from evoproxy.language.cost import OPERATOR_ERRORS
        from evoproxy.language.vectorised import tree_values
        from primitives.core import fixed_threads

        try:
            with fixed_threads(1):
                result = tree_values(individual.tree.to_json(), self.stacked, 0, self.n)
        except OPERATOR_ERRORS:
            return -math.inf
        values = individual.orientation * np.asarray(result.values, dtype=float)
        if result.error is not None or len(values) < self.n or not np.all(np.isfinite(values)):
            return -math.inf
        return fitness_value(self.name, values, self.truth, self.size, self.seed)


def choose(hof: list, memo: dict) -> object:
    """The hall-of-fame member with the best validation fitness (``memo``: key -> value); ties keep hall order."""
    return max(enumerate(hof), key=lambda p: (memo.get(p[1].key, -math.inf), -p[0]))[1]
