"""Rank-correlation metrics between proxy scores and ground truth (pure functions on arrays).

Every function takes 1-d array-likes of equal length and returns a float; a correlation that is
undefined (fewer than 2 items, or a constant input) is NaN, never an exception. Inputs are expected
to be finite: :func:`correlation_report` is the entry point that drops non-finite scores (and
counts them as ``failed``) before calling the others.

* ``spearman`` / ``kendall`` (tau-b) / ``pearson``: scipy.stats.
* ``spearman_top(score, truth, k)``: EMQ's rho_s@k (Dong et al., ICCV 2023): the Spearman
  correlation restricted to the ``k`` percent of items the proxy ranks highest
  (``ceil(n * k / 100)`` items, at least 2; ties at the cut are broken by the original order).
* ``partial_spearman(score, truth, size)``: the partial rank correlation controlling for size:
  rank(score) and rank(truth) are each regressed by least squares (with intercept) on rank(size),
  and the Pearson correlation of the two residual vectors is returned. Ranks are scipy's
  ``rankdata`` (average ranks for ties).
* ``diff_kendall(scores, truth, temperature)``: a smooth, differentiable (torch) Kendall's tau of
  ``scores`` against a fixed ``truth``, for training or tuning a proxy by gradient; see its docstring.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

TOP_PERCENTS = (20, 50, 100)
DIFF_KENDALL_VARIANTS = ("a", "b")
DIFF_KENDALL_BLOCK = 1 << 22  # pair-matrix entries built at once (rows are taken in blocks of this size)
REPORT_KEYS = ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50", "spearman_top100",
               "partial_spearman", "n", "failed")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=float).reshape(-1)
    y = np.asarray(b, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"arrays differ in length: {x.size} vs {y.size}")
    return x, y


def _constant(x: np.ndarray) -> bool:
    return x.size < 2 or bool(np.all(x == x[0]))


def _stat(fn, x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or _constant(x) or _constant(y):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = fn(x, y).statistic
    return float(value)


def spearman(score, truth) -> float:
    """Spearman's rho (scipy.stats.spearmanr); NaN when undefined."""
    from scipy.stats import spearmanr

    return _stat(spearmanr, *_pair(score, truth))


def kendall(score, truth) -> float:
    """Kendall's tau-b (scipy.stats.kendalltau); NaN when undefined."""
    from scipy.stats import kendalltau

    return _stat(kendalltau, *_pair(score, truth))


def pearson(score, truth) -> float:
    """Pearson's r (scipy.stats.pearsonr); NaN when undefined."""
    from scipy.stats import pearsonr

    return _stat(pearsonr, *_pair(score, truth))


def top_count(n: int, k: float) -> int:
    """How many items rho_s@k keeps out of ``n``: ceil(n * k / 100), at least 2 (at most n)."""
    return min(n, max(2, int(math.ceil(n * float(k) / 100.0 - 1e-9))))


def spearman_top(score, truth, k: float) -> float:
    """EMQ's rho_s@k: Spearman within the ``k`` % of items with the highest proxy score."""
    x, y = _pair(score, truth)
    if not 0 < float(k) <= 100:
        raise ValueError(f"k must be a percentage in (0, 100], got {k!r}")
    if x.size < 2:
        return math.nan
    keep = np.argsort(-x, kind="stable")[: top_count(x.size, k)]
    return spearman(x[keep], y[keep])


def _residuals(r: np.ndarray, design: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, r, rcond=None)
    return r - design @ coef


def partial_spearman(score, truth, size) -> float:
    """Partial Spearman correlation of score and truth given size (see the module docstring)."""
    from scipy.stats import rankdata

    x, y = _pair(score, truth)
    s, _ = _pair(size, x)
    if x.size < 3 or _constant(x) or _constant(y):
        return math.nan
    design = np.column_stack([np.ones_like(s), rankdata(s)])
    rx, ry = rankdata(x), rankdata(y)
    ex, ey = _residuals(rx, design), _residuals(ry, design)
    vx, vy = float(ex @ ex), float(ey @ ey)
    # a residual vector that is (numerically) zero means size explains that ranking fully: undefined
    if vx <= 1e-12 * float(np.sum((rx - rx.mean()) ** 2)) or vy <= 1e-12 * float(np.sum((ry - ry.mean()) ** 2)):
        return math.nan
    return float(np.clip((ex @ ey) / math.sqrt(vx * vy), -1.0, 1.0))


def correlation_report(score, truth, size=None) -> dict:
    """All metrics of one proxy: keys ``REPORT_KEYS`` (floats, NaN when undefined; n and failed ints).

    Items whose score is NaN or +-inf are *failed*: counted in ``failed`` and left out of every
    metric (never replaced). ``size`` (optional) is what ``partial_spearman`` controls for; without it
    that entry is NaN. ``n`` is the number of items the metrics were computed on.
    """
    x, y = _pair(score, truth)
    ok = np.isfinite(x)
    if not np.all(np.isfinite(y)):
        raise ValueError("ground truth contains NaN or inf")
    xs, ys = x[ok], y[ok]
    out = {
        "spearman": spearman(xs, ys),
        "kendall": kendall(xs, ys),
        "pearson": pearson(xs, ys),
    }
    for k in TOP_PERCENTS:
        out[f"spearman_top{k}"] = spearman_top(xs, ys, k) if xs.size >= 2 else math.nan
    if size is None:
        out["partial_spearman"] = math.nan
    else:
        s, _ = _pair(size, x)
        out["partial_spearman"] = partial_spearman(xs, ys, s[ok])
    out["n"] = int(ok.sum())
    out["failed"] = int((~ok).sum())
    return out


def json_safe(value):
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively (for JSON)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def diff_kendall(scores, truth, temperature: float = 0.1, variant: str = "a"):
    """A smooth Kendall's tau of ``scores`` against ``truth``, differentiable w.r.t. ``scores`` (torch).

    DiffKendall (Zheng, Zhang & Huang, NeurIPS 2023; used as the ranking loss of ParZC, Dong et al.
    2024) replaces each pair's sign(x_i - x_j) by (e^{a x_i} - e^{a x_j}) / (e^{a x_i} + e^{a x_j}),
    which is tanh(a (x_i - x_j) / 2) = 2 sigmoid(a (x_i - x_j)) - 1. Here a = 1 / ``temperature``;
    only the scores are relaxed, the truth keeps its hard signs (it is a fixed target):

        phi_ij = tanh((s_i - s_j) / (2 T)),   t_ij = sign(y_i - y_j)   (0 for a tie in truth)
        variant "a" (default, the paper's form): tau = sum_{i<j} phi_ij t_ij / (n (n - 1) / 2)
        variant "b": tau = sum_{i<j} phi_ij t_ij / sqrt(sum_{i<j} phi_ij^2 * sum_{i<j} t_ij^2)

    As T -> 0, phi_ij -> sign(s_i - s_j) (0 for tied scores), so "a" tends to Kendall's tau-a
    (C - D) / (n (n - 1) / 2) and "b" to tau-b, which is what ``scipy.stats.kendalltau`` (and
    :func:`kendall`) returns. Without ties in either input the two coincide. With ties in truth, a
    tied pair adds 0 to the numerator; "a" still counts it in the denominator (so |tau| < 1 even for
    a perfect ranking), "b" leaves it out as tau-b does. |tau_T - tau_limit| <= mean_{i<j}(1 - |phi_ij|)
    for "a". T is in the units of ``scores``: standardise them first if their scale is arbitrary.

    ``scores``: 1-d float tensor (gradients flow into it) or array-like; ``truth``: tensor or
    array-like of the same length (never differentiated). Returns a 0-d tensor of the scores' dtype
    and device. Undefined cases are NaN, as in the rest of this module: fewer than 2 items, and for
    "b" a constant truth or all pairs' phi = 0 (e.g. constant scores). The pair matrix is built in
    row blocks of at most ``DIFF_KENDALL_BLOCK`` entries: O(n^2) time, O(n) extra memory per row.
    """
    import torch

    if variant not in DIFF_KENDALL_VARIANTS:
        raise ValueError(f"variant must be one of {DIFF_KENDALL_VARIANTS}, got {variant!r}")
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores, dtype=float))
    if not s.is_floating_point():
        s = s.double()
    s = s.reshape(-1)
    y = truth.detach() if isinstance(truth, torch.Tensor) else torch.as_tensor(np.asarray(truth, dtype=float))
    y = y.reshape(-1).to(device=s.device, dtype=s.dtype)
    if y.shape != s.shape:
        raise ValueError(f"arrays differ in length: {s.numel()} vs {y.numel()}")
    n = s.numel()
    nan = s.new_tensor(math.nan)
    if n < 2:
        return s.sum() * nan  # keeps the graph (a NaN gradient), like kendall()'s NaN
    rows = max(1, DIFF_KENDALL_BLOCK // n)
    num = s.new_zeros(())
    phi_sq = s.new_zeros(())
    t_sq = s.new_zeros(())
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        phi = torch.tanh((s[start:stop, None] - s[None, :]) / (2.0 * t))
        sgn = torch.sign(y[start:stop, None] - y[None, :])
        # the full (symmetric) matrix counts every unordered pair twice; the diagonal adds 0
        num = num + (phi * sgn).sum()
        if variant == "b":
            phi_sq = phi_sq + (phi * phi).sum()
            t_sq = t_sq + (sgn * sgn).sum()
    if variant == "a":
        return num / (n * (n - 1))
    denom = torch.sqrt(phi_sq * t_sq)
    if float(denom.detach()) <= 0.0:
        return num * nan
    return num / denom
