"""Fuzz the proxy language: screen many random trees and check that nothing escapes the screening.

    python -m evoproxy.fuzz --structure emq --trees 100000 --synthetic
    python -m evoproxy.fuzz --structure tree --trees 20000 --bench nb201-cifar10 --items 4

Trees come from the structure's generator as the search uses it (:class:`evoproxy.space.SearchSpace`):
half fresh ``random_tree()`` draws, a quarter mutants and a quarter crossover children of a pool of
64 earlier trees (a valid child replaces a random pool member, so variation reaches deep trees).
Each tree is scored with :func:`evoproxy.screening.score_range` on every item's statistics; the outcome
is ``valid`` or the rejection reason (``shape``, ``size``, ``nan``, ``constant``, ``exception``,
``timeout``). Any exception escaping ``score_range`` is a **crash** (a bug in the operators or the
screening); the first few crashing trees are printed as JSON and the exit status is 1.

Statistics: ``--synthetic`` (the default without ``--bench``) builds them from 4 tiny seeded
NAS-Bench-201 networks (C=4, N=1, train mode) on a batch of 8 random normalised images, no data
files needed: every registered statistic, 2 Hutchinson probes, a random bit configuration per
network (``mqbench.quant.quantize_weight``); the last network has a 520-way classifier, so the
Gram-type size limit is reached too. ``--bench NAME`` uses the benchmark's own statistics of
``--items`` search-split items, as the search computes them (``evoproxy.searchdata``).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from evoproxy.screening import REASONS, score_range
from evoproxy.errors import EvoproxyError

SYNTHETIC_ARCH_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
POOL = 64


def synthetic_stats(seed: int = 0, networks: int = 4, batch: int = 8, probes: int = 2) -> list:
    """Statistics (all registered names) of ``networks`` tiny seeded NB201 networks; no data files."""
    import torch

    from mqbench.cifar10 import normalize
    from mqbench.networks.nb201 import NB201Network
    from mqbench.quant import quantize_weight
    from primitives import PRIMITIVES, extract

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    inputs = normalize(torch.randint(0, 256, (batch, 3, 32, 32), generator=g, dtype=torch.uint8))
    targets = torch.randint(0, 10, (batch,), generator=g)
    out = []
    for i in range(networks):
        arch = "+".join("|" + "|".join(f"{rng.choice(SYNTHETIC_ARCH_OPS)}~{j}" for j in range(n)) + "|" for n in (1, 2, 3))
        torch.manual_seed(seed * 1000 + i)
        classes = 520 if i == networks - 1 else 10  # > GRAM_MAX_ROWS output rows: exercises the "size" rule
        model = NB201Network(arch, num_classes=classes, C=4, N=1).train()
        layers = len(extract(model, inputs, targets, names=["weight"]).layers)
        bits = [rng.choice([2, 3, 4, 8]) for _ in range(layers)]
        out.append(extract(model, inputs, targets, names=list(PRIMITIVES), hutchinson_probes=probes, bit_config=bits,
                           quantizer=quantize_weight, seed=seed))
    return out


def bench_stats(bench: str, items: int, seed: int = 0, batch: int = 64, probes: int | None = None):
    """(statistics of ``items`` search-split items, terminal names), as the search computes them."""
    from evoproxy.searchdata import DataRecipe, load_samples
    from mqbench.benchmarks import BenchRef
    from primitives.items import available_names, uses_hessian
    from primitives.workspace import Workspace

    ref, b = BenchRef.resolve(bench)
    probes = b.default_probes if probes is None else probes
    names = [n for n in available_names(b) if probes > 0 or not uses_hessian([n])]
    ids = b.sample(items, seed, "search")
    recipe = DataRecipe.for_bench(ref, ids, names, probes, batch=batch)
    return load_samples(recipe, Workspace(ref, b)).stats, names


@dataclass
class FuzzReport:
    structure: str
    trees: int = 0
    outcomes: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    crashes: list = field(default_factory=list)  # (tree json, "Type: message", traceback tail)
    crash_count: int = 0
    distinct: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"structure": self.structure, "trees": self.trees, "distinct": self.distinct,
                "outcomes": {k: self.outcomes.get(k, 0) for k in ("valid",) + REASONS},
                "sources": dict(self.sources), "crashes": self.crash_count,
                "crash_examples": [{"tree": t, "error": e} for t, e, _ in self.crashes], "seconds": round(self.seconds, 1)}


def fuzz(stats, terminals, structure: str, trees: int, seed: int = 0, time_bound: float | None = None,
         keep_crashes: int = 5, progress: bool = False, **space_kw) -> FuzzReport:
    """Screen ``trees`` generated trees on ``stats`` (see the module docstring)."""
    from evoproxy.space import SearchSpace
    from evoproxy.tree import canonical
    from evoproxy.vectorised import stack
    from primitives.core import fixed_threads

    stacked = stack(stats)  # once, for every tree
    space = SearchSpace(list(terminals), structure, **space_kw)
    random.seed(seed)
    report = FuzzReport(structure)
    seen = set()
    pool = [space.random_tree() for _ in range(POOL)]
    start = time.perf_counter()
    with fixed_threads(1):
        for i in range(trees):
            r = random.random()
            if r < 0.5:
                tree, source = space.random_tree(), "random"
            elif r < 0.75:
                tree, source = space.mutate(random.choice(pool)), "mutation"
            else:
                tree, source = space.crossover(random.choice(pool), random.choice(pool))[random.randint(0, 1)], "crossover"
            report.sources[source] += 1
            seen.add(canonical(tree))
            try:
                result = score_range(tree, stats, 0, len(stats), time_bound=time_bound, stacked=stacked)
            except Exception as exc:  # anything escaping score_range is a crash
                report.crash_count += 1
                report.outcomes["crash"] += 1
                if len(report.crashes) < keep_crashes:
                    tail = "".join(traceback.format_exception(exc)[-3:])
                    report.crashes.append((tree.to_json(), f"{type(exc).__name__}: {exc}", tail))
                continue
            outcome = result.reason or "valid"
            report.outcomes[outcome] += 1
            if outcome == "valid":
                pool[random.randrange(POOL)] = tree
            if progress and (i + 1) % 10000 == 0:
                print(f"  {i + 1} trees, {time.perf_counter() - start:.0f} s, {dict(report.outcomes)}", file=sys.stderr)
    report.trees = trees
    report.distinct = len(seen)
    report.seconds = time.perf_counter() - start
    return report


def human(report: FuzzReport, where: str) -> str:
    lines = [f"structure {report.structure}: {report.trees} trees ({report.distinct} distinct; "
             + ", ".join(f"{k} {v}" for k, v in report.sources.items()) + f") on {where} in {report.seconds:.1f} s"]
    for key in ("valid",) + REASONS:
        n = report.outcomes.get(key, 0)
        lines.append(f"  {key:<10} {n:>8}  {100 * n / max(report.trees, 1):5.1f}%")
    lines.append(f"  {'crashes':<10} {report.crash_count:>8}")
    for tree, error, tail in report.crashes:
        lines.append(f"crash: {json.dumps(tree)}\n  {error}\n" + "".join("  " + l for l in tail.splitlines(True)))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evoproxy.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--structure", choices=("emq", "tree"), default="emq")
    p.add_argument("--trees", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="seed of the trees (and of the synthetic networks)")
    p.add_argument("--synthetic", action="store_true", help="4 tiny NB201 networks, no data files (default without --bench)")
    p.add_argument("--bench", default=None, help="use this benchmark's statistics instead (needs the data files)")
    p.add_argument("--items", type=int, default=4, help="--bench: search-split items")
    p.add_argument("--batch", type=int, default=64, help="--bench: CIFAR-10 images in the batch")
    p.add_argument("--probes", type=int, default=None, help="--bench: Hutchinson probes (default: the search's)")
    p.add_argument("--max-depth", type=int, default=8, help="tree structure: depth limit")
    p.add_argument("--max-size", type=int, default=30, help="tree structure: node-count limit")
    p.add_argument("--time-bound", type=float, default=None, help="seconds per tree before 'timeout' (default: none)")
    p.add_argument("--show", type=int, default=5, help="crashing trees to print")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    try:
        if args.trees < 1:
            raise EvoproxyError("--trees must be >= 1")
        t0 = time.perf_counter()
        if args.bench and not args.synthetic:
            stats, terminals = bench_stats(args.bench, args.items, args.seed, args.batch, args.probes)
            where = f"{len(stats)} {args.bench} items"
        else:
            from primitives import PRIMITIVES

            stats, terminals = synthetic_stats(args.seed), list(PRIMITIVES)
            where = f"{len(stats)} synthetic networks"
        setup = time.perf_counter() - t0
        report = fuzz(stats, terminals, args.structure, args.trees, args.seed, args.time_bound, args.show,
                      progress=not args.quiet, max_depth=args.max_depth, max_size=args.max_size)
    except EvoproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(human(report, where) + f"\n(statistics: {setup:.1f} s)")
    if args.json:
        print(json.dumps(report.to_json()))
    return 1 if report.crash_count else 0


if __name__ == "__main__":
    sys.exit(main())
