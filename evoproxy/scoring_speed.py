"""Formulas per second of the per-sample and the vectorised scoring paths, measured in one run.

    python -m evoproxy.scoring_speed [--jobs 2] [--trees 200] [--seed 0]

For each benchmark, the search's statistics (the search's recipe: default terminals and probes,
batch 64; extracted or read from the disk cache first) of 100 NAS-Bench-201 search samples and
50 MQ (ResNet-20) search samples; the same ``--trees`` random trees (half of each structure, seeded)
are scored on all samples with :func:`evoproxy.screening.score_many` at ``--jobs``, once per path,
after a warm-up call on other trees that loads the statistics (and builds the stacked copy) in the workers (other
trees: the vectorised path memoises subtrees' layer values per process, up to evoproxy.vectorised.MEMO_BYTES). Rejected
trees count: they are part of what a search scores. Prints one line per benchmark and, last, one
JSON object: ``nb201_per_sample``, ``nb201_vectorised``, ``mq_per_sample``, ``mq_vectorised``
(formulas/s), ``trees``, the stacked copies' sizes (``*_stacked_mb``: the stacked tensors plus the items gathered
for the whole sample range, per process; the memo adds at most 64 MB) and the rejection reasons;
whether both paths agreed on every tree (reason, scores within 1e-5 relative) is ``agree``.
Timings depend on the machine and its load. Measured with the current code (the 2-core AMD EPYC machine, idle, 200
trees, seed 0, jobs 2; 2 min 44 s wall): NB201 10.8 (per-sample) vs 21.5 (vectorised) formulas/s, MQ 27.0 vs 395.0,
both paths agreeing on every tree. Earlier (2 shared cores, load 5-11, 200 trees, jobs 2), before the
Sylvester logdet / per-range plans / memo: NB201 7.1 (per-sample) vs 8.6 (vectorised) formulas/s, stacked copy
808 MB per worker; MQ 15.8 vs 135.8, 12 MB. CPU time of one process on the same 200 random trees (seed 0) after
them: NB201 13.5 formulas/s vectorised (was 10.5) vs 7.2 per-sample (first 40 trees); MQ 272 (was 129) vs 17.3.
NB201 is compute-bound in both paths (float64 Gram/slogdet of 64 x 576 weight and 64 x 64 activation items, and
elementwise ops over 32M-element weight stacks), not overhead-bound.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

BENCHES = (("nb201", "nb201-cifar10", 100), ("mq", "mq-resnet20-cifar10", 50))


def search_recipe(bench: str, samples: int, seed: int = 0):
    """(recipe, terminals) of a search's samples with the search's defaults (see evoproxy.evolution)."""
    from evoproxy.searchdata import DataRecipe
    from mqbench.benchmarks import BenchSpec
    from primitives.core import REGISTRY
    from primitives.items import available_names, uses_hessian

    spec, b = BenchSpec.resolve(bench)
    probes = b.default_probes
    names = [n for n in available_names(b) if (probes > 0 or not uses_hessian([n])) and getattr(REGISTRY[n], "default", True)]
    return DataRecipe.for_bench(spec, b.sample(samples, seed, "search"), names, probes), names


def random_trees(terminals, count: int, seed: int) -> list:
    from evoproxy.space import SearchSpace

    random.seed(seed)
    trees = []
    for structure in ("emq", "tree"):
        space = SearchSpace(list(terminals), structure)
        trees += [space.random_tree() for _ in range(count // 2 if structure == "emq" else count - count // 2)]
    return trees


def agree(a, b) -> bool:
    """Same rejection reason and, for valid trees, scores within 1e-5 relative (the vectorised path's contract)."""
    if a.reason != b.reason:
        return False
    if a.scores is None:
        return True
    return len(a.scores) == len(b.scores) and all(abs(x - y) <= 1e-5 * max(abs(x), abs(y)) for x, y in zip(a.scores, b.scores))


def measure(bench: str, samples: int, trees: int, jobs: int, seed: int) -> dict:
    from evoproxy.screening import score_many
    from evoproxy.searchdata import load_stats
    from evoproxy.vectorised import _plan, plan_nbytes, stack

    recipe, names = search_recipe(bench, samples, seed)
    stats = load_stats(recipe, jobs=jobs, progress=False)
    t0 = time.perf_counter()
    st = stack(stats)
    _plan(st, 0, len(stats))  # the items of the whole range: views, or copies where tensors are shared
    stack_s = time.perf_counter() - t0
    stacked_mb = (st.nbytes + plan_nbytes(st)) / 2 ** 20
    del st
    todo = random_trees(names, trees, seed)
    warm = random_trees(names, jobs * 4, seed + 1)  # other trees: the vectorised path memoises subtrees' layer values
    out = {"stacked_mb": round(stacked_mb, 1), "stack_s": round(stack_s, 2)}
    results = {}
    for key, vec in (("per_sample", False), ("vectorised", True)):
        score_many(recipe, warm, 0, None, jobs, vectorised=vec)  # warm-up: workers load, stack
        t0 = time.perf_counter()
        results[key] = score_many(recipe, todo, 0, None, jobs, vectorised=vec)
        out[key] = round(len(todo) / (time.perf_counter() - t0), 1)
    reasons: dict = {}
    for r in results["vectorised"]:
        reasons[r.reason or "valid"] = reasons.get(r.reason or "valid", 0) + 1
    out["reasons"] = reasons
    out["agree"] = all(agree(a, b) for a, b in zip(results["per_sample"], results["vectorised"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evoproxy.scoring_speed", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--trees", type=int, default=200, help="random trees timed per benchmark (half per structure)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    summary = {}
    for short, bench, samples in BENCHES:
        m = measure(bench, samples, args.trees, args.jobs, args.seed)
        print(f"{bench} ({samples} samples, jobs {args.jobs}): per-sample {m['per_sample']} formulas/s, vectorised "
              f"{m['vectorised']} formulas/s ({m['vectorised'] / max(m['per_sample'], 1e-9):.1f}x); stacked copy "
              f"{m['stacked_mb']} MB per process, built in {m['stack_s']} s; {m['reasons']}; agree {m['agree']}", flush=True)
        summary.update({f"{short}_per_sample": m["per_sample"], f"{short}_vectorised": m["vectorised"],
                        f"{short}_stacked_mb": m["stacked_mb"], f"{short}_agree": m["agree"], f"{short}_reasons": m["reasons"]})
    summary["trees"] = args.trees
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
