"""Scoring speed of the one batched scorer, and children decided per second by real multi-fidelity searches.

    python -m evoproxy.scoring_speed [--jobs 2] [--trees 200] [--seed 0] [--generations G]

For each benchmark (100 NAS-Bench-201 search samples, 50 MQ ResNet-20 search samples; the search's recipe:
default terminals and probes, batch 64; statistics extracted or read from the disk cache first):

* ``*_per_sample``: formulas/s of the scorer called one sample at a time (:func:`evoproxy.screening.score_range`
  on each sample alone, as a single model's evaluation calls it) on ``--trees`` random trees (half per structure,
  seeded), in ``--jobs`` worker processes; ``*_vectorised``: the same trees scored on all samples at once
  (:func:`evoproxy.screening.score_many`, the search's call). Rejected trees count; both run after a warm-up call
  on other trees (workers load and stack the statistics). ``*_agree``: same rejection reason and scores within
  1e-5 relative on every tree.
* ``*_decided``: children decided per second in generations 1.. of a real search with the committed settings
  (NB201 population 64, fitness spearman; MQ population 32, fitness spearman_partial; ``--generations``, default
  NB201 10, MQ 20; seed ``--seed``) with multi-fidelity on (every candidate a generation draws counts, memo hits
  included; ``*_decided_scored`` leaves memo hits out); ``*_full_decided``: the same run with
  ``--no-multi-fidelity``. ``*_early_reject_error``: the same multi-fidelity run once more with ``--audit`` (the
  same decisions, ``*_audit.same_decisions`` checks the logs), the share of its early-rejected children whose
  fitness on every sample reaches the threshold they were rejected against; ``early_reject_error``: over both
  benchmarks.

Prints one line per benchmark and, last, one JSON object. Timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

# (key, benchmark, search samples, (population, generations, fitness) of the real search): the committed settings
BENCHES = (("nb201", "nb201-cifar10", 100, (64, 10, "spearman")), ("mq", "mq-resnet20-cifar10", 50, (32, 20, "spearman_partial")))


def search_recipe(bench: str, samples: int, seed: int = 0):
    """(recipe, terminals) of a search's samples with the search's defaults (see evoproxy.evolution)."""
    from evoproxy.searchdata import DataRecipe
    from mqbench.benchmarks import BenchRef
    from primitives.core import REGISTRY
    from primitives.items import available_names, uses_hessian

    ref, b = BenchRef.resolve(bench)
    probes = b.default_probes
    names = [n for n in available_names(b) if (probes > 0 or not uses_hessian([n])) and getattr(REGISTRY[n], "default", True)]
    return DataRecipe.for_bench(ref, b.sample(samples, seed, "search"), names, probes), names


def random_trees(terminals, count: int, seed: int) -> list:
    from evoproxy.space import SearchSpace

    random.seed(seed)
    trees = []
    for structure in ("emq", "tree"):
        space = SearchSpace(list(terminals), structure)
        trees += [space.random_tree() for _ in range(count // 2 if structure == "emq" else count - count // 2)]
    return trees


def agree(a, b) -> bool:
    """Same rejection reason and, for valid trees, scores within 1e-5 relative."""
    if a.reason != b.reason:
        return False
    if a.scores is None:
        return True
    return len(a.scores) == len(b.scores) and all(abs(x - y) <= 1e-5 * max(abs(x), abs(y)) for x, y in zip(a.scores, b.scores))


def _one_at_a_time(samples, trees_json):
    """:func:`evoproxy.screening.score_range` of each tree on each sample separately (the scorer as a single model's
    evaluation calls it), joined per tree like one call on all samples (the first rejection wins)."""
    import numpy as np

    from evoproxy.screening import Scored, _is_constant, score_range
    from evoproxy.tree import parse_tree
    from primitives.core import fixed_threads

    stats = samples.stats
    out = []
    with fixed_threads(1):
        for t in trees_json:
            tree, scores, bad = parse_tree(t), [], None
            for i in range(len(stats)):
                r = score_range(tree, stats, i, i + 1, check_constant=False, stacked=samples.stacked)
                if r.reason:
                    bad = r
                    break
                scores += r.scores
            if bad is None and len(scores) > 1 and _is_constant(np.asarray(scores)):  # the scorer's own rule
                bad = Scored(None, "constant")
            out.append(bad if bad is not None else Scored(scores))
    return out


def score_one_at_a_time(samples, trees, jobs: int) -> list:
    from mqbench.parallel import map_items

    trees_json = [t.to_json() for t in trees]
    chunks = [trees_json[i::jobs * 4] for i in range(jobs * 4)]
    parts = map_items(_one_at_a_time, chunks, jobs=jobs, progress=False, setup=samples.setup())
    out = [None] * len(trees_json)
    for i, part in enumerate(parts):
        out[i::jobs * 4] = part
    return out


def decided_rate(bench: str, samples: int, population: int, generations: int, jobs: int, seed: int, fitness: str,
                 **settings) -> dict:
    """Children decided per second in generations 1.. of a real search (generation 0 is random, not children), and
    the run's log; ``settings``: SearchConfig fields (multi_fidelity, audit, ...)."""
    import tempfile
    from pathlib import Path

    from evoproxy.evolution import run_search
    from evoproxy.searchconfig import SearchConfig

    with tempfile.TemporaryDirectory(prefix="evoproxy-speed-") as tmp:
        out = Path(tmp) / "run"
        result = run_search(SearchConfig(bench=bench, out=str(out), samples=samples, population=population,
                                         generations=generations, seed=seed, jobs=jobs, fitness=fitness,
                                         progress=False, **settings))
        log = result.log
        children = (out / "children.csv").read_text() if (out / "children.csv").exists() else ""
    later = [r for r in log if int(r["generation"]) >= 1]
    decided = sum(int(r["evaluated"]) for r in later)
    scored = decided - sum(int(r["cache_hits"]) for r in later)
    seconds = sum(float(r["seconds"]) for r in later)
    return {"decided_per_s": round(decided / seconds, 1), "scored_per_s": round(scored / seconds, 1),
            "children": decided, "seconds": round(seconds, 2), "log": log, "children_csv": children,
            "best_fitness": float(log[-1]["best_fitness"]), "early": sum(int(r.get("early_rejected", 0)) for r in later)}


def early_reject_error(children_csv: str) -> tuple[float, int, int]:
    """(error, wrong, early) of an audited run: early-rejected children whose full fitness reaches their threshold."""
    import csv
    import io

    rows = [r for r in csv.DictReader(io.StringIO(children_csv)) if r["decision"] == "early"]
    wrong = sum(1 for r in rows if float(r["full_fitness"]) >= float(r["threshold"]))
    return (wrong / len(rows) if rows else 0.0), wrong, len(rows)


def _decisions(log) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in log]


def measure(bench: str, samples: int, trees: int, jobs: int, seed: int, run: tuple) -> dict:
    from evoproxy.screening import score_many
    from evoproxy.searchdata import load_samples

    recipe, names = search_recipe(bench, samples, seed)
    loaded = load_samples(recipe, jobs=jobs)
    todo = random_trees(names, trees, seed)
    warm = random_trees(names, jobs * 4, seed + 1)  # other trees: the scorer memoises subtrees' layer values
    out = {}
    results = {}
    for key, fn in (("per_sample", lambda t: score_one_at_a_time(loaded, t, jobs)),
                    ("vectorised", lambda t: score_many(loaded, t, 0, None, jobs))):
        fn(warm)  # warm-up: workers load the statistics and stack them
        t0 = time.perf_counter()
        results[key] = fn(todo)
        out[key] = round(len(todo) / (time.perf_counter() - t0), 1)
    reasons: dict = {}
    for r in results["vectorised"]:
        reasons[r.reason or "valid"] = reasons.get(r.reason or "valid", 0) + 1
    out["reasons"] = reasons
    out["agree"] = all(agree(a, b) for a, b in zip(results["per_sample"], results["vectorised"]))
    population, generations, fitness = run
    common = dict(bench=bench, samples=samples, population=population, generations=generations, jobs=jobs, seed=seed,
                  fitness=fitness)
    full = decided_rate(**common, multi_fidelity=False)
    fast = decided_rate(**common)
    audited = decided_rate(**common, audit=True)
    out["full_decided"] = full["decided_per_s"]
    out["decided"] = fast["decided_per_s"]
    out["decided_scored"] = fast["scored_per_s"]
    out["run"] = {"population": population, "generations": generations, "fitness": fitness, "children": fast["children"],
                  "early_rejected": fast["early"], "seconds": fast["seconds"], "full_seconds": full["seconds"],
                  "full_children": full["children"], "best_fitness": fast["best_fitness"],
                  "full_best_fitness": full["best_fitness"]}
    out["early_reject_error"], wrong, early = early_reject_error(audited["children_csv"])
    out["audit"] = {"wrong": wrong, "early": early,
                    "same_decisions": _decisions(audited["log"]) == _decisions(fast["log"])}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evoproxy.scoring_speed", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--trees", type=int, default=200, help="random trees timed per benchmark (half per structure)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generations", type=int, default=None,
                   help="generations of each benchmark's real search (default: NB201 10, MQ 20)")
    args = p.parse_args(argv)
    summary = {}
    for short, bench, samples, run in BENCHES:
        if args.generations is not None:
            run = (run[0], args.generations, run[2])
        m = measure(bench, samples, args.trees, args.jobs, args.seed, run)
        print(f"{bench} ({samples} samples, jobs {args.jobs}): one sample at a time {m['per_sample']} formulas/s, "
              f"batched {m['vectorised']} formulas/s ({m['vectorised'] / max(m['per_sample'], 1e-9):.1f}x); "
              f"{m['reasons']}; agree {m['agree']}", flush=True)
        print(f"  real search (population {run[0]}, generations 1-{run[1]}, seed {args.seed}): children decided "
              f"{m['decided']}/s with multi-fidelity ({m['decided_scored']}/s not counting memo hits) vs "
              f"{m['full_decided']}/s without; early-reject error {m['early_reject_error']:.4f} "
              f"({m['audit']['wrong']} of {m['audit']['early']}; audit made the same decisions: "
              f"{m['audit']['same_decisions']}); {m['run']}", flush=True)
        summary.update({f"{short}_per_sample": m["per_sample"], f"{short}_vectorised": m["vectorised"],
                        f"{short}_decided": m["decided"], f"{short}_decided_scored": m["decided_scored"],
                        f"{short}_full_decided": m["full_decided"], f"{short}_early_reject_error": m["early_reject_error"],
                        f"{short}_agree": m["agree"], f"{short}_reasons": m["reasons"], f"{short}_run": m["run"],
                        f"{short}_audit": m["audit"]})
    wrong = sum(summary[f"{s}_audit"]["wrong"] for s, *_ in BENCHES)
    early = sum(summary[f"{s}_audit"]["early"] for s, *_ in BENCHES)
    summary["early_reject_error"] = round(wrong / early, 4) if early else 0.0
    summary["trees"] = args.trees
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
