"""The Python face of evoproxy: search, evaluate, score, export and allocate from a notebook.

    import evoproxy
    result = evoproxy.search("nb201-cifar10", samples=100, time_budget=600, seed=0)
    result.best, result.hall_of_fame, result.log          # Proxy objects, per-generation rows
    result.export("my_proxy.py"); result.plot("progress.png")     # or evoproxy.export_proxy(proxy, path)
    evaluation = evoproxy.evaluate("nb201-cifar10", ["synflow", result.best, my_callable], samples=200, seed=1)
    evaluation.to_markdown(); evaluation.plot("scatter.png")     # a report per proxy
    result.best.score(model, inputs, targets)               # any network you hold
    evoproxy.allocate("hawq_v2", "resnet20", "uniform-3")   # bits under a size budget

Every function is a thin layer over the library modules the CLI uses too (:mod:`evoproxy.evolution`,
:mod:`evoproxy.evaluation`, :mod:`evoproxy.allocation`, :mod:`evoproxy.export`); settings are the
fields of :class:`~evoproxy.searchconfig.SearchConfig`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from evoproxy.allocation import allocate  # noqa: F401  (part of the API)
from evoproxy.results import Evaluation, SearchResult
from evoproxy.searchconfig import SearchConfig

def search(bench: str, *, samples: int = 100, time_budget: float | None = None, seed: int = 0,
           out: str | Path | None = None, resume: bool = False, **settings) -> SearchResult:
    """Evolve a proxy on ``bench``'s search split and return the run as a :class:`SearchResult`.

    ``out``: the run folder (default: a new temporary folder, kept so the result can be exported and
    plotted); ``time_budget`` in seconds (an unset ``population``/``generations`` is sized to fit it from a
    measured scoring rate, :mod:`evoproxy.budget`);
    ``settings``: any other :class:`SearchConfig` field (population, generations, fitness, structure, jobs, ...).
    """
    from evoproxy.evolution import run_search

    if out is None:
        out = tempfile.mkdtemp(prefix=f"evoproxy-{bench.replace('/', '_')}-seed{seed}-")
    config = SearchConfig(bench=bench, out=str(out), samples=samples, seed=seed, time_budget=time_budget, **settings)
    return run_search(config, resume=resume)


def evaluate(bench: str, proxies, *, samples: int | None = 100, seed: int = 0, split: str = "holdout",
             **options) -> Evaluation:
    """Score ``proxies`` (registered names, proxy files, ``Proxy`` objects, callables
    ``f(model, inputs, targets, bit_config)``) on one sample of ``bench`` and correlate with its ground truth.

    ``options``: ``table``, ``gt_column_name``, ``jobs``, ``batch``, ``progress``, ``checkpoint``
    (see :func:`evoproxy.evaluation.proxy_reports`)."""
    from evoproxy.evaluation import proxy_reports

    items: dict = {}
    reports = proxy_reports(bench, proxies, samples, seed, split, items=items, **options)
    return Evaluation(reports, items)


def load_proxy(path: str | Path):
    """A proxy file (``best.json``) as a :class:`~evoproxy.tree.Proxy`."""
    from evoproxy.tree import load_proxy as load

    return load(path)


def export_proxy(proxy, path: str | Path) -> Path:
    """Write ``proxy`` (a ``Proxy`` or a proxy file) as a standalone torch-only module with ``score(...)``."""
    from evoproxy.export import export_source

    proxy = load_proxy(proxy) if isinstance(proxy, (str, Path)) else proxy
    path = Path(path)
    path.write_text(export_source(proxy, path.stem if path.stem.isidentifier() else "proxy"))
    return path
