"""Scoring candidate trees on cached statistics: compatibility screening and full score vectors.

A candidate is scored on the search samples' statistics (:class:`evoproxy.evolution.searchdata.SearchSamples`, which the
search holds and passes here) in two stages:

1. **screening**: the first ``screen_samples`` samples. Rejected, with the reason
   recorded, on: ``exception`` (an operator raised something unexpected), ``shape`` (incompatible
   shapes, an op on a tensor it cannot take, a missing statistic), ``size`` (a Gram-type op on a
   too-large tensor), ``nan`` (a NaN or infinite score), ``constant`` (the same score on every
   screening sample), ``cost`` (evaluating the screening samples processes more than ``cost_bound``
   tensor elements, see below).
2. **full**: the remaining samples; a NaN/inf or a constant vector there is
   rejected the same way.

**The cost bound** replaces the former wall-clock time-out, the one screening rule that depended on
the machine's speed. The cost of a tree on a sample range is a count that depends only on the tree
and the shapes of the samples' statistics (the tensor elements its operators process; the language counts it:
:func:`evoproxy.language.cost.tree_cost`, which defines the count), asked for before anything is evaluated: a tree
over the bound is rejected as ``cost`` even when it would also fail another rule. The search's log counts them in
its ``rejected_cost`` column (named ``rejected_timeout`` in logs written before; :func:`evoproxy.evolution.runfiles.read_log`
reads those as ``rejected_cost``). ``time_bound`` (seconds, a ``timeout`` rejection) remains for tools such as
:mod:`experiments.tools.fuzz`; the search does not use it.

Work is split into contiguous chunks of candidates and run in joblib (loky) processes when
``jobs`` > 1; every score is computed on one torch thread, so the vectors do not depend on
``jobs``. Each worker process builds its own search samples once (:meth:`SearchSamples.setup`,
from the disk cache) and the chunks receive them.

There is one scorer: the stacked evaluator (:mod:`evoproxy.language.vectorised`), all samples of the range
at once on the samples' statistics stacked per shape group (``SearchSamples.stacked``, built once per
process; :func:`score_range` stacks a plain list of statistics itself), with the batched operators of :mod:`evoproxy.language.opkernels`, the same functions that score a single
network (:meth:`evoproxy.language.tree.Proxy.value`, a stack of one) and that exported proxies copy.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from evoproxy.language.cost import OPERATOR_ERRORS, tree_cost
from evoproxy.language.ops import OpError
from evoproxy.language.tree import parse_tree

REASONS = ("exception", "shape", "size", "nan", "constant", "cost", "timeout")
# the rejection columns of a search's log.csv (rejected_<reason>); a "timeout" remembered by a checkpoint written
# before the cost bound existed is counted as "cost", in the column that counted it then
LOG_REASONS = ("exception", "shape", "size", "nan", "constant", "cost")
LOG_NAME = {"timeout": "cost"}


@dataclass
class Scored:
    """Scores of one candidate on a range of samples, or why it was rejected."""

    scores: list[float] | None
    reason: str | None = None
    message: str = ""
    seconds: float = 0.0


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0])) or float(np.ptp(values)) <= 1e-12 * max(1.0, float(np.max(np.abs(values))))


def _rejected(exc: Exception, t0: float) -> Scored:
    if isinstance(exc, OpError):
        reason = exc.reason if exc.reason in ("size", "cost") else "shape"
        return Scored(None, reason, str(exc)[:200], time.perf_counter() - t0)
    text = " ".join(str(exc).split())[:200]
    # torch reports incompatible shapes as RuntimeError
    reason = "shape" if ("size" in text and "match" in text) or "shape" in text else "exception"
    return Scored(None, reason, f"{type(exc).__name__}: {text}", time.perf_counter() - t0)


def score_range(tree, stats, start: int, stop: int, time_bound: float | None = None,
                check_constant: bool = True, cost_bound: float | None = None, stacked=None) -> Scored:
    """Scores of ``tree`` on ``stats[start:stop]`` (see the module docstring for the rejection rules).
    ``stacked``: ``stats`` stacked (:func:`evoproxy.language.vectorised.stack`; a caller scoring many trees passes it,
    e.g. ``SearchSamples.stacked``); None: stacked here."""
    from evoproxy.language.vectorised import stack, tree_values

    t0 = time.perf_counter()
    out = []
    try:
        stop = min(stop, len(stats))
        if cost_bound is not None and tree_cost(tree.to_json(), stats, start, stop) > cost_bound:
            raise OpError("cost", f"over the cost bound of {cost_bound:.4g} tensor elements")
        result = tree_values(tree.to_json(), stack(stats) if stacked is None else stacked, start, stop)
        for v in result.values.tolist():
            if not math.isfinite(v):
                return Scored(None, "nan", f"score {v} on sample {start + len(out)}", time.perf_counter() - t0)
            out.append(v)
        if result.error is not None:
            raise result.error[1]
        if time_bound is not None and time.perf_counter() - t0 > time_bound:
            return Scored(None, "timeout", f"over {time_bound:g} s", time.perf_counter() - t0)
    except OPERATOR_ERRORS as exc:
        return _rejected(exc, t0)
    values = np.asarray(out, dtype=float)
    if check_constant and len(values) > 1 and _is_constant(values):
        return Scored(None, "constant", f"every score is {values[0]:.6g}", time.perf_counter() - t0)
    return Scored(out, None, "", time.perf_counter() - t0)


def _chunk(samples, trees_json, start, stop, time_bound, check_constant, cost_bound=None):
    from primitives.core import fixed_threads

    stop = len(samples.stats) if stop is None else stop
    with fixed_threads(1):
        return [score_range(parse_tree(t), samples.stats, start, stop, time_bound, check_constant, cost_bound,
                            samples.stacked)
                for t in trees_json]


def score_many(samples, trees, start: int, stop: int | None, jobs: int = 1, time_bound: float | None = None,
               check_constant: bool = True, cost_bound: float | None = None) -> list[Scored]:
    """``score_range`` for every tree on ``samples`` (:class:`evoproxy.evolution.searchdata.SearchSamples`), in order
    (chunks in worker processes when ``jobs`` > 1, each process with its own samples)."""
    trees_json = [t.to_json() for t in trees]
    if not trees_json:
        return []
    if jobs <= 1 or len(trees_json) < 2:
        return _chunk(samples, trees_json, start, stop, time_bound, check_constant, cost_bound)
    from mqbench.parallel import map_items

    n_chunks = min(len(trees_json), jobs * 4)
    bounds = np.linspace(0, len(trees_json), n_chunks + 1).astype(int)
    chunks = [trees_json[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    parts = map_items(_chunk, chunks, (), (start, stop, time_bound, check_constant, cost_bound),
                      jobs=jobs, progress=False, setup=samples.setup())
    return [s for part in parts for s in part]
