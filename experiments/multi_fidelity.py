"""What multi-fidelity buys: the committed search settings re-run with it, old vs new side by side.

    python -m experiments.multi_fidelity [--benches nb201,mq] [--seeds 0,1,2] [--jobs 2]

For each benchmark and search seed, the committed search (``results/nb201_correlation/runs/seed<S>``:
NB201 population 64 x 40 generations on 100 search architectures; ``results/mq_correlation/runs/seed<S>``:
MQ ResNet-20 population 32 x 20 on 50 search configurations, fitness spearman_partial) is run again with
the batched scorer and multi-fidelity on (its default rungs, margins and entry quantile) into ``results/multi_fidelity/runs/<bench>-seed<S>``
(a finished run is reused, an interrupted one resumed: each run is kept as soon as it finishes), and its best
proxy is scored on the same holdout as the committed tables: NB201 1000 architectures (holdout split, sample
seed 1), MQ all 454 holdout configurations (per-item scores cached in ``items_<bench>.csv``). The committed
runs' figures are read from their tables and logs (search wall time: the sum of ``log.csv``'s seconds,
statistics extraction excluded in both, on the machine that made each run: say which in the caption).

Writes ``table.md`` / ``table.csv`` under ``results/multi_fidelity/``.
"""
from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from experiments.common import (REPO, announce, log, results_dir, run_or_resume_search, score_with_cache,
                                write_report)

BENCHES = {
    "nb201": dict(bench="nb201-cifar10", committed="nb201_correlation", table="table_CIFAR10TestAccuracy200Epochs.csv",
                  samples=1000, sample_seed=1, search=dict(samples=100, population=64, generations=40, structure="emq",
                                                           fitness="spearman")),
    "mq": dict(bench="mq-resnet20-cifar10", committed="mq_correlation", table="table_resnet20.csv", samples=None,
               sample_seed=0, search=dict(samples=50, population=32, generations=20, structure="emq",
                                          fitness="spearman_partial")),
}
COLUMNS = ["benchmark", "seed", "old_holdout_spearman", "new_holdout_spearman", "old_search_fitness",
           "new_search_fitness", "old_search_seconds", "new_search_seconds", "old_children", "new_children",
           "new_early_rejected", "n", "old_formula", "new_formula"]


def _log(run: Path) -> list[dict]:
    from evoproxy.evolution.runfiles import read_log

    return read_log(run)


def _committed_spearman(setting: dict, seed: int) -> float:
    with open(REPO / "results" / setting["committed"] / setting["table"], newline="") as fh:
        for row in csv.DictReader(fh):
            if row["proxy"] == f"evolved (seed {seed})":
                return float(row["spearman"])
    raise SystemExit(f"error: no committed row for seed {seed} in {setting['table']}")


def _summary(run: Path) -> dict:
    rows = _log(run)
    return {"fitness": float(rows[-1]["best_fitness"]), "seconds": sum(float(r["seconds"]) for r in rows),
            "children": sum(int(r["evaluated"]) for r in rows if int(r["generation"]) > 0),
            "early": sum(int(r.get("early_rejected") or 0) for r in rows)}


def main(argv=None) -> int:
    from evoproxy.evolution.searchconfig import SearchConfig
    from evoproxy.language.tree import load_proxy

    p = argparse.ArgumentParser(prog="python -m experiments.multi_fidelity", description=__doc__.splitlines()[0])
    p.add_argument("--benches", default="nb201,mq")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--machine", default="this machine", help="named in the caption (where the new runs ran)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = results_dir("multi_fidelity")
    rows = []
    for short in [b.strip() for b in args.benches.split(",") if b.strip()]:
        setting = BENCHES[short]
        runs = {}
        for s in seeds:
            run = out / "runs" / f"{short}-seed{s}"
            log(f"{short} seed {s} -> {run}")
            run_or_resume_search(SearchConfig(bench=setting["bench"], out=str(run), seed=s, jobs=args.jobs,
                                              progress=False, multi_fidelity=True, **setting["search"]))
            runs[s] = run
        paths = [str(runs[s] / "best.json") for s in seeds]
        reports = score_with_cache(setting["bench"], paths, setting["samples"], setting["sample_seed"], "holdout",
                                   out / f"items_{short}.csv", jobs=args.jobs)[None]
        for s in seeds:
            old_run = REPO / "results" / setting["committed"] / "runs" / f"seed{s}"
            old, new = _summary(old_run), _summary(runs[s])
            rep = reports[str(runs[s] / "best.json")]
            rows.append({"benchmark": setting["bench"], "seed": s, "old_holdout_spearman": _committed_spearman(setting, s),
                         "new_holdout_spearman": rep["spearman"], "old_search_fitness": old["fitness"],
                         "new_search_fitness": new["fitness"], "old_search_seconds": round(old["seconds"], 1),
                         "new_search_seconds": round(new["seconds"], 1), "old_children": old["children"],
                         "new_children": new["children"], "new_early_rejected": new["early"], "n": rep["n"],
                         "old_formula": load_proxy(old_run / "best.json").formula,
                         "new_formula": load_proxy(runs[s] / "best.json").formula})
        for key in ("old_holdout_spearman", "new_holdout_spearman"):
            vals = [r[key] for r in rows if r["benchmark"] == setting["bench"]]
            log(f"{short} {key}: mean {statistics.mean(vals):.3f}")
    caption = (f"Committed searches (old: one population, every child scored on every search sample, the "
               f"per-sample scorer, on the machine that made them) vs the same settings re-run with today's defaults "
               f"(new: the batched scorer, multi-fidelity on) on {args.machine}; search seeds {', '.join(map(str, seeds))}. "
               "NAS-Bench-201: 100 search architectures, population 64 x 40 generations, fitness Spearman; holdout "
               "n = 1000 (holdout split, sample seed 1), ground truth CIFAR10TestAccuracy200Epochs. MQ ResNet-20 "
               "W{2,3,4}A8: 50 search configurations, population 32 x 20, fitness spearman_partial; holdout all 454 "
               "configurations, ground truth PTQ top-1. Seconds: the search's generations (log.csv), statistics "
               "extraction excluded; children: candidates of generations 1.. (memo hits included).")
    announce(*write_report(out, "table", rows, COLUMNS, caption))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
