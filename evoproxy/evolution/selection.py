"""Diversity-prompting parent selection and the population's diversity measures.

With diversity on, the population never holds two candidates with the same canonical formula
(the search refuses duplicates) and, with ``distinct_rankings``, never two that rank the search samples
identically (:func:`ranking_key`: a population of monotone transforms of one formula has no novelty left
to reward), and parents are drawn by tournament on

    fitness + novelty_weight * (1 - |Spearman(scores, elite scores)|)

where the elite is the current best candidate: a candidate that ranks the samples like the elite
brings little, one that ranks them differently with similar fitness is preferred. With diversity
off, the tournament uses the fitness alone and duplicates are allowed (the ablation's baseline).
"""
from __future__ import annotations

import random

import numpy as np
from scipy.stats import rankdata


def rank_rows(vectors) -> np.ndarray:
    """Each score vector replaced by its ranks, standardised (rows of a Spearman correlation)."""
    r = np.vstack([rankdata(v) for v in vectors]).astype(float)
    r -= r.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(r, axis=1, keepdims=True)
    return r / np.where(norm == 0, 1.0, norm)


def novelty(vectors, elite) -> np.ndarray:
    """1 - |Spearman(v, elite)| for each score vector v."""
    rows = rank_rows(list(vectors) + [elite])
    return 1.0 - np.abs(rows[:-1] @ rows[-1])


def ranking_key(scores, orientation: int = 1) -> tuple:
    """How a candidate ranks the search samples (integer ranks, ties shared): equal for formulas that are monotone
    transforms of one another, which a canonical form cannot see."""
    return tuple(int(r) for r in rankdata(orientation * np.asarray(scores, dtype=float), method="min"))


def ranking_taken(ind, taken: set) -> bool:
    """Whether ``taken`` already holds ``ind``'s ranking (:func:`ranking_key`); if not, it is added."""
    r = ("ranking", ranking_key(ind.scores, ind.orientation))
    if r in taken:
        return True
    taken.add(r)
    return False


def mean_pairwise_distance(vectors) -> float:
    """Mean over pairs of 1 - |Spearman| between score vectors (0: all rank alike)."""
    if len(vectors) < 2:
        return 0.0
    rows = rank_rows(vectors)
    corr = np.abs(rows @ rows.T)
    iu = np.triu_indices(len(vectors), k=1)
    return float(np.mean(1.0 - corr[iu]))


def select_parents(population: list, count: int, tournament: int, diversity: bool,
                   novelty_weight: float) -> list:
    """``count`` parents (tournament selection); ``population`` items have ``fitness`` and ``scores``."""
    fitness = np.array([ind.fitness for ind in population], dtype=float)
    key = fitness.copy()
    if diversity and novelty_weight > 0 and len(population) > 1:
        elite = population[int(np.argmax(fitness))]
        key = fitness + novelty_weight * novelty([ind.scores for ind in population], elite.scores)
    out = []
    for _ in range(count):
        contenders = random.sample(range(len(population)), min(tournament, len(population)))
        out.append(population[max(contenders, key=lambda i: (key[i], -i))])
    return out
