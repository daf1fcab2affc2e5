"""NAS-Bench-201: every NAS baseline vs evolved proxies on >= 1000 holdout architectures.

    python -m experiments.nb201_correlation [--samples 1000] [--seed 0] [--search-seeds 0,1,2] [--jobs 2]

1. Evolves one proxy per search seed (``evoproxy search`` settings below) into
   ``results/nb201_correlation/runs/seed<S>/`` (an existing run is resumed / reused).
2. Scores every registered NAS baseline and every evolved ``best.json`` on the same ``--samples``
   holdout architectures (per-item scores cached in ``items.csv``, so a re-run scores only what is new).
3. Writes one table per ground-truth column present in the NATS table (``table_<column>.csv/.md``).
"""
from __future__ import annotations

import argparse

from experiments.common import announce, evolved_rows, results_dir, score_with_cache, seeded_searches, write_report

BENCH = "nb201-cifar10"
# the committed runs: one population scored at full fidelity (before multi-fidelity existed)
SEARCH = dict(samples=100, population=64, generations=40, structure="emq", fitness="spearman", multi_fidelity=False)
COLUMNS = ["proxy", "spearman", "kendall", "pearson", "spearman_top20", "spearman_top50", "spearman_top100",
           "partial_spearman", "n", "failed", "seconds_per_sample", "formula"]
HEADERS = {"spearman": "ρ", "kendall": "τ", "pearson": "r", "spearman_top20": "ρ@20%", "spearman_top50": "ρ@50%",
           "spearman_top100": "ρ@100%", "partial_spearman": "partial ρ (params)", "seconds_per_sample": "s/arch"}
METRICS = COLUMNS[1:-1]


def rows_for(reports: dict, evolved: dict[int, str]) -> list[dict]:
    rows = []
    for name, rep in reports.items():
        if name in evolved.values():
            continue
        rows.append({"proxy": name, **{k: rep[k] for k in METRICS}, "formula": ""})
    return rows + evolved_rows(reports, evolved, METRICS)


def main(argv=None) -> int:
    from evoproxy.scoring.baselines import proxy_names
    from mqbench.bench.benchmarks import get_benchmark

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the holdout sample")
    p.add_argument("--search-seeds", default="0,1,2")
    p.add_argument("--proxies", default=None, help="baselines to include (default: all NAS baselines)")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.search_seeds.split(",") if s.strip()]
    evolved = seeded_searches("nb201_correlation", BENCH, seeds, args.jobs, SEARCH)
    baselines = args.proxies.split(",") if args.proxies else proxy_names("nas")
    bench = get_benchmark(BENCH)
    columns = list(bench.columns)
    out = results_dir("nb201_correlation")
    reports = score_with_cache(BENCH, baselines + list(evolved.values()), args.samples, args.seed, "holdout",
                               out / "items.csv", gt_columns=columns, jobs=args.jobs)
    for column in columns:
        rows = rows_for(reports[column], evolved)
        caption = (f"NAS-Bench-201 proxies on n = {args.samples} holdout architectures (sample seed {args.seed}, "
                   f"split seed 0), ground truth {column}; proxies on one batch of 64 CIFAR-10 training images "
                   f"(seed 0), networks initialised with seed = architecture index. Evolved proxies: "
                   f"`evoproxy search` on {SEARCH['samples']} search-split architectures, population "
                   f"{SEARCH['population']}, {SEARCH['generations']} generations, structure {SEARCH['structure']}, "
                   f"fitness {SEARCH['fitness']}, search seeds {', '.join(map(str, seeds))}. Partial ρ controls for "
                   f"parameter count; s/arch is the worker time per architecture (one thread).")
        announce(*write_report(out, f"table_{column}", rows, COLUMNS, caption, HEADERS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
