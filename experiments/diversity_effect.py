"""What diversity-prompting selection changes in the parents it picks, measured on real populations.

    python -m experiments.diversity_effect [--runs results/search_ablation/runs] [--tournaments 20000]

For every run folder that still holds its ``checkpoint.json`` (kept locally, not committed) the final
population of each island is read, and the same random tournaments (size ``tournament`` of the run) are
decided twice: on the fitness alone and on ``fitness + novelty_weight * (1 - |ρ(scores, elite)|)``
(:func:`evoproxy.evolution.selection.select_parents`). Reported per run: the share of tournaments whose winner
differs, the spread of the novelty bonus (``novelty_weight * novelty``) against the spread of the fitness
in the population, and the population's mean pairwise distance. Writes ``results/search_ablation/diversity.md``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from experiments.common import RESULTS, announce, write_report

COLUMNS = ["run", "population", "winner_changed", "bonus_range", "fitness_range", "bonus_median", "fitness_iqr",
           "mean_pairwise_distance"]


def effect(population: list[dict], tournament: int, weight: float, draws: int, seed: int = 0) -> dict:
    from evoproxy.evolution.selection import mean_pairwise_distance, novelty

    fitness = np.array([p["fitness"] for p in population], dtype=float)
    scores = [p["scores"] for p in population]
    elite = scores[int(np.argmax(fitness))]
    bonus = weight * novelty(scores, elite)
    key = fitness + bonus
    rng = np.random.default_rng(seed)
    changed = 0
    for _ in range(draws):
        c = rng.choice(len(population), size=min(tournament, len(population)), replace=False)
        changed += int(c[np.argmax(fitness[c])] != c[np.argmax(key[c])])
    q1, q3 = np.percentile(fitness, [25, 75])
    return {"population": len(population), "winner_changed": changed / draws,
            "bonus_range": float(bonus.max() - bonus.min()), "fitness_range": float(fitness.max() - fitness.min()),
            "bonus_median": float(np.median(bonus)), "fitness_iqr": float(q3 - q1),
            "mean_pairwise_distance": mean_pairwise_distance(scores)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.diversity_effect", description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(RESULTS / "search_ablation" / "runs"))
    p.add_argument("--tournaments", type=int, default=20000)
    args = p.parse_args(argv)
    rows = []
    for ckpt in sorted(Path(args.runs).glob("*/checkpoint.json")):
        state = json.loads(ckpt.read_text())
        cfg = json.loads((ckpt.parent / "config.json").read_text())
        islands = state.get("islands") or [{"population": state["population"]}]
        for k, isl in enumerate(islands):
            row = effect(isl["population"], int(cfg.get("tournament", 3)), float(cfg.get("novelty_weight", 0.2)),
                         args.tournaments)
            rows.append({"run": ckpt.parent.name + (f" island {k}" if len(islands) > 1 else ""), **row})
    caption = ("Diversity-prompting selection on the final population of each search_ablation run (checkpoint.json): "
               "share of size-3 tournaments (same contenders) whose winner changes when the novelty bonus "
               "0.2 * (1 - |ρ(scores, elite)|) is added to the fitness; the bonus's range and median vs the fitness's "
               f"range and interquartile range; {args.tournaments} tournaments per population.")
    out = Path(args.runs).parent
    announce(*write_report(out, "diversity", rows, COLUMNS, caption))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
