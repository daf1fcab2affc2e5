"""Score proxies on a benchmark sample and correlate them with the ground truth.

    from evoproxy.evaluate import evaluate
    reports = evaluate("nb201-cifar10", ["snip", "nwot"], samples=100, seed=0, split="holdout")
    reports["snip"]["spearman"]

Protocol: ``ids = bench.sample(samples, seed, split)``; one batch
``sample_batch("train", batch, seed=0, normalization=bench.normalization)`` is used for every item;
the proxies' own randomness (Zen noise, Hutchinson probes, power-iteration start) is seeded with
``PROXY_SEED`` = 0, so an item's score does not depend on which sample it was drawn in. Each item
is scored in a worker (joblib processes when ``jobs`` > 1) on one torch thread, so the scores do not
depend on ``jobs``. All proxies of a run share one :class:`~evoproxy.baselines.ProxyContext` per
item, hence one extraction of the primitives they need. An exception or a NaN/inf score in one item
marks that (item, proxy) as failed with its reason; it never stops the run.

Report per proxy (``correlation_report`` of :mod:`evoproxy.metrics` plus): ``partial_on`` (what
the partial Spearman controls for: ``params`` on NAS-Bench-201, ``model size`` on MQ tables),
``seconds_per_sample`` (mean worker time per item: building the network, plus the proxy's own
computation, plus an equal share of the item's shared primitive extraction among the proxies that
used it; per-network caches are paid by the first item and so amortised), ``failures`` (up to 20
``{"id", "reason"}``), and the run's settings.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evoproxy.errors import ConfigError

PROXY_SEED = 0
BATCH_SEED = 0
MAX_FAILURES_LISTED = 20


@dataclass(frozen=True)
class BenchSpec:
    """A picklable handle on a benchmark (workers rebuild it once per process)."""

    name: str
    table: str | None = None
    gt_column: str | None = None
    stamp: str = ""  # the table file's mtime and size: a changed file is re-read by the workers
    checkpoint: str | None = None  # MQ tables: read the FP checkpoint here instead of the data root


_BENCHES: dict[BenchSpec, object] = {}


def load_bench(spec: BenchSpec):
    """The benchmark of ``spec``; cached per process when its table is an explicit path (a default
    table depends on the environment's data root, so it is resolved afresh)."""
    from mqbench.benchmarks import get_benchmark

    if spec.table is None:
        return get_benchmark(spec.name, gt_column=spec.gt_column, checkpoint=spec.checkpoint)
    if spec not in _BENCHES:
        remember(spec, get_benchmark(spec.name, table=spec.table, gt_column=spec.gt_column, checkpoint=spec.checkpoint))
    return _BENCHES[spec]


def remember(spec: BenchSpec, bench) -> None:
    """Cache ``bench`` under ``spec``, forgetting older versions of the same table."""
    same = (spec.name, spec.table, spec.gt_column, spec.checkpoint)
    for old in [k for k in _BENCHES if (k.name, k.table, k.gt_column, k.checkpoint) == same]:
        del _BENCHES[old]
    _BENCHES[spec] = bench


def is_mq(bench) -> bool:
    from mqbench.benchmarks import MQBenchmark

    return isinstance(bench, MQBenchmark)


def table_path(bench) -> Path:
    """The file the benchmark was read from."""
    return Path(bench.table.path) if is_mq(bench) else Path(bench.path)


def gt_column(bench) -> str:
    return getattr(bench, "gt_column", None) or "top1"


def resolve_proxies(names) -> tuple[list[str], dict]:
    """(validated registered names, {label: parsed proxy file}) from names and ``.json`` paths."""
    from evoproxy.baselines import get_proxy
    from evoproxy.tree import load_proxy

    out, files = [], {}
    for name in names:
        name = str(name).strip()
        if not name:
            continue
        if name.lower().endswith(".json"):
            if name not in files:
                files[name] = load_proxy(name)
            continue
        get_proxy(name)
        if name not in out:
            out.append(name)
    if not out and not files:
        raise ConfigError("no proxy given")
    return out, files


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def score_item(spec: BenchSpec, item, names: list[str], inputs, targets, seed: int = PROXY_SEED) -> dict:
    """All proxies ``names`` on one benchmark item: {"id", "scores", "errors", "seconds"}."""
    from evoproxy.baselines import ProxyContext, get_proxy
    from primitives.core import fixed_threads

    fns = [get_proxy(n) for n in names]
    result = {"id": item, "scores": {}, "errors": {}, "seconds": {}}
    with fixed_threads(1):
        start = time.perf_counter()
        try:
            bench = load_bench(spec)
            model, bit_config = bench.build(item)
            quantizer, act_bits = None, 8
            if is_mq(bench):
                from mqbench.quant import quantize_weight

                quantizer = quantize_weight
                act_bits = int(bench.table.meta.get("act_bits", 8))
            ctx = ProxyContext(model, inputs, targets, bit_config=bit_config, seed=seed, quantizer=quantizer,
                               model_key=bench.model_key(item), act_bits=act_bits,
                               prefetch=tuple(sorted({n for fn in fns for n in fn.needs})))
        except Exception as exc:  # the item cannot be built: every proxy fails on it
            for n in names:
                result["scores"][n] = math.nan
                result["errors"][n] = f"build failed: {_reason(exc)}"
                result["seconds"][n] = time.perf_counter() - start
            return result
        build_s = time.perf_counter() - start
        own, users = {}, []
        for name, fn in zip(names, fns):
            before, t0 = ctx.extract_seconds, time.perf_counter()
            try:
                value = float(fn(ctx))
                if not math.isfinite(value):
                    result["errors"][name] = f"non-finite score ({value})"
            except Exception as exc:
                value = math.nan
                result["errors"][name] = _reason(exc)
            result["scores"][name] = value
            own[name] = time.perf_counter() - t0 - (ctx.extract_seconds - before)
            if fn.needs or ctx.extract_seconds != before:
                users.append(name)
        share = ctx.extract_seconds / len(users) if users else 0.0
        for name in names:
            result["seconds"][name] = build_s + own[name] + (share if name in users else 0.0)
    return result


def _check_jobs(jobs) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")


def score_items(spec: BenchSpec, ids: list, names: list[str], inputs, targets, jobs: int = 1,
                progress: bool = True, desc: str = "proxies") -> list[dict]:
    """``score_item`` for every id, in order (joblib processes when ``jobs`` > 1), with a tqdm bar on stderr."""
    from evoproxy.parallel import map_items

    _check_jobs(jobs)
    after = (names, inputs.detach().cpu().contiguous(), targets.detach().cpu().contiguous())
    return map_items(score_item, ids, (spec,), after, jobs=jobs, progress=progress, desc=desc)


def score_file_items(spec: BenchSpec, ids: list, files: dict, inputs, targets, jobs: int = 1,
                     progress: bool = True, desc: str = "proxies") -> list[dict]:
    """Like :func:`score_items` for parsed proxy files ``{label: Proxy}`` (see :mod:`evoproxy.score_file`)."""
    from evoproxy.parallel import map_items
    from evoproxy.score_file import needed, score_item as score_file_item

    _check_jobs(jobs)
    labels = list(files)
    prim_names, probes, noise = needed(files.values())
    after = (labels, [files[k].to_json() for k in labels], prim_names, probes, noise,
             inputs.detach().cpu().contiguous(), targets.detach().cpu().contiguous())
    return map_items(score_file_item, ids, (spec,), after, jobs=jobs, progress=progress, desc=desc)


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


def evaluate(bench: str, proxies, samples: int | None = 100, seed: int = 0, split: str = "holdout", *,
             table: str | Path | None = None, gt_column_name: str | None = None, jobs: int = 1, batch: int = 64,
             progress: bool = True, items: dict | None = None, checkpoint: str | Path | None = None) -> dict:
    """{proxy: report} for every proxy on the same sample and batch (see the module docstring).

    ``items``: a dict to receive the per-item data: ``ids``, ``truth``, ``size`` and ``results``
    (one {"id", "scores", "errors", "seconds"} per item), e.g. for an experiment that keeps them.
    Raises :class:`AllFailed` (one line: the count and the first reason) when every item failed
    for every proxy; partial failures are counted in the reports."""
    from mqbench.cifar10 import sample_batch

    names, files = resolve_proxies([proxies] if isinstance(proxies, str) else proxies)
    ckpt = None if checkpoint is None else str(Path(checkpoint).expanduser().resolve())
    b = load_bench(BenchSpec(bench, None if table is None else str(table), gt_column_name, checkpoint=ckpt))
    b.verify()
    # workers get the table's resolved path, so they never depend on their own environment
    path = table_path(b)
    stat = path.stat()
    spec = BenchSpec(bench, str(path), gt_column_name, f"{stat.st_mtime_ns}:{stat.st_size}", ckpt)
    remember(spec, b)
    if not is_mq(b):
        from evoproxy.baselines import get_proxy
        from evoproxy.searchdata import QUANT_NAMES

        wrong = [n for n in names if get_proxy(n).kind == "mq"]
        wrong += [label for label, p in files.items() if p.tree.terminals() & set(QUANT_NAMES)]
        if wrong:
            raise ConfigError(f"{', '.join(wrong)}: bit-configuration proxies need an MQ benchmark, not {bench}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 2):
        raise ConfigError(f"--samples must be an integer >= 2, got {samples!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ConfigError(f"--batch must be an integer >= 2, got {batch!r}")
    ids = b.sample(samples, seed, split)
    truth = np.asarray(b.ground_truth(ids), dtype=float)
    size = np.asarray(b.size(ids), dtype=float)
    inputs, targets = sample_batch("train", batch, seed=BATCH_SEED, normalization=b.normalization)
    labels = names + list(files)
    desc = labels[0] if len(labels) == 1 else f"{len(labels)} proxies"
    results = score_items(spec, ids, names, inputs, targets, jobs=jobs, progress=progress, desc=desc) if names else \
        [{"id": i, "scores": {}, "errors": {}, "seconds": {}} for i in ids]
    if files:
        file_results = score_file_items(spec, ids, files, inputs, targets, jobs=jobs, progress=progress, desc=desc)
        for r, f in zip(results, file_results):
            for key in ("scores", "errors", "seconds"):
                r[key].update(f[key])
    names = labels
    check_not_all_failed(results, names)
    from mqbench.dataroot import portable_path

    settings = {"bench": bench, "split": split, "seed": seed, "samples": len(ids), "batch": batch,
                "gt_column": gt_column(b), "table": portable_path(table_path(b))}
    if items is not None:
        items.update({"ids": list(ids), "truth": truth, "size": size, "results": results})
    out = {}
    for name in names:
        rep = report(name, results, truth, size, b.size_label)
        rep.update({"proxy": name, **settings})
        out[name] = rep
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


def human_table(reports: dict) -> str:
    """A short fixed-width table: one row per proxy."""
    head = ["proxy", "spearman", "kendall", "pearson", "rho@20%", "rho@50%", "partial", "n", "failed", "s/sample"]
    rows = [[name, *(_fmt(r[k]) for k in ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50",
                                           "partial_spearman", "n", "failed")), f"{r['seconds_per_sample']:.3f}"]
            for name, r in reports.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines)


def caption(reports: dict) -> str:
    r = next(iter(reports.values()))
    return (f"{r['bench']}: n = {r['samples']} {r['split']} samples (seed {r['seed']}), ground truth "
            f"{r['gt_column']}, batch of {r['batch']} CIFAR-10 training images; partial Spearman controls for {r['partial_on']}")


def write_baselines(reports: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``out_dir/baselines.csv`` (one row per proxy) and ``out_dir/baselines.md`` (table + caption line)."""
    import csv

    from evoproxy.baselines import get_proxy

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    csv_path, md_path = out / "baselines.csv", out / "baselines.md"
    first = next(iter(reports.values()))
    fields = ["proxy", "kind", *SUMMARY_KEYS, "partial_on", "bench", "split", "seed", "samples", "gt_column"]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for name, r in reports.items():
            row = {k: r.get(k) for k in fields if k not in ("proxy", "kind")}
            row = {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            kind = "file" if name.lower().endswith(".json") else get_proxy(name).kind
            writer.writerow({"proxy": name, "kind": kind, **row})
    lines = [f"Baselines — {caption(reports)}.", "",
             "| proxy | Spearman | Kendall | Pearson | ρ@20% | ρ@50% | partial Spearman | n | failed | s/sample |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        cells = [_fmt(r[k]) for k in ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50",
                                       "partial_spearman", "n", "failed")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['seconds_per_sample']:.3f} |")
    if first.get("partial_on"):
        lines += ["", f"Partial Spearman: rank correlation after regressing out rank({first['partial_on']})."]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
