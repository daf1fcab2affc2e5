"""MQ-Bench-C10: EMQ's Table-1 analogue — every MQ baseline vs evolved proxies on the holdout split.

    python -m experiments.mq_correlation [--search-seeds 0,1,2] [--jobs 1]

1. Evolves one MQ proxy per search seed on the ResNet-20 table's search split (settings ``SEARCH``)
   into ``results/mq_correlation/runs/seed<S>/`` (existing runs are resumed / reused).
2. Scores every registered MQ baseline, the proxy files in ``--extra`` (default: EMQ's published proxy in
   its two readings, ``EMQ_PUBLISHED``) and the evolved
   ``best.json`` files on the whole holdout split of the ResNet-20 table (per-item scores cached in
   ``items_resnet20.csv``) -> ``table_resnet20.csv/.md``.
3. Transfer: when a ResNet-32 table exists (``mqbench/tables/resnet32_cifar10_w234a8.csv``), the same
   proxies (evolved on ResNet-20) on all of its rows -> ``table_resnet32.csv/.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from experiments.common import (announce, evolved_rows, log, results_dir, score_with_cache, seeded_searches,
                                write_report)

# the committed runs: one population scored at full fidelity (before multi-fidelity existed)
SEARCH = dict(samples=50, population=32, generations=20, structure="emq", fitness="spearman_partial",
              multi_fidelity=False)
COLUMNS = ["proxy", "kendall", "spearman", "pearson", "spearman_top20", "spearman_top50", "spearman_top100",
           "partial_spearman", "n", "failed", "seconds_per_sample", "formula"]
HEADERS = {"spearman": "ρ", "kendall": "τ", "pearson": "r", "spearman_top20": "ρ@20%", "spearman_top50": "ρ@50%",
           "spearman_top100": "ρ@100%", "partial_spearman": "partial ρ (size)", "seconds_per_sample": "s/config"}
METRICS = COLUMNS[1:-1]
TABLES = Path(__file__).resolve().parent.parent / "mqbench" / "tables"
PROXIES = Path(__file__).resolve().parent.parent / "examples" / "proxies"
# EMQ's published genotype (docs/emq_published_proxy.md); how bits enter is not in EMQ's public code
EMQ_PUBLISHED = [PROXIES / "emq_published.json", PROXIES / "emq_published_alt.json"]
EMQ_CAPTION = ("emq_published / emq_published_alt: EMQ's published proxy (tree_genov1 of EMQ-series, operator "
               "table of LPZero/PicoNAS: abslog, softmax over output channels, relu, sqrt, product; over all "
               "Conv2d/Linear layers in forward order, EMQ's reversed gradient list not reproduced) in two readings "
               "of how the bit configuration enters, which EMQ's public code does not show: R1 (emq_published) "
               "multiplies each layer's input tensors (virtual gradient, weight) by its bit-width, as EMQ's "
               "bsnip/bsynflow do; R2 (emq_published_alt) multiplies each layer's scalar by it. Since the "
               "softmax's mean is 1/C_out, they equal mean_l b_l^(1/2) resp. b_l / C_out,l * mean(sqrt(relu(W_l))); "
               "pretrained FP weights here (EMQ's script used a randomly initialised network). ")


def rows_for(reports: dict, evolved: dict[int, str]) -> list[dict]:
    from evoproxy.language.tree import load_proxy

    rows = []
    for name, rep in reports.items():
        if name in evolved.values():
            continue
        formula = load_proxy(name).formula if name.endswith(".json") else ""
        rows.append({"proxy": Path(name).stem if name.endswith(".json") else name, **{k: rep[k] for k in METRICS},
                     "formula": formula})
    return rows + evolved_rows(reports, evolved, METRICS)


def main(argv=None) -> int:
    from evoproxy.scoring.baselines import proxy_names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--search-seeds", default="0,1,2")
    p.add_argument("--extra", default=",".join(str(e) for e in EMQ_PUBLISHED),
                   help="comma-separated proxy JSON files to include (default: EMQ's published proxy, two readings)")
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.search_seeds.split(",") if s.strip()]
    evolved = seeded_searches("mq_correlation", "mq-resnet20-cifar10", seeds, args.jobs, SEARCH)
    extra = [e for e in args.extra.split(",") if e.strip()]
    proxies = proxy_names("mq") + extra + list(evolved.values())
    out = results_dir("mq_correlation")
    caption_common = (f"Proxies on one batch of 64 CIFAR-10 training images (seed 0), FP ResNet in eval mode. "
                      f"Evolved proxies: `evoproxy search` on the {SEARCH['samples']} search-split configurations "
                      f"of the ResNet-20 table, population {SEARCH['population']}, {SEARCH['generations']} "
                      f"generations, structure {SEARCH['structure']}, fitness {SEARCH['fitness']} (mean of Spearman "
                      f"and partial Spearman given model size), search seeds {', '.join(map(str, seeds))}. "
                      f"s/config: worker time per configuration, per-network work (Hessian, FP primitives) amortised. "
                      + (EMQ_CAPTION if any(Path(e).stem.startswith("emq_published") for e in args.extra.split(",")) else ""))
    reports = score_with_cache("mq-resnet20-cifar10", proxies, None, 0, "holdout", out / "items_resnet20.csv",
                               jobs=args.jobs)[None]
    n = next(iter(reports.values()))["n_items"]
    caption = (f"MQ-Bench-C10, ResNet-20 W{{2,3,4}}A8 table: n = {n} holdout configurations (split seed 0; the "
               f"other 50 are the search split), ground truth PTQ top-1 on the JPEG CIFAR-10 test set. "
               f"Noise ceiling (two calibration seeds, 50 configurations): Spearman 0.996. " + caption_common)
    announce(*write_report(out, "table_resnet20", rows_for(reports, evolved), COLUMNS, caption, HEADERS))
    r32 = TABLES / "resnet32_cifar10_w234a8.csv"
    if r32.exists():
        reports = score_with_cache("mq-resnet32-cifar10", proxies, None, 0, "all", out / "items_resnet32.csv",
                                   jobs=args.jobs)[None]
        n = next(iter(reports.values()))["n_items"]
        caption = (f"Transfer: MQ-Bench-C10 ResNet-32 W{{2,3,4}}A8 table, all n = {n} configurations, proxies "
                   f"evolved on ResNet-20 (no search on ResNet-32). " + caption_common)
        announce(*write_report(out, "table_resnet32", rows_for(reports, evolved), COLUMNS, caption, HEADERS))
    else:
        log(f"no ResNet-32 table at {r32}; build it with 'evoproxy table build --model resnet32 ...' for the transfer table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
