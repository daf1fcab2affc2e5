"""The search samples' statistics: what the search engine scores candidate trees on.

    recipe = DataRecipe.for_bench(ref, ids, names, hutchinson_probes=0)
    samples = load_samples(recipe, workspace, jobs=2)   # SearchSamples: one NetworkStats per id, stacked once
    samples.stats, samples.stacked
    map_items(fn, chunks, setup=samples.setup())        # fn(samples, chunk): workers load theirs once each

The statistics come from the benchmark's :class:`primitives.workspace.Workspace` (the scoring path's
protocol: network statistics once per network, disk-cached; quantization statistics per bit
configuration). The search holds its :class:`SearchSamples` and passes them to the scorers
(:mod:`evoproxy.evolution.racing`, :mod:`evoproxy.evolution.screening`); a worker process of a parallel search builds its own
once, from the recipe (:meth:`SearchSamples.setup`), reading the disk cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mqbench.parallel import Setup
from primitives.items import StatsRequest


@dataclass(frozen=True)
class DataRecipe:
    """Everything that determines the statistics of a list of benchmark items (hashable, picklable)."""

    ref: object  # mqbench.bench.benchmarks.BenchRef
    ids: tuple
    request: StatsRequest
    cache_dir: str | None = None

    @classmethod
    def for_bench(cls, ref, ids, names, hutchinson_probes: int = 0, noise_std: float = 0.01,
                  batch: int = 64, cache_dir=None, device=None) -> "DataRecipe":
        """``device`` (cpu | cuda | auto; None: cpu): where the networks' statistics are extracted."""
        if cache_dir is None:
            from mqbench.data.dataroot import cache_root

            cache_dir = cache_root() / "primitives"
        return cls(ref, tuple(ids), StatsRequest.of(names, hutchinson_probes, noise_std, batch, device),
                   str(cache_dir))


@dataclass(eq=False)
class SearchSamples:
    """The statistics of a recipe's items (``stats``, one ``NetworkStats`` per id) and their stacked form
    (``stacked``, :func:`evoproxy.language.vectorised.stack`, built on first use)."""

    recipe: DataRecipe
    stats: list
    _stacked: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.stats)

    @property
    def stacked(self):
        if self._stacked is None:
            from evoproxy.language.vectorised import stack

            self._stacked = stack(self.stats)
        return self._stacked

    def setup(self) -> Setup:
        """How a worker process builds its own samples of this recipe (these ones in this process)."""
        return Setup(stacked_samples, (self.recipe,), local=self)


def load_samples(recipe: DataRecipe, workspace=None, jobs: int = 1, progress: bool = False) -> SearchSamples:
    """The :class:`SearchSamples` of ``recipe``, from ``workspace`` (a :class:`primitives.workspace.Workspace` of
    ``recipe.ref``; None: a new one) with extraction in ``jobs`` processes when not cached."""
    if workspace is None:
        from primitives.workspace import Workspace

        workspace = Workspace(recipe.ref)
    stats = workspace.statistics(recipe.ids, recipe.request, jobs=jobs, progress=progress, cache_dir=recipe.cache_dir)
    return SearchSamples(recipe, stats)


def stacked_samples(recipe: DataRecipe) -> SearchSamples:
    """:func:`load_samples` with the stacked form built too: a worker's whole state in its one build, so that
    its memory does not grow in a later task (:func:`mqbench.parallel.process_state`)."""
    samples = load_samples(recipe)
    samples.stacked
    return samples
