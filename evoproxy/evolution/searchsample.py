"""Which search-split items a search scores: the fitness sample, and the validation items that choose its answer.

    fit_ids, val_ids = search_items(bench, samples=100, validation=0.5, seed=0, strategy="stratified")

Both come from the benchmark's search split only (disjoint from every holdout sample).

The validation items are what the search split holds beyond the search sample, up to
``round(validation * samples)``: none when the sample is the whole split (the MQ tables' 50 search
configurations), and the search says so.

* ``random``: a seeded permutation of the search split; the fitness sample is its first ``samples`` items
  (exactly ``bench.sample(samples, seed, "search")``), the validation items the next ones.
* ``stratified``: the search split is sorted by ground truth and cut into ``samples + validation items``
  strata of (almost) equal count; one item is drawn from each (seeded), so the sample's accuracies follow
  the split's quantiles instead of a random draw's (a 100-architecture random NB201 sample held 17
  architectures above 92% where the split holds 31.5%). The strata are ordered by a golden-ratio sequence,
  so that every prefix of the fitness sample (what multi-fidelity judges a child on) and the validation
  items (the last strata of that order) are spread over the whole range of accuracies too.
"""
from __future__ import annotations

import numpy as np

from evoproxy.errors import ConfigError
from mqbench.bench.table import sample_ids

STRATEGIES = ("random", "stratified")
GOLDEN = (5 ** 0.5 - 1) / 2


def validation_count(samples: int, validation: float) -> int:
    """How many validation items a fraction ``validation`` of ``samples`` asks for (0 when it is 0)."""
    return int(round(samples * validation)) if validation > 0 else 0


def spread_order(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` whose every prefix (and suffix) is spread over the range: strata sorted by
    the golden-ratio sequence ``frac(i * g + offset)``, with a seeded offset."""
    offset = np.random.default_rng([int(seed), 11]).random()
    return np.argsort(np.mod(np.arange(n) * GOLDEN + offset, 1.0), kind="stable")


def stratified(pool: list, truth: np.ndarray, n: int, seed: int) -> list:
    """``n`` items of ``pool``, one per ground-truth stratum, in :func:`spread_order`."""
    rank = np.lexsort((np.arange(len(pool)), np.asarray(truth, dtype=float)))  # by accuracy, ties by position
    rng = np.random.default_rng([int(seed), 17])
    picks = [int(s[rng.integers(len(s))]) for s in np.array_split(rank, n)]
    return [pool[picks[i]] for i in spread_order(n, seed)]


def search_items(bench, samples: int, validation: float, seed: int, strategy: str = "random") -> tuple[list, list]:
    """(fitness ids, validation ids) of the search split (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--sampling must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    pool = bench.split()[0]
    if samples > len(pool):
        raise ConfigError(f"asked for {samples} search samples but the search split has only {len(pool)}")
    m = min(validation_count(samples, validation), len(pool) - samples)  # what the split has left
    if strategy == "random":
        ids = sample_ids(pool, samples + m, seed)
    else:
        ids = stratified(pool, bench.ground_truth(pool), samples + m, seed)
    return list(ids[:samples]), list(ids[samples:])
