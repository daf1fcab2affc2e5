"""Figures for papers and reports, drawn with matplotlib on its Agg (file-only) backend.

Every public function takes plain data (lists, arrays, dicts) and a path, writes one image there
(the format follows the suffix: ``.png``, ``.pdf``, ``.svg``) and returns the path. The ``*_figure``
functions build the same figure and return the :class:`matplotlib.figure.Figure` without writing
it (for notebooks and tests).

* :func:`search_progress` / :func:`run_progress`: best and median fitness per generation of one
  search run (its ``log.csv``).
* :func:`ablation`: mean best fitness per generation of several settings, each over seeds; curves
  that coincide stay visible (own line style, own marker at staggered generations, and a legend
  note naming the setting they coincide with).
* :func:`scatter`: proxy score against ground truth, one panel per proxy, Spearman's rho in each
  panel title and the number of items in the caption.

matplotlib is imported inside the functions, so ``import evoproxy`` stays light. Figures are built
on ``matplotlib.figure.Figure`` with an Agg canvas rather than through ``pyplot``: that needs no
display, leaves the caller's pyplot backend and state alone, and never keeps figures alive in a
global registry. The pixel size of a PNG is exactly ``size`` (inches) times ``dpi``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# line styles and markers cycled per series; 4 x 6 distinct pairs before a combination repeats
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


# ------------------------------------------------------------------------------------------ helpers

def _new_figure(size, dpi, **kwargs):
    """A Figure attached to an Agg canvas (no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path


def _text(s: str) -> str:
    """Plain text for a matplotlib label: ``$`` would start mathtext."""
    return str(s).replace("$", r"\$")


def _title(ax_or_fig, text: str, **kwargs) -> None:
    """A title wrapped to the width of the figure (a long one would be cut off at the edges)."""
    import textwrap

    fig = ax_or_fig if hasattr(ax_or_fig, "suptitle") else ax_or_fig.figure
    width = max(30, int(fig.get_figwidth() * 10))
    wrapped = "\n".join(textwrap.wrap(_text(text), width, break_on_hyphens=False))
    if hasattr(ax_or_fig, "suptitle"):
        ax_or_fig.suptitle(wrapped, **kwargs)
    else:
        ax_or_fig.set_title(wrapped, **kwargs)


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _floats(values) -> np.ndarray:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=float)


def _caption(fig, text: str | None) -> None:
    if text:
        import textwrap

        width = max(40, int(fig.get_figwidth() * 15))
        fig.supxlabel("\n".join(textwrap.wrap(_text(text), width, break_on_hyphens=False)), fontsize="small", ha="center")


def check_path(path) -> Path:
    """``path`` as a Path when its suffix names an image format matplotlib writes, else ValueError
    (so a command can refuse a bad ``--plot`` before its long computation, not after)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(f"{path}: unknown image format {path.suffix or '(no suffix)'}; "
                         f"use one of {', '.join('.' + f for f in sorted(formats))}")
    return path


# ---------------------------------------------------------------------------------- search progress

def read_log(run_dir) -> list[dict]:
    """The rows of ``run_dir/log.csv`` (one dict per generation, values as strings; :func:`evoproxy.evolution.runfiles.read_log`:
    old logs' columns under their current names)."""
    from evoproxy.evolution.runfiles import read_log as read

    return read(Path(run_dir) / "log.csv")


def search_progress_figure(log_rows: list[dict], title: str | None = None, size=(7.0, 4.5), dpi: int = 150):
    """Best and median population fitness per generation (columns ``generation``, ``best_fitness``,
    ``median_fitness`` of a search's ``log.csv``); the caption quotes the last generation's best formula."""
    if not log_rows:
        raise ValueError("no log rows to plot")
    gens = _floats(r.get("generation") for r in log_rows)
    fig = _new_figure(size, dpi)
    ax = fig.add_subplot()
    ax.plot(gens, _floats(r.get("best_fitness") for r in log_rows), color=COLORS[0], marker="o", markersize=3,
            label="best")
    ax.plot(gens, _floats(r.get("median_fitness") for r in log_rows), color=COLORS[1], linestyle="--", marker="s",
            markersize=3, label="median of population")
    ax.set_xlabel("generation")
    ax.set_ylabel("search fitness")
    _title(ax, title or "Search progress: best and median fitness per generation")
    _integer_x(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    formula = log_rows[-1].get("best_formula")
    if formula:
        formula = formula if len(formula) <= 120 else formula[:117] + "..."
        _caption(fig, f"best after generation {log_rows[-1].get('generation')}: {formula}")
    return fig


def search_progress(log_rows: list[dict], path, title: str | None = None, size=(7.0, 4.5), dpi: int = 150) -> Path:
    """Write :func:`search_progress_figure` to ``path``; returns the path."""
    return _save(search_progress_figure(log_rows, title, size, dpi), path)


def run_progress(run_dir, path=None, title: str | None = None, size=(7.0, 4.5), dpi: int = 150) -> Path:
    """:func:`search_progress` of a run folder (``log.csv``; the title names the benchmark, seed and
    fitness from ``config.json`` when present). Default path: ``run_dir/progress.png``."""
    run_dir = Path(run_dir)
    if title is None:
        try:
            cfg = json.loads((run_dir / "config.json").read_text())
            title = f"Search progress on {cfg.get('bench')} (seed {cfg.get('seed')}, {cfg.get('fitness')} fitness)"
        except (OSError, ValueError):
            title = f"Search progress: {run_dir.name}"
    return search_progress(read_log(run_dir), run_dir / "progress.png" if path is None else path, title, size, dpi)


# ----------------------------------------------------------------------------------------- ablation

def coinciding(series: dict[str, np.ndarray]) -> dict[str, str]:
    """{label: earlier label} for each series equal to an earlier one (same length, values within 1e-9)."""
    out, labels = {}, list(series)
    for i, b in enumerate(labels):
        for a in labels[:i]:
            if a in out:
                continue
            x, y = np.asarray(series[a], float), np.asarray(series[b], float)
            if x.shape == y.shape and np.allclose(x, y, rtol=0.0, atol=1e-9, equal_nan=True):
                out[b] = a
                break
    return out


def ablation_figure(curves: dict[str, list[list[float]]], title: str | None = None, *,
                    xlabel: str = "generation", ylabel: str = "best search fitness (mean over seeds)",
                    caption: str | None = None, band: bool = True, size=(8.0, 5.0), dpi: int = 150):
    """Mean per generation of each setting's per-seed series (``curves``: {label: [series of seed 1,
    series of seed 2, ...]}, equal lengths within a setting), with a light min-max band over seeds.

    Each setting has its own colour, line style and marker; markers sit at staggered generations
    and later lines are drawn thinner on top of earlier ones, so coinciding curves remain visible;
    a coinciding curve's legend entry says which setting it equals."""
    if not curves:
        raise ValueError("no curves to plot")
    means, spans = {}, {}
    for label, runs in curves.items():
        arr = np.array([_floats(r) for r in runs], dtype=float)
        if arr.ndim != 2 or arr.shape[1] == 0:
            raise ValueError(f"{label}: series must be non-empty and of equal length")
        means[label] = np.nanmean(arr, axis=0)
        spans[label] = (np.nanmin(arr, axis=0), np.nanmax(arr, axis=0))
    same = coinciding(means)
    fig = _new_figure(size, dpi)
    ax = fig.add_subplot()
    k = len(means)
    longest = max(len(m) for m in means.values())
    step = max(k, int(math.ceil(longest / 6)))
    for i, (label, m) in enumerate(means.items()):
        xs = np.arange(len(m))
        color = COLORS[i % len(COLORS)]
        text = label if label not in same else f"{label} (coincides with '{same[label]}')"
        ax.plot(xs, m, color=color, linestyle=LINESTYLES[i % len(LINESTYLES)], marker=MARKERS[i % len(MARKERS)],
                markevery=(i % step, step), markersize=7 - 0.6 * (i % 4), linewidth=2.8 - 0.5 * (i % 4),
                markerfacecolor="white" if i % 2 else color, markeredgewidth=1.5, label=_text(text), zorder=2 + i)
        # a band equal to an earlier setting's would only darken that one
        if band and len(curves[label]) > 1 and not (label in same and all(
                np.allclose(u, v, rtol=0.0, atol=1e-9, equal_nan=True) for u, v in zip(spans[label], spans[same[label]]))):
            ax.fill_between(xs, *spans[label], color=color, alpha=0.10, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _title(ax, title or "Ablation: best search fitness per generation")
    _integer_x(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    seeds = sorted({len(r) for r in curves.values()})
    note = f"Lines: mean over {'/'.join(map(str, seeds))} seeds per setting"
    note += "; shaded: min to max over seeds (drawn once where two settings have the same band)." if band else "."
    if same:
        note += " Coinciding curves: " + "; ".join(f"'{b}' = '{a}'" for b, a in same.items()) + "."
    _caption(fig, note + (" " + caption if caption else ""))
    return fig


def ablation(curves: dict[str, list[list[float]]], path, title: str | None = None, **kwargs) -> Path:
    """Write :func:`ablation_figure` to ``path``; returns the path."""
    return _save(ablation_figure(curves, title, **kwargs), path)


# ------------------------------------------------------------------------------------------ scatter

def _auto_log(x: np.ndarray) -> bool:
    return x.size > 1 and bool(np.all(x > 0)) and float(x.max() / x.min()) >= 1e3


def scatter_figure(scores_by_proxy: dict[str, list[float]], truth, title: str | None = None, *,
                   truth_label: str = "ground truth", score_label: str = "proxy score", caption: str | None = None,
                   log_scores: bool | None = None, columns: int = 3, panel_size=None, dpi: int = 150):
    """Score (x) against ground truth (y), one panel per proxy, Spearman's rho in each panel's title.

    Items whose score or truth is not finite are left out (and counted in the caption, as the
    evaluator counts them ``failed``). ``log_scores``: log x axis; ``None`` picks it when a proxy's
    scores are all positive and span three or more decades."""
    from evoproxy.scoring.metrics import spearman

    if not scores_by_proxy:
        raise ValueError("no proxies to plot")
    y_all = _floats(truth)
    n = len(scores_by_proxy)
    cols = min(columns, n)
    rows = int(math.ceil(n / cols))
    panel_size = panel_size or ((5.5, 4.5) if n == 1 else (4.0, 3.6))
    fig = _new_figure((panel_size[0] * cols, panel_size[1] * rows + 0.6), dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    counts = []
    for i, (name, scores) in enumerate(scores_by_proxy.items()):
        ax = axes[i // cols][i % cols]
        x = _floats(scores)
        if x.shape != y_all.shape:
            raise ValueError(f"{name}: {x.size} scores for {y_all.size} ground-truth values")
        ok = np.isfinite(x) & np.isfinite(y_all)
        x, y = x[ok], y_all[ok]
        counts.append((name, int(ok.sum()), int((~ok).sum())))
        rho = spearman(x, y)
        ax.scatter(x, y, s=14, alpha=0.7, color=COLORS[i % len(COLORS)], edgecolors="none")
        if log_scores or (log_scores is None and _auto_log(x)):
            ax.set_xscale("log")
        _title(ax, f"{name}: Spearman ρ = {rho:.3f}" if math.isfinite(rho) else f"{name}: Spearman ρ undefined",
               fontsize="medium")
        ax.set_xlabel(_text(f"{score_label} ({name})" if n > 1 else score_label))
        ax.set_ylabel(_text(truth_label))
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if title:
        _title(fig, title)
    ns = {c[1] for c in counts}
    note = f"n = {ns.pop()} items" if len(ns) == 1 else "n = " + ", ".join(f"{c[1]} ({c[0]})" for c in counts)
    dropped = [f"{c[0]} {c[2]}" for c in counts if c[2]]
    if dropped:
        note += f" of {y_all.size}; left out for a non-finite score or truth: " + ", ".join(dropped)
    _caption(fig, note + "." + (" " + caption if caption else ""))
    return fig


def scatter(scores_by_proxy: dict[str, list[float]], truth, path, title: str | None = None, **kwargs) -> Path:
    """Write :func:`scatter_figure` to ``path``; returns the path."""
    return _save(scatter_figure(scores_by_proxy, truth, title, **kwargs), path)
