"""Tables and the progress plot of :mod:`experiments.search_ablation` from its finished run folders."""
from __future__ import annotations

import json
import math
from pathlib import Path

from evoproxy.evolution.runfiles import read_log
from experiments.common import announce, mean_std, write_report

RUN_COLUMNS = ["bench", "setting", "seed", "top_holdout", "best_holdout", "best_rank", "top_fitness",
               "top_validation", "best_validation", "top_partial", "best_partial", "generations", "population",
               "search_seconds", "n_holdout", "top_formula", "best_formula"]
TABLE_COLUMNS = ["bench", "setting", "seeds", "top_holdout", "top_min", "best_holdout", "best_min", "best_partial",
                 "fitness", "generations", "population", "search_seconds"]
HEADERS = {"top_holdout": "holdout ρ, best fitness (mean ± std)", "top_min": "min", "best_holdout":
           "holdout ρ, validation choice (mean ± std)", "best_min": "min", "best_partial": "partial ρ, validation choice",
           "fitness": "search fitness", "search_seconds": "search s"}


def _runs(out: Path) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/holdout.json"))]
    rows = []
    for d in docs:
        t, b = d["top"], d["best"]
        rows.append({"bench": d["bench"], "setting": d["setting"], "seed": d["seed"], "top_holdout": t["holdout_spearman"],
                     "best_holdout": b["holdout_spearman"], "best_rank": d["best_rank"], "top_fitness": t["fitness"],
                     "top_validation": t["validation_fitness"], "best_validation": b["validation_fitness"],
                     "top_partial": t["holdout_partial_spearman"], "best_partial": b["holdout_partial_spearman"],
                     "generations": d["generations"], "population": d["population"],
                     "search_seconds": round(d["search_seconds"], 1), "n_holdout": d["n_holdout"],
                     "top_formula": t["formula"], "best_formula": b["formula"]})
    return rows


def _pm(values) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}" if math.isfinite(m) else "-"


def write_ablation_report(out: Path, benches: dict, settings: dict, common: dict) -> None:
    rows = _runs(out)
    if not rows:
        return
    order = {s: i for i, s in enumerate(settings)}
    rows.sort(key=lambda r: (r["bench"], order.get(r["setting"], 99), r["seed"]))
    cap_runs = ("One row per search run (see experiments/search_ablation.py): top = the hall-of-fame member with the "
                "best search fitness, best = the one chosen on the validation items (best.json).")
    paths = list(write_report(out, "runs", rows, RUN_COLUMNS, cap_runs))
    table = []
    for bench in benches:
        for setting in settings:
            rs = [r for r in rows if r["bench"] == bench and r["setting"] == setting]
            if not rs:
                continue
            table.append({"bench": bench, "setting": setting, "seeds": ",".join(str(r["seed"]) for r in rs),
                          "top_holdout": _pm([r["top_holdout"] for r in rs]),
                          "top_min": min(r["top_holdout"] for r in rs),
                          "best_holdout": _pm([r["best_holdout"] for r in rs]),
                          "best_min": min(r["best_holdout"] for r in rs),
                          "best_partial": _pm([r["best_partial"] for r in rs]),
                          "fitness": _pm([r["top_fitness"] for r in rs]),
                          "generations": _pm([r["generations"] for r in rs]).replace(".000", ""),
                          "population": ",".join(sorted({str(r["population"]) for r in rs})),
                          "search_seconds": _pm([r["search_seconds"] for r in rs])})
    nb, mq = benches["nb201"], benches["mq"]
    caption = (f"Search settings on an equal time budget per run, one idle 2-core machine, statistics of the search "
               f"and validation items extracted before each run. NAS-Bench-201 (nb201): {nb['samples']} search "
               f"architectures + {int(nb['samples'] * nb['validation'])} validation, fitness {nb['fitness']}, "
               f"--time-budget {nb['time_budget']:g}; holdout n = 1000 (holdout split, sample seed 1), ground truth "
               f"CIFAR10TestAccuracy200Epochs. MQ ResNet-20 W{{2,3,4}}A8 (mq): {mq['samples']} search configurations (the whole search split; "
               f"no validation items: best = top), fitness {mq['fitness']}, --time-budget "
               f"{mq['time_budget']:g}; holdout all 454 configurations, ground truth PTQ top-1, partial ρ given the "
               "model size. Population sized by the budget, generations until the budget; multi-fidelity on. "
               "Settings: random / stratified search sample; -distinct: --distinct-rankings; -nodiv: plain tournament; islands: 4 islands, ring "
               "migration every 5 generations, restart after 8 stagnant generations. Std over seeds (ddof 1).")
    paths += write_report(out, "table", table, TABLE_COLUMNS, caption, headers=HEADERS)
    paths.append(_plot(out, rows, benches, settings))
    announce(*paths)


def _plot(out: Path, rows: list[dict], benches: dict, settings: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [b for b in benches if any(r["bench"] == b for r in rows)]
    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-.", (0, (5, 1))]
    for ax, bench in zip(axes[0], shown):
        for k, setting in enumerate(settings):
            rs = [r for r in rows if r["bench"] == bench and r["setting"] == setting]
            for j, r in enumerate(rs):
                log = read_log(out / "runs" / f"{bench}-{setting}-s{r['seed']}")
                t, best, acc = [], [], 0.0
                for row in log:
                    acc += float(row["seconds"])
                    t.append(acc)
                    best.append(max(float(row["best_fitness"]), best[-1] if best else -math.inf))
                # lines that coincide stay visible: each setting has its own style and width, drawn see-through
                ax.plot(t, best, color=colours[k % len(colours)], linestyle=styles[k % len(styles)],
                        linewidth=2.6 - 0.4 * k, alpha=0.55, label=setting if j == 0 else None, drawstyle="steps-post")
        ax.set_title(f"{bench}: best search fitness vs seconds (every seed)")
        ax.set_xlabel("search seconds (generations, from log.csv)")
        ax.set_ylabel("best fitness so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "progress.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
