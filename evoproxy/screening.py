"""Scoring candidate trees on cached primitives: compatibility screening and full score vectors.

A candidate is scored on the search samples' primitives (``searchdata.load_stats``) in two stages:

1. **screening**: the first ``screen_samples`` samples. Rejected, with the reason
   recorded, on: ``exception`` (an operator raised something unexpected), ``shape`` (incompatible
   shapes, an op on a tensor it cannot take, a missing primitive), ``size`` (a Gram-type op on a
   too-large tensor), ``nan`` (a NaN or infinite score), ``constant`` (the same score on every
   screening sample), ``timeout`` (more than ``time_bound`` seconds for the screening samples; the
   only rule that depends on the machine's speed).
2. **full**: the remaining samples; a NaN/inf or a constant vector there is
   rejected the same way.

Work is split into contiguous chunks of candidates and run in joblib (loky) processes when
``jobs`` > 1; every score is computed on one torch thread, so the vectors do not depend on
``jobs``. Workers load the primitives from the disk cache once per process.

Two evaluators give the same scores (within float rounding) and the same rejection reasons:
the vectorised one (:mod:`evoproxy.vectorised`, the default: all samples of the range at once on the
samples' statistics stacked per shape group, built once per process and statistics list) and the
per-sample one (:func:`evoproxy.tree.evaluate_tree`, one sample after the other, the evaluator that
exported proxies copy). ``VECTORISED`` is the switch; ``score_range``/``score_many`` take
``vectorised=`` to override it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from evoproxy.ops import OpError
from evoproxy.tree import evaluate_tree, parse_tree

REASONS = ("exception", "shape", "size", "nan", "constant", "timeout")
# The default evaluator of score_range / score_many. Off for now: the vectorised path equals the per-sample
# one within 1e-5 relative (not bit for bit, so it would change committed search trajectories) and is not
# yet faster on NAS-Bench-201 (measured 8.6 vs 7.1 formulas/s; MQ 135.8 vs 15.8): see evoproxy.scoring_speed.
VECTORISED = False
_STACKED: list = []  # [(stats list, its evoproxy.vectorised.Stacked)]: the last one, per process


@dataclass
class Scored:
    """Scores of one candidate on a range of samples, or why it was rejected."""

    scores: list[float] | None
    reason: str | None = None
    message: str = ""
    seconds: float = 0.0


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0])) or float(np.ptp(values)) <= 1e-12 * max(1.0, float(np.max(np.abs(values))))


def stacked_for(stats):
    """The :class:`evoproxy.vectorised.Stacked` of ``stats`` (built once per process for the latest list)."""
    from evoproxy.vectorised import stack

    if not _STACKED or _STACKED[0][0] is not stats:
        _STACKED.clear()  # keeps memory bounded: one stacked copy per process
        _STACKED.append((stats, stack(stats)))
    return _STACKED[0][1]


def _rejected(exc: Exception, t0: float) -> Scored:
    if isinstance(exc, OpError):
        reason = "size" if exc.reason == "size" else "shape"
        return Scored(None, reason, str(exc)[:200], time.perf_counter() - t0)
    text = " ".join(str(exc).split())[:200]
    # torch reports incompatible shapes as RuntimeError
    reason = "shape" if ("size" in text and "match" in text) or "shape" in text else "exception"
    return Scored(None, reason, f"{type(exc).__name__}: {text}", time.perf_counter() - t0)


_CAUGHT = (OpError, RuntimeError, ValueError, IndexError, ZeroDivisionError, OverflowError, FloatingPointError,
           ArithmeticError, MemoryError)


def score_range(tree, stats, start: int, stop: int, time_bound: float | None = None,
                check_constant: bool = True, vectorised: bool | None = None) -> Scored:
    """Scores of ``tree`` on ``stats[start:stop]`` (see the module docstring for the rejection rules)."""
    t0 = time.perf_counter()
    vectorised = VECTORISED if vectorised is None else vectorised
    out = []
    try:
        if vectorised:
            from evoproxy.vectorised import evaluate

            stop = min(stop, len(stats))
            result = evaluate(tree.to_json(), stacked_for(stats), start, stop)
            for v in result.values.tolist():
                if not math.isfinite(v):
                    return Scored(None, "nan", f"score {v} on sample {start + len(out)}", time.perf_counter() - t0)
                out.append(v)
            if result.error is not None:
                raise result.error[1]
            if time_bound is not None and time.perf_counter() - t0 > time_bound:
                return Scored(None, "timeout", f"over {time_bound:g} s", time.perf_counter() - t0)
        else:
            for st in stats[start:stop]:
                v = evaluate_tree(tree, st)
                if not math.isfinite(v):
                    return Scored(None, "nan", f"score {v} on sample {start + len(out)}", time.perf_counter() - t0)
                out.append(v)
                if time_bound is not None and time.perf_counter() - t0 > time_bound:
                    return Scored(None, "timeout", f"over {time_bound:g} s", time.perf_counter() - t0)
    except _CAUGHT as exc:
        return _rejected(exc, t0)
    values = np.asarray(out, dtype=float)
    if check_constant and len(values) > 1 and _is_constant(values):
        return Scored(None, "constant", f"every score is {values[0]:.6g}", time.perf_counter() - t0)
    return Scored(out, None, "", time.perf_counter() - t0)


def _chunk(recipe, trees_json, start, stop, time_bound, check_constant, vectorised=None):
    from evoproxy.searchdata import load_stats
    from primitives.core import fixed_threads

    stats = load_stats(recipe, progress=False)
    stop = len(stats) if stop is None else stop
    with fixed_threads(1):
        return [score_range(parse_tree(t), stats, start, stop, time_bound, check_constant, vectorised)
                for t in trees_json]


def score_many(recipe, trees, start: int, stop: int | None, jobs: int = 1, time_bound: float | None = None,
               check_constant: bool = True, vectorised: bool | None = None) -> list[Scored]:
    """``score_range`` for every tree, in order (chunks in joblib processes when ``jobs`` > 1)."""
    trees_json = [t.to_json() for t in trees]
    if not trees_json:
        return []
    if jobs <= 1 or len(trees_json) < 2:
        return _chunk(recipe, trees_json, start, stop, time_bound, check_constant, vectorised)
    from mqbench.parallel import map_items

    n_chunks = min(len(trees_json), jobs * 4)
    bounds = np.linspace(0, len(trees_json), n_chunks + 1).astype(int)
    chunks = [trees_json[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    parts = map_items(_chunk, chunks, (recipe,), (start, stop, time_bound, check_constant, vectorised), jobs=jobs, progress=False)
    return [s for part in parts for s in part]
