"""The search samples' statistics, memoised per process (the search and its screening workers).

    recipe = DataRecipe.for_bench(ref, ids, names, hutchinson_probes=0)
    stats = load_stats(recipe, jobs=2)          # one primitives.NetworkStats per id, disk-cached

The statistics come from :func:`primitives.items.items_statistics` (the scoring path's protocol:
network statistics once per network, quantization statistics per bit configuration). Workers of a
parallel search call :func:`load_stats` with the same recipe; it is memoised per process and reads
the disk cache, so the statistics are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass

from mqbench.parallel import on_env_change
from primitives.items import StatsRequest, items_statistics

_LOADED: dict = {}
on_env_change(_LOADED.clear)


@dataclass(frozen=True)
class DataRecipe:
    """Everything that determines the statistics of a list of benchmark items (hashable, picklable)."""

    ref: object  # mqbench.benchmarks.BenchRef
    ids: tuple
    request: StatsRequest
    cache_dir: str | None = None

    @classmethod
    def for_bench(cls, ref, ids, names, hutchinson_probes: int = 0, noise_std: float = 0.01,
                  batch: int = 64, cache_dir=None, device=None) -> "DataRecipe":
        """``device`` (cpu | cuda | auto; None: cpu): where the networks' statistics are extracted."""
        if cache_dir is None:
            from mqbench.dataroot import cache_root

            cache_dir = cache_root() / "primitives"
        return cls(ref, tuple(ids), StatsRequest.of(names, hutchinson_probes, noise_std, batch, device),
                   str(cache_dir))


def load_stats(recipe: DataRecipe, jobs: int = 1, progress: bool = True) -> list:
    """One ``NetworkStats`` per id of the recipe (memoised per process: one recipe at a time)."""
    if recipe not in _LOADED:
        stats = items_statistics(recipe.ref, recipe.ids, recipe.request, jobs=jobs, progress=progress,
                                 cache_dir=recipe.cache_dir)
        _LOADED.clear()  # keeps memory bounded
        _LOADED[recipe] = stats
    return _LOADED[recipe]
