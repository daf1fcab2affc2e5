"""What a search run folder holds besides its checkpoint: log.csv, children.csv, islands.csv, hall_of_fame.json,
best.json and run.json, regenerated from the search's state after every generation (see :mod:`evoproxy.evolution.engine`); and
:func:`read_log`, the one reader of a log.csv, which gives old logs' renamed columns their current names.

Heavier imports (the tree and island modules) are made inside the writers, so that readers of a run folder
(:mod:`evoproxy.plot`, :mod:`evoproxy.results`, the experiments) stay light."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from mqbench.fileio import atomic_write_text

# log.csv columns renamed since runs were committed: old name -> current name. The search counts its
# cost-bound rejections (evoproxy.evolution.screening) in rejected_cost; logs written before the rename call it
# rejected_timeout (the wall-clock time-out the cost bound replaced), with the same values.
LOG_RENAMED = {"rejected_timeout": "rejected_cost"}


def renamed(row: dict) -> dict:
    """``row`` of a log (log.csv or a checkpoint's) with old column names replaced (the order kept)."""
    return {LOG_RENAMED.get(k, k): v for k, v in row.items()}


def read_log(path) -> list[dict]:
    """The rows of a search's ``log.csv`` (``path``: the file or its run folder), one dict per generation,
    values as strings, columns under their current names (``LOG_RENAMED``)."""
    path = Path(path)
    with open(path / "log.csv" if path.is_dir() else path, newline="") as fh:
        return [renamed(row) for row in csv.DictReader(fh)]


def _finite(v):
    return v if v is not None and math.isfinite(v) else None


def write_outputs(search) -> None:
    """log.csv, children.csv, islands.csv, hall_of_fame.json and best.json of ``search`` (an evolution.Search)."""
    from evoproxy.evolution.islands import write_island_log

    for name, rows in (("log.csv", search.log), ("children.csv", search.children)):
        if rows:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(search.out / name, buf.getvalue())
    if search.island_log:
        write_island_log(search.out / "islands.csv", search.island_log)
    hof = [{"rank": r + 1, "formula": proxy_of(search, i).formula, "fitness": i.fitness, "generation": i.generation,
            "tree": i.tree.to_json(), "orientation": i.orientation,
            **({"validation_fitness": _finite(search.val_memo.get(i.key))} if search.validation is not None else {})}
           for r, i in enumerate(search.hof)]
    atomic_write_text(search.out / "hall_of_fame.json", json.dumps(hof, indent=2, ensure_ascii=False) + "\n")
    if search.hof:
        text = json.dumps(proxy_of(search, search.best()).to_json(), indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(search.out / "best.json", text)
    atomic_write_text(search.out / "run.json", json.dumps(run_status(search), indent=2) + "\n")


def run_status(search) -> dict:
    """``run.json``: how far the run got and why it stopped (the time budget, --patience, or not yet)."""
    budget = search.config.time_budget
    return {"generation": search.generation, "elapsed_seconds": round(search.elapsed, 3),
            "preparation_seconds": round(search.prep_seconds, 3), "time_budget": budget,
            "budget_used": None if not budget else round(search.elapsed / budget, 4),
            "stopped": search.stopped or ("finished: --generations reached" if search.generation >= search.config.generations
                                          else None)}


def proxy_of(search, ind):
    """The proxy file content of hall-of-fame member ``ind`` of ``search``."""
    from evoproxy.scoring.metrics import partial_spearman, spearman
    from evoproxy.language.tree import Proxy
    from mqbench.data.dataroot import portable_path
    from primitives.items import uses_hessian

    c = search.config
    s = ind.orientation * np.asarray(ind.scores, dtype=float)
    extraction = {"noise_std": c.noise_std}
    if uses_hessian(ind.tree.terminals()):
        extraction["hutchinson_probes"] = search.probes

    info = {"bench": search.bench.name, "table": portable_path(c.table), "gt_column": c.gt_column,
            "samples": len(search.ids), "split": "search", "seed": c.seed, "structure": c.structure, "fitness": c.fitness,
            "fitness_value": ind.fitness, "search_spearman": spearman(s, search.truth),
            "search_partial_spearman": partial_spearman(s, search.truth, search.size),
            "generation_found": ind.generation, "batch": c.batch,
            **({"sampling": c.sampling} if c.sampling != "random" else {}),
            **({"validation_items": len(search.val_ids), "validation_fitness": _finite(search.val_memo.get(ind.key))}
               if search.validation is not None else {})}
    return Proxy(ind.tree, ind.orientation, extraction, info)


def log_row(search, generation: int, counts: dict, seconds: float) -> dict:
    """One row of log.csv for ``generation`` of ``search``."""
    from evoproxy.evolution.screening import LOG_REASONS
    from evoproxy.evolution.selection import mean_pairwise_distance
    from evoproxy.language.tree import render

    c = search.config
    fit = np.array([i.fitness for i in search.population])
    best = max(search.population, key=lambda i: i.fitness)
    n = max(counts["evaluated"], 1)
    return {"generation": generation, "evaluated": counts["evaluated"], "valid": counts["valid"],
            "valid_rate": round(counts["valid"] / n, 6), "cache_hits": counts["cache_hits"],
            "equivalent_hits": counts["equivalent_hits"],
            **{f"rejected_{r}": round(counts.get(f"rejected_{r}", 0) / n, 6) for r in LOG_REASONS},
            "best_fitness": round(float(fit.max()), 6), "median_fitness": round(float(np.median(fit)), 6),
            "unique_formulas": len({i.key for i in search.population}),
            "mean_pairwise_distance": round(mean_pairwise_distance([i.scores for i in search.population]), 6),
            "best_formula": render(best.tree), "seconds": round(seconds, 3),
            **(fidelity_columns(counts) if c.multi_fidelity and c.screening else {})}


def fidelity_columns(counts: dict) -> dict:
    """log.csv columns of a multi-fidelity run: children decided on a prefix of the samples (rejected early),
    scored on every sample, and of those, the ones below the entry threshold (they do not enter)."""
    return {"early_rejected": counts["early_rejected"], "full_fidelity": counts["full_fidelity"],
            "below_population": counts["below_population"]}
