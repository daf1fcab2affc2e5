"""Parametric proxies (issue 15): evolved formula vs the same formula calibrated vs ParZC vs the best hand-made proxy.

    python -m experiments.parametric [--seeds 0,1,2] [--sizes 25,50,100] [--jobs 2]
    python -m experiments.parametric --tables-only      # captions, tables and plot from runs.csv

For NAS-Bench-201 (the 1000 holdout architectures of ``nb201_correlation``, ground truth
CIFAR10TestAccuracy200Epochs) and the MQ-Bench-C10 ResNet-20 table (its 454 holdout configurations), per
search seed s:

* **evolved**: the committed ``results/<experiment>/runs/seed<s>/best.json`` as it is;
* **calibrated**: the same formula with per-layer-position weights fitted by :func:`evoproxy.calibrate.calibrate_on`
  on the first n items of ``sample(n_max, s, "search")`` (the search split the evolved proxy was found on);
* **ParZC**: :func:`evoproxy.parzc.fit_parzc` on the node-wise statistics of the hand-made layer-sum proxies
  (:data:`evoproxy.parzc.NAS_PROXIES` / ``MQ_PROXIES``), same items, seed s;
* **ParZC + evolved**: ParZC with the evolved formula's per-layer terms as one more node-wise statistic;
* **best hand-made**: the best registered proxy by holdout Spearman in the committed tables, its per-item scores
  read from the committed ``items*.csv`` (no training, the same for every seed).

Statistics come from the benchmark's :class:`primitives.workspace.Workspace` (one request for every proxy, disk-cached); the
per-layer terms are kept in a feature file under ``cache_root()/parametric`` so a re-run only refits.
Writes ``results/parametric/table.{csv,md}``, ``sizes.{csv,md}``, ``runs.csv`` (one row per fit) and
``sizes.png``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import time

from experiments.common import REPO, announce, fmt, log, mean_std, results_dir, write_report

PROXIES = REPO / "examples" / "proxies"
NB201, MQ = "nb201-cifar10", "mq-resnet20-cifar10"
SETTINGS = {NB201: dict(experiment="nb201_correlation", holdout=1000, search=100, items="items.csv",
                        table="table_CIFAR10TestAccuracy200Epochs.csv", label="NAS-Bench-201"),
            MQ: dict(experiment="mq_correlation", holdout=None, search=50, items="items_resnet20.csv",
                     table="table_resnet20.csv", label="MQ ResNet-20")}
TRAINED = ("calibrated", "parzc", "parzc+evolved")
CHUNK = 100


def proxy_sets(bench: str, seeds) -> tuple[dict, dict]:
    """({label: Proxy} of ParZC's node-wise statistics, {seed: evolved Proxy})."""
    from evoproxy.parzc import default_proxies
    from evoproxy.tree import load_proxy

    runs = REPO / "results" / SETTINGS[bench]["experiment"] / "runs"
    return default_proxies(bench == MQ), {s: load_proxy(runs / f"seed{s}" / "best.json") for s in seeds}


def item_ids(bench: str, seeds, n_search: int, holdout: int | None = None) -> dict:
    """{seed: search ids, "holdout": ids} (smaller samples are prefixes of these: same permutation)."""
    from mqbench.benchmarks import get_benchmark

    b = get_benchmark(bench)
    n = SETTINGS[bench]["holdout"] if holdout is None or SETTINGS[bench]["holdout"] is None else holdout
    return {**{s: b.sample(n_search, s, "search") for s in seeds}, "holdout": b.sample(n, 0, "holdout")}


def features(bench: str, ids, parzc_proxies: dict, evolved: dict, jobs: int) -> dict:
    """{"rows": {id: ParZC row}, "terms": {seed: {id: (positions, terms)}}, "seconds": extraction s/item}, from
    the feature file when it holds these items and proxies, else by extracting the statistics (in chunks)."""
    from evoproxy.calibrate import term_rows
    from evoproxy.parzc import item_rows, union_request
    from mqbench.benchmarks import BenchRef
    from mqbench.dataroot import cache_root
    from primitives.core import fixed_threads
    from primitives.workspace import Workspace

    request = union_request(list(parzc_proxies.values()) + list(evolved.values()))
    key = json.dumps([bench, sorted(ids), repr(request), {k: p.to_json()["tree"] for k, p in parzc_proxies.items()},
                      {s: [p.to_json()["tree"], p.orientation] for s, p in evolved.items()}], sort_keys=True)
    path = cache_root() / "parametric" / f"{bench}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return {"rows": {int(i): r for i, r in data["rows"]},
                "terms": {int(s): {int(i): None if t is None else tuple(t) for i, t in v} for s, v in data["terms"].items()},
                "seconds": data["seconds"]}
    log(f"{bench}: statistics of {len(ids)} items ({request})")
    workspace = Workspace(*BenchRef.resolve(bench))
    rows, terms, t0 = {}, {s: {} for s in evolved}, time.time()
    for start in range(0, len(ids), CHUNK):
        chunk = list(ids[start:start + CHUNK])
        with fixed_threads(1):  # small tensors: on a shared CPU, more threads made the terms ~40x slower
            stats = workspace.statistics(chunk, request, jobs=jobs, progress=False)
            rows.update(zip(chunk, item_rows(parzc_proxies, stats)))
            for s, proxy in evolved.items():
                terms[s].update(zip(chunk, term_rows(proxy, stats)))
        log(f"{bench}: {start + len(chunk)} / {len(ids)} items, {time.time() - t0:.0f} s")
    seconds = (time.time() - t0) / len(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": list(rows.items()), "terms": {s: list(v.items()) for s, v in terms.items()},
                                "seconds": seconds}))
    return {"rows": rows, "terms": terms, "seconds": seconds}


def weighted(term, orientation: int, weights: dict | None = None) -> float:
    """orientation * sum_l w(l) t_l (w = 1 without weights; the proxy's value up to float rounding)."""
    if term is None:
        return math.nan
    names, values = term
    w = weights or {}
    return orientation * math.fsum(w.get(n, 1.0) * t for n, t in zip(names, values))


def with_terms(row, term, label: str = "evolved"):
    """A ParZC row with the evolved formula's per-layer term as one more statistic (0 where it has none)."""
    if row is None or term is None:
        return None
    extra = dict(zip(*term))
    width = len(next(iter(row.values())))
    out = {p: list(v) + [extra.get(p, 0.0)] for p, v in row.items()}
    for p, t in extra.items():
        out.setdefault(p, [0.0] * width + [t])
    return out


def correlations(scores, truth) -> dict:
    from evoproxy.metrics import kendall, spearman

    pairs = [(s, y) for s, y in zip(scores, truth) if math.isfinite(s)]
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"spearman": spearman(x, y), "kendall": kendall(x, y), "n": len(pairs), "failed": len(scores) - len(pairs)}


def best_handmade(bench: str, ids) -> tuple[str, list]:
    """(name, holdout scores) of the best registered proxy by Spearman in the committed table of ``bench``."""
    s = SETTINGS[bench]
    folder = REPO / "results" / s["experiment"]
    rows = [r for r in csv.DictReader(open(folder / s["table"])) if not r["proxy"].startswith(("evolved", "emq"))]
    best = max(rows, key=lambda r: float(r["spearman"]) if r["spearman"] else -2)["proxy"]
    found = {int(r["id"]): (float(r["score"]) if not r["error"] else math.nan)
             for r in csv.DictReader(open(folder / s["items"])) if r["key"] == best}
    return best, [found.get(int(i), math.nan) for i in ids]


def search_seconds(bench: str, seed: int) -> float:
    """Wall seconds of the committed search (sum of its log's per-generation seconds; extraction excluded)."""
    path = REPO / "results" / SETTINGS[bench]["experiment"] / "runs" / f"seed{seed}" / "log.csv"
    from evoproxy.runfiles import read_log

    return math.fsum(float(r["seconds"]) for r in read_log(path))


def run_bench(bench: str, seeds, sizes, jobs: int, holdout: int | None = None) -> list[dict]:
    """One result row per (seed, method, search-set size) on ``bench``'s holdout."""
    import torch

    from mqbench.benchmarks import get_benchmark
    from primitives.core import fixed_threads

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: not fit time
    b = get_benchmark(bench)
    sizes = sorted({min(n, SETTINGS[bench]["search"]) for n in sizes})
    parzc_proxies, evolved = proxy_sets(bench, seeds)
    groups = item_ids(bench, seeds, max(sizes), holdout)
    ids = list(dict.fromkeys(i for g in groups.values() for i in g))
    feats = features(bench, ids, parzc_proxies, evolved, jobs)
    with fixed_threads(1):  # every fit on one thread (fit_parzc sets it too): comparable training times
        return _fits(bench, b, seeds, sizes, groups, feats, parzc_proxies, evolved)


def _fits(bench, b, seeds, sizes, groups, feats, parzc_proxies, evolved) -> list[dict]:
    from evoproxy.calibrate import calibrate_on
    from evoproxy.parzc import fit_parzc

    hold = groups["holdout"]
    truth = [float(v) for v in b.ground_truth(hold)]
    best, best_scores = best_handmade(bench, hold)
    out = []

    def record(seed, method, n, scores, seconds, search_tau=math.nan, extra=""):
        out.append({"bench": bench, "seed": seed, "method": method, "n_search": n, **correlations(scores, truth),
                    "search_kendall": search_tau, "train_seconds": seconds, "note": extra})

    for s in seeds:
        proxy = evolved[s]
        terms = feats["terms"][s]
        record(s, "evolved", SETTINGS[bench]["search"], [weighted(terms[i], proxy.orientation) for i in hold],
               search_seconds(bench, s), extra=proxy.formula)
        record(s, "best hand-made", 0, best_scores, 0.0, extra=best)
        for n in sizes:
            train = groups[s][:n]
            y = [float(v) for v in b.ground_truth(train)]
            t0 = time.perf_counter()
            cal = calibrate_on(proxy, [terms[i] for i in train], y)
            seconds = time.perf_counter() - t0
            w = cal.layer_weights["weights"]
            record(s, "calibrated", n, [weighted(terms[i], proxy.orientation, w) for i in hold], seconds,
                   cal.layer_weights["fit"]["search_kendall_after"], f"{len(w)} positions")
            for method, rows_of in (("parzc", lambda i: feats["rows"][i]),
                                    ("parzc+evolved", lambda i: with_terms(feats["rows"][i], terms[i]))):
                kept = [(rows_of(i), yi) for i, yi in zip(train, y) if rows_of(i) is not None]
                names = dict(parzc_proxies, **({"evolved": proxy} if method == "parzc+evolved" else {}))
                model = fit_parzc([r for r, _ in kept], [v for _, v in kept], names, seed=s)
                record(s, method, n, list(model.scores([rows_of(i) for i in hold])), model.fit["seconds"],
                       model.fit["search_kendall_after"], f"{model.fit['positions']} positions")
                if method == "parzc" and n == max(sizes):
                    model.save(results_dir("parametric") / "models" / f"parzc_{bench}_seed{s}.json")
            if n == max(sizes):
                cal.save(results_dir("parametric") / "models" / f"calibrated_{bench}_seed{s}.json")
            log(f"{bench} seed {s} n={n}: " + ", ".join(f"{r['method']} τ {r['kendall']:.3f}" for r in out[-3:]))
    for r in out:
        r["extract_seconds_per_item"] = feats["seconds"]
    return out


def findings(rows: list[dict]) -> str:
    """Where calibration / ParZC help or overfit, computed from the rows (largest training set per benchmark)."""
    parts = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        def tau(method, key="kendall"):
            group = [r for r in rows if r["bench"] == bench and r["method"] == method]
            n = max(r["n_search"] for r in group)
            return mean_std([r[key] for r in group if r["n_search"] == n])[0]
        for method in TRAINED:
            d = tau(method) - tau("evolved")
            gap = tau(method, "search_kendall") - tau(method)
            parts.append(f"{SETTINGS[bench]['label']} {method}: holdout τ {d:+.3f} vs the evolved formula "
                         f"({'helps' if d > 0 else 'hurts'}), in-sample minus holdout τ {gap:.3f}"
                         f"{' (overfits)' if gap > 0.1 else ''}")
    return "Findings (mean over seeds, largest training set): " + "; ".join(parts) + "."


def kept_rows(path, benches) -> list[dict]:
    """The rows of ``runs.csv`` for benchmarks other than ``benches`` (numbers parsed back)."""
    if not path.exists():
        return []
    out = []
    for r in csv.DictReader(open(path, newline="")):
        if r["bench"] in benches:
            continue
        for k, v in r.items():
            if k not in ("bench", "method", "note"):
                r[k] = float(v) if v not in ("",) else math.nan
        r["seed"], r["n_search"], r["n"], r["failed"] = (int(r[k]) for k in ("seed", "n_search", "n", "failed"))
        out.append(r)
    return out


def summary_rows(rows: list[dict], sizes_only: bool = False) -> list[dict]:
    out = []
    keys = dict.fromkeys((r["bench"], r["method"], r["n_search"]) for r in rows)
    for bench, method, n in keys:
        group = [r for r in rows if (r["bench"], r["method"], r["n_search"]) == (bench, method, n)]
        is_max = n == max(r["n_search"] for r in rows if r["bench"] == bench and r["method"] == method)
        if (sizes_only and method not in TRAINED) or (not sizes_only and not is_max):
            continue
        row = {"benchmark": SETTINGS[bench]["label"], "method": method, "n_search": n, "seeds": len(group),
               "n_holdout": group[0]["n"]}
        for k in ("spearman", "kendall", "search_kendall", "train_seconds"):
            m, sd = mean_std([r[k] for r in group])
            row[k] = "-" if not math.isfinite(m) else (f"{m:.3f} ± {sd:.3f}" if k != "train_seconds" else f"{m:.1f}")
        row["note"] = group[0]["note"] if method == "best hand-made" else ""
        out.append(row)
    return out


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(r["bench"] for r in rows))
    fig, axes = plt.subplots(1, len(benches), figsize=(5 * len(benches), 3.6), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        for method, style in (("calibrated", "o-"), ("parzc", "s-"), ("parzc+evolved", "^-")):
            ns = sorted({r["n_search"] for r in rows if r["bench"] == bench and r["method"] == method})
            stats = [mean_std([r["kendall"] for r in rows if (r["bench"], r["method"], r["n_search"]) == (bench, method, n)])
                     for n in ns]
            ax.errorbar(ns, [m for m, _ in stats], yerr=[sd for _, sd in stats], fmt=style, capsize=3, label=method)
        for method, color in (("evolved", "k"), ("best hand-made", "gray")):
            m, _ = mean_std([r["kendall"] for r in rows if r["bench"] == bench and r["method"] == method])
            ax.axhline(m, color=color, ls="--", lw=1, label=f"{method} (mean)")
        ax.set_title(SETTINGS[bench]["label"])
        ax.set_xlabel("labelled search items")
        ax.set_ylabel("holdout Kendall τ")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sizes", default="25,50,100")
    p.add_argument("--benches", default=f"{NB201},{MQ}")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--holdout", type=int, default=1000, help="NAS-Bench-201 holdout architectures (MQ: all 454)")
    p.add_argument("--extract-only", action="store_true", help="only fill the statistics and feature caches")
    p.add_argument("--tables-only", action="store_true",
                   help="rewrite table.md, sizes.md and the plot from the committed runs.csv (no fits)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    benches = [] if args.tables_only else [b for b in args.benches.split(",") if b.strip()]
    if args.extract_only:
        for bench in benches:
            parzc_proxies, evolved = proxy_sets(bench, seeds)
            groups = item_ids(bench, seeds, min(max(sizes), SETTINGS[bench]["search"]), args.holdout)
            features(bench, list(dict.fromkeys(i for g in groups.values() for i in g)), parzc_proxies, evolved, args.jobs)
        return 0
    out = results_dir("parametric")
    rows = kept_rows(out / "runs.csv", benches)  # benches not run now keep their committed rows
    for bench in benches:
        t1 = time.time()
        new = run_bench(bench, seeds, sizes, args.jobs, args.holdout)
        for r in new:
            r["bench_wall_seconds"] = time.time() - t1
        rows += new
    if benches:
        write_report(out, "runs", rows, list(rows[-1]), "One row per fit (see table.md).")
    walls = {r["bench"]: float(r.get("bench_wall_seconds") or math.nan) for r in rows}
    seeds_of = {b: sorted({int(r["seed"]) for r in rows if r["bench"] == b}) for b in walls}
    n_hold = {r["bench"]: int(r["n"]) + int(r["failed"]) for r in rows if r["method"] == "evolved"}
    caption = ("Holdout Spearman ρ and Kendall τ, mean ± sd over search seeds (" + "; ".join(
        f"{SETTINGS[b]['label']}: {', '.join(map(str, v))}" for b, v in seeds_of.items()) + "). "
               f"NAS-Bench-201: n = {n_hold.get(NB201)} holdout architectures (sample(n, 0, 'holdout'), split seed 0), ground "
               f"truth CIFAR10TestAccuracy200Epochs; MQ ResNet-20 W{{2,3,4}}A8: all 454 holdout configurations, "
               f"ground truth PTQ top-1. Training items: the first n of sample(n_max, seed, 'search') (the items "
               f"the evolved proxy of that seed was searched on; MQ's search split has only 50). evolved: committed "
               f"best.json, train s = its search's generation seconds; calibrated: `evoproxy calibrate` weights "
               f"(1 - DiffKendall, decay 0.01, 300 Adam steps); parzc: evoproxy.parzc (MABN-style mixer on the "
               f"node-wise terms of {', '.join(proxy_sets(NB201, seeds[:1])[0])}; MQ adds bit_sum, model_size, "
               f"hawq_v2); parzc+evolved: the same with the evolved formula's per-layer terms as one more "
               f"statistic; best hand-made: best Spearman in the committed correlation table, its committed "
               f"per-item scores. search τ: in-sample Kendall on the training items. Train s: fit time on the "
               f"cached statistics (statistics extraction excluded, shared by all methods). Command: "
               f"`python -m experiments.parametric --benches B --seeds S --sizes {args.sizes} --holdout "
               f"{n_hold.get(NB201)}` (one run per benchmark; rows of benchmarks not run are kept from runs.csv); "
               f"wall time per benchmark on a 2-core CPU (statistics from the disk cache where present, plus "
               f"all fits; the machine's load is in the commit that wrote the rows): "
               + ", ".join(f"{SETTINGS[b]['label']} " + (f"{w / 60:.1f} min" if math.isfinite(w) else "not recorded")
                           for b, w in walls.items()) + ".")
    cols = ["benchmark", "method", "n_search", "seeds", "n_holdout", "spearman", "kendall", "search_kendall",
            "train_seconds", "note"]
    headers = {"n_search": "n train", "n_holdout": "n holdout", "spearman": "holdout ρ", "kendall": "holdout τ",
               "search_kendall": "search τ (in-sample)", "train_seconds": "train s"}
    announce(*write_report(out, "table", summary_rows(rows), cols, caption + "\n\n" + findings(rows), headers))
    announce(*write_report(out, "sizes", summary_rows(rows, sizes_only=True), cols,
                          "Effect of the number of labelled search items. " + caption, headers))
    plot(rows, out / "sizes.png")
    announce(out / "sizes.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
