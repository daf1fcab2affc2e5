"""Score proxies on a benchmark sample and correlate them with the ground truth.

    from evoproxy.evaluation import proxy_reports
    reports = proxy_reports("nb201-cifar10", ["snip", "runs/a/best.json", my_proxy, my_fn], samples=100, seed=0)
    reports["snip"]["spearman"]

Protocol: ``ids = bench.sample(samples, seed, split)``; every proxy scores every item through
:mod:`evoproxy.scoring` (one batch of training images, seed ``PROXY_SEED``, one torch thread per
worker, statistics shared and disk-cached), so an item's score depends neither on the sample it was
drawn in nor on ``jobs``, and a second evaluation of the same items recomputes no statistics.

Report per proxy (``correlation_report`` of :mod:`evoproxy.metrics` plus): ``partial_on`` (what
the partial Spearman controls for: ``params`` on NAS-Bench-201, ``model size`` on MQ tables),
``seconds_per_sample`` (see :mod:`evoproxy.scoring`), ``failures`` (up to 20 ``{"id", "reason"}``),
and the run's settings. A run in which every item fails raises :class:`AllFailed`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mqbench.errors import ConfigError

MAX_FAILURES_LISTED = 20


class AllFailed(ConfigError):
    """Every item of a run failed: nothing was measured."""


def check_not_all_failed(results: list[dict], names: list[str]) -> None:
    """Raise :class:`AllFailed` naming the count and the first reason when no (item, proxy) has a score."""
    if not results or not names:
        return
    if all(name in r["errors"] for r in results for name in names):
        first = results[0]
        reason = first["errors"][names[0]]
        raise AllFailed(f"all {len(results)} items failed for {', '.join(names)} "
                        f"(first: id {_plain(first['id'])}: {reason})")


def report(name: str, results: list[dict], truth: np.ndarray, size: np.ndarray, partial_on: str) -> dict:
    """The evaluator's object for proxy ``name`` from per-item results."""
    from evoproxy.metrics import correlation_report

    scores = np.array([r["scores"][name] for r in results], dtype=float)
    rep = correlation_report(scores, truth, size)
    rep["partial_on"] = partial_on
    rep["seconds_per_sample"] = float(np.mean([r["seconds"][name] for r in results])) if results else math.nan
    failures = [{"id": _plain(r["id"]), "reason": r["errors"][name]} for r in results if name in r["errors"]]
    rep["failures"] = failures[:MAX_FAILURES_LISTED]
    return rep


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def proxy_reports(bench: str, proxies, samples: int | None = 100, seed: int = 0, split: str = "holdout", *,
                  table: str | Path | None = None, gt_column_name: str | None = None, jobs: int = 1, batch: int = 64,
                  progress: bool = True, items: dict | None = None, checkpoint: str | Path | None = None,
                  device: str | None = None) -> dict:
    """{label: report} for every proxy on the same sample and batch (see the module docstring).

    ``proxies``: registered names, proxy files, ``Proxy`` objects or callables (see :mod:`evoproxy.scoring`).
    ``items``: a dict to receive the per-item data: ``ids``, ``truth``, ``size`` and ``results``
    (one {"id", "scores", "errors", "seconds"} per item), e.g. for an experiment that keeps them.
    Raises :class:`AllFailed` (one line: the count and the first reason) when every item failed
    for every proxy; partial failures are counted in the reports. ``device``: cpu (default), cuda or auto
    (:mod:`mqbench.devices`): where statistics are extracted and baselines run."""
    from evoproxy.scoring import check_compatible, resolve_scorers, score_items
    from mqbench.benchmarks import BenchRef
    from mqbench.dataroot import portable_path
    from primitives.workspace import Workspace

    from mqbench.devices import resolve_device

    device = resolve_device(device)
    scorers = resolve_scorers(proxies)
    ref, b = BenchRef.resolve(bench, table, gt_column_name, checkpoint)
    check_compatible(scorers, b)
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 2):
        raise ConfigError(f"--samples must be an integer >= 2, got {samples!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ConfigError(f"--batch must be an integer >= 2, got {batch!r}")
    b.verify()
    ids = b.sample(samples, seed, split)
    truth = np.asarray(b.ground_truth(ids), dtype=float)
    size = np.asarray(b.size(ids), dtype=float)
    labels = [sc.label for sc in scorers]
    desc = labels[0] if len(labels) == 1 else f"{len(labels)} proxies"
    results = score_items(Workspace(ref, b), ids, scorers, batch, jobs=jobs, progress=progress, desc=desc, device=device)
    check_not_all_failed(results, labels)
    settings = {"bench": bench, "split": split, "seed": seed, "samples": len(ids), "batch": batch,
                "gt_column": b.gt_column, "table": portable_path(b.source)}
    if device != "cpu":
        settings["device"] = device
    if items is not None:
        items.update({"ids": list(ids), "truth": truth, "size": size, "results": results})
    out = {}
    for label in labels:
        rep = report(label, results, truth, size, b.size_label)
        rep.update({"proxy": label, **settings})
        out[label] = rep
    return out


# ------------------------------------------------------------------------------------- output

SUMMARY_KEYS = ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50", "spearman_top100",
                "partial_spearman", "n", "failed", "seconds_per_sample")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def human_report(reports: dict) -> str:
    """The reports as short fixed-width text: one row per proxy."""
    head = ["proxy", "spearman", "kendall", "pearson", "rho@20%", "rho@50%", "partial", "n", "failed", "s/sample"]
    rows = [[name, *(_fmt(r[k]) for k in ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50",
                                           "partial_spearman", "n", "failed")), f"{r['seconds_per_sample']:.3f}"]
            for name, r in reports.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines)


human_table = human_report  # deprecated name


def caption(reports: dict) -> str:
    r = next(iter(reports.values()))
    return (f"{r['bench']}: n = {r['samples']} {r['split']} samples (seed {r['seed']}), ground truth "
            f"{r['gt_column']}, batch of {r['batch']} CIFAR-10 training images; partial Spearman controls for {r['partial_on']}")


CSV_FIELDS = ["proxy", "kind", *SUMMARY_KEYS, "partial_on", "bench", "split", "seed", "samples", "gt_column"]


def _kind(name: str) -> str:
    from evoproxy.baselines import get_proxy, proxy_names

    return get_proxy(name).kind if name in proxy_names() else ("file" if name.lower().endswith(".json") else "object")


def write_csv(reports: dict, path: str | Path) -> Path:
    """One row per proxy (``CSV_FIELDS``); non-finite numbers as empty cells."""
    import csv

    path = Path(path)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for name, r in reports.items():
            row = {k: r.get(k) for k in CSV_FIELDS if k not in ("proxy", "kind")}
            row = {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            writer.writerow({"proxy": name, "kind": _kind(name), **row})
    return path


def markdown(reports: dict, title: str = "Baselines") -> str:
    """The reports in markdown, one row per proxy, under a caption line that states n, split, seed and ground truth."""
    first = next(iter(reports.values()))
    lines = [f"{title} — {caption(reports)}.", "",
             "| proxy | Spearman | Kendall | Pearson | ρ@20% | ρ@50% | partial Spearman | n | failed | s/sample |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        cells = [_fmt(r[k]) for k in ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50",
                                       "partial_spearman", "n", "failed")]
        lines.append(f"| {name.replace('|', '&#124;')} | " + " | ".join(cells) + f" | {r['seconds_per_sample']:.3f} |")
    if first.get("partial_on"):
        lines += ["", f"Partial Spearman: rank correlation after regressing out rank({first['partial_on']})."]
    return "\n".join(lines) + "\n"


def write_baselines(reports: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``out_dir/baselines.csv`` (one row per proxy) and ``out_dir/baselines.md`` (the report in markdown)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    md_path = out / "baselines.md"
    md_path.write_text(markdown(reports))
    return write_csv(reports, out / "baselines.csv"), md_path
