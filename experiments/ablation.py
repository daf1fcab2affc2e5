"""Ablation: diversity-prompting selection on/off x compatibility screening on/off, several seeds each.

    python -m experiments.ablation [--bench mq-resnet20-cifar10] [--seeds 0,1,2] [--generations 20]
    python -m experiments.ablation --from-logs     # table and figure from the committed runs, never search

Every run is an ordinary ``evoproxy search`` (runs under ``results/ablation/runs/``, resumed when
present; ``--from-logs`` never searches and fails when a run is missing or was made with other
settings, so the table and figure are rebuilt from the committed logs alone). Reports per setting:
best search fitness vs generation (mean over seeds with the min-max band, ``best_fitness.png``, drawn
by :func:`evoproxy.plot.ablation`), final best fitness (mean ± std), mean valid-candidate rate, mean
unique formulas in the population, mean pairwise score distance, candidates scored and wall time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from evoproxy.errors import DataError
from evoproxy.evolution.runfiles import read_log
from experiments.common import announce, finished_run, log, mean_std, results_dir, run_or_resume_search, write_report

SETTINGS = [("diversity + screening", True, True), ("diversity only", True, False),
            ("screening only", False, True), ("neither", False, False)]
COLUMNS = ["setting", "seeds", "final_best", "valid_rate", "unique_formulas", "pairwise_distance",
           "candidates", "wall_s"]
HEADERS = {"final_best": "final best fitness", "valid_rate": "valid rate", "unique_formulas": "unique formulas",
           "pairwise_distance": "mean pairwise 1 − abs(ρ)", "candidates": "candidates scored", "wall_s": "wall s / run"}


def main(argv=None) -> int:
    from evoproxy import plot
    from evoproxy.evolution.searchconfig import SearchConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", default="mq-resnet20-cifar10")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--fitness", default="spearman_partial")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--from-logs", action="store_true",
                   help="never search: rebuild the table and best_fitness.png from the finished runs under "
                        "results/ablation/runs/ (an error when one is missing or was made with other settings)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = results_dir("ablation")
    rows, curves = [], {}
    for label, diversity, screening in SETTINGS:
        logs, walls = [], []
        for s in seeds:
            tag = f"{'div' if diversity else 'nodiv'}_{'screen' if screening else 'noscreen'}_seed{s}"
            run = out / "runs" / tag
            log(f"{label}, seed {s} -> {run}")
            config = SearchConfig(bench=args.bench, out=str(run), samples=args.samples, population=args.population,
                                  generations=args.generations, seed=s, fitness=args.fitness, diversity=diversity,
                                  screening=screening, jobs=args.jobs, progress=False,
                                  multi_fidelity=False)  # the committed ablation: before multi-fidelity
            if args.from_logs and not finished_run(config):
                raise DataError(f"--from-logs: {run} holds no finished run of these settings; "
                                "run the ablation without --from-logs to search")
            start = time.perf_counter()
            run_or_resume_search(config)
            rows_log = read_log(run)
            logs.append(rows_log)
            walls.append(sum(float(r["seconds"]) for r in rows_log))
            log(f"  {time.perf_counter() - start:.0f} s this call")
        best = np.array([[float(r["best_fitness"]) for r in lg] for lg in logs])
        curves[label] = best.tolist()
        m, sd = mean_std(best[:, -1])
        per_run = lambda key: [np.mean([float(r[key]) for r in lg]) for lg in logs]  # noqa: E731
        rows.append({"setting": label, "seeds": len(seeds), "final_best": f"{m:.4f} ± {sd:.4f}",
                     "valid_rate": float(np.mean(per_run("valid_rate"))),
                     "unique_formulas": float(np.mean(per_run("unique_formulas"))),
                     "pairwise_distance": float(np.mean(per_run("mean_pairwise_distance"))),
                     "candidates": float(np.mean([sum(int(r["evaluated"]) for r in lg) for lg in logs])),
                     "wall_s": float(np.mean(walls))})
    title = (f"Ablation of diversity and screening: best fitness per generation "
             f"({args.bench}, population {args.population})")
    png = plot.ablation(curves, out / "best_fitness.png", title, ylabel=f"best search fitness ({args.fitness})",
                        caption=f"{args.samples} search-split items, fitness {args.fitness}, seeds "
                                f"{', '.join(map(str, seeds))}.")
    caption = (f"Ablation on {args.bench}: {args.samples} search-split items, population {args.population}, "
               f"{args.generations} generations, fitness {args.fitness}, structure emq, seeds "
               f"{', '.join(map(str, seeds))}; valid rate, unique formulas and pairwise distance are means over "
               f"generations and seeds; wall s is the evolution time per run (primitive extraction excluded), 2-core machine.")
    same = plot.coinciding({label: np.mean(c, axis=0) for label, c in curves.items()})
    if same:
        caption += (" Identical mean best-fitness curves (the plot marks them in its legend): "
                    + "; ".join(f"'{a}' and '{b}'" for b, a in same.items()) + ".")
    paths = write_report(out, "table", rows, COLUMNS, caption, HEADERS, digits=3)
    announce(*paths, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
