"""Ablation: diversity-prompting selection on/off x compatibility screening on/off, several seeds each.

    python -m experiments.ablation [--bench mq-resnet20-cifar10] [--seeds 0,1,2] [--generations 20]

Every run is an ordinary ``evoproxy search`` (runs under ``results/ablation/runs/``, resumed when
present). Reports per setting: best search fitness vs generation (mean over seeds, ``best_fitness.png``),
final best fitness (mean ± std), mean valid-candidate rate, mean unique formulas in the population,
mean pairwise score distance, candidates scored and wall time.
"""
from __future__ import annotations

import argparse
import csv
import time

import numpy as np

from experiments.common import announce, log, mean_std, results_dir, run_or_resume_search, write_table
from experiments.plot import line_chart

SETTINGS = [("diversity + screening", True, True), ("diversity only", True, False),
            ("screening only", False, True), ("neither", False, False)]
COLUMNS = ["setting", "seeds", "final_best", "valid_rate", "unique_formulas", "pairwise_distance",
           "candidates", "wall_s"]
HEADERS = {"final_best": "final best fitness", "valid_rate": "valid rate", "unique_formulas": "unique formulas",
           "pairwise_distance": "mean pairwise 1 − abs(ρ)", "candidates": "candidates scored", "wall_s": "wall s / run"}


def main(argv=None) -> int:
    from evoproxy.search import SearchConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", default="mq-resnet20-cifar10")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--fitness", default="spearman_partial")
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = results_dir("ablation")
    rows, series = [], []
    for label, diversity, screening in SETTINGS:
        logs, walls = [], []
        for s in seeds:
            tag = f"{'div' if diversity else 'nodiv'}_{'screen' if screening else 'noscreen'}_seed{s}"
            run = out / "runs" / tag
            log(f"{label}, seed {s} -> {run}")
            config = SearchConfig(bench=args.bench, out=str(run), samples=args.samples, population=args.population,
                                  generations=args.generations, seed=s, fitness=args.fitness, diversity=diversity,
                                  screening=screening, jobs=args.jobs, progress=False)
            start = time.perf_counter()
            run_or_resume_search(config)
            rows_log = list(csv.DictReader(open(run / "log.csv")))
            logs.append(rows_log)
            walls.append(sum(float(r["seconds"]) for r in rows_log))
            log(f"  {time.perf_counter() - start:.0f} s this call")
        best = np.array([[float(r["best_fitness"]) for r in lg] for lg in logs])
        series.append((label, list(range(best.shape[1])), list(best.mean(axis=0))))
        m, sd = mean_std(best[:, -1])
        per_run = lambda key: [np.mean([float(r[key]) for r in lg]) for lg in logs]  # noqa: E731
        rows.append({"setting": label, "seeds": len(seeds), "final_best": f"{m:.4f} ± {sd:.4f}",
                     "valid_rate": float(np.mean(per_run("valid_rate"))),
                     "unique_formulas": float(np.mean(per_run("unique_formulas"))),
                     "pairwise_distance": float(np.mean(per_run("mean_pairwise_distance"))),
                     "candidates": float(np.mean([sum(int(r["evaluated"]) for r in lg) for lg in logs])),
                     "wall_s": float(np.mean(walls))})
    caption = (f"Ablation on {args.bench}: {args.samples} search-split items, population {args.population}, "
               f"{args.generations} generations, fitness {args.fitness}, structure emq, seeds "
               f"{', '.join(map(str, seeds))}; valid rate, unique formulas and pairwise distance are means over "
               f"generations and seeds; wall s is the evolution time per run (primitive extraction excluded), 2-core machine.")
    same = [f"'{a[0]}' and '{b[0]}'" for i, a in enumerate(series) for b in series[i + 1:] if a[2] == b[2]]
    if same:
        caption += (" Identical mean best-fitness curves (the plot draws them on top of each other): "
                    + "; ".join(same) + ".")
    paths = write_table(out, "table", rows, COLUMNS, caption, HEADERS, digits=3)
    png = line_chart(out / "best_fitness.png", series, f"best search fitness ({args.bench}, mean of {len(seeds)} seeds)",
                     "generation", "fitness")
    announce(*paths, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
