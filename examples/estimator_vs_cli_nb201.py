"""ProxySearch on NAS-Bench-201 networks handed in as models finds what `evoproxy search --bench nb201-cifar10` finds.

    EVOPROXY_DATA=... python examples/estimator_vs_cli_nb201.py                  # 100 items, population 16, 5 generations
    EVOPROXY_DATA=... python examples/estimator_vs_cli_nb201.py 8 4 1            # N POPULATION GENERATIONS (a check)

Same items, networks (``bench.network(i)``: ``torch.manual_seed(i)`` + the architecture, train mode), batch
(``sample_batch("train", 64, seed=0)``, the built-in protocol's), accuracies, seed and settings. One difference
by design: the estimator scores its items in the order ``sample_ids(range(n), n, seed)`` draws from the
positions it was given (the rule of every benchmark), and screening looks at the first ``screen_samples``
of that order; the models are therefore handed in so that this order is the CLI's. Prints both hall
of fames and exits 1 when the best formulas differ.
"""
from __future__ import annotations

import sys
import tempfile


def main(n: int = 100, population: int = 16, generations: int = 5, seed: int = 0) -> int:
    import evoproxy
    from mqbench.bench.benchmarks import get_benchmark
    from mqbench.data.cifar10 import sample_batch
    from mqbench.bench.table import sample_ids

    settings = dict(population=population, generations=generations, time_budget=None, progress=False)
    out = tempfile.mkdtemp(prefix="estimator-vs-cli-")
    cli = evoproxy.search("nb201-cifar10", samples=n, seed=seed, out=f"{out}/cli", **settings)

    bench = get_benchmark("nb201-cifar10")
    ids = bench.sample(n, seed, "search")                    # the CLI's search items, in its order
    order = [None] * n
    for j, position in enumerate(sample_ids(list(range(n)), n, seed)):
        order[position] = ids[j]                             # the estimator's j-th scored item is ids[j]
    models = [bench.network(i) for i in order]
    inputs, targets = sample_batch("train", 64, seed=0)
    est = evoproxy.ProxySearch(seed=seed, holdout=0, out=f"{out}/estimator", **settings)
    est.fit(models, bench.ground_truth(order), inputs=inputs, targets=targets)

    a, b = [e["formula"] for e in cli.equations()], [e["formula"] for e in est.equations_]
    print(f"CLI       best: {cli.best.formula}  ({cli.best.search['fitness_value']:.6f})")
    print(f"estimator best: {est.best_.formula}  ({est.best_.search['fitness_value']:.6f})")
    print(f"hall of fame equal: {a == b} ({len(a)} entries); run folders under {out}")
    return 0 if cli.best.formula == est.best_.formula else 1


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
