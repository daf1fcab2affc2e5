"""Search settings settled by measurement: sampling, validation choice, islands and diversity, 5 seeds each.

    python -m experiments.search_ablation [--benches mq,nb201] [--settings stratified,random,...] [--seeds 0-4]
                                          [--jobs 2] [--report-only]

Every run is one ``evoproxy search`` with an equal time budget (NAS-Bench-201 300 s: 100 search
architectures, fitness spearman; MQ ResNet-20 W{2,3,4}A8 120 s: 50 search configurations, fitness
spearman_partial), population and generations sized by the budget (:mod:`evoproxy.budget`),
multi-fidelity on; NB201 ``validation`` 0.5 (50 more search-split architectures that only choose ``best.json``;
the MQ table's search split holds just the 50 search configurations, so MQ runs have no validation items and
``random`` / ``stratified`` differ there only in the order of the same 50, which multi-fidelity's prefixes see).
The search samples' and validation items' statistics are extracted *before* the run starts (disk cache),
so that no run's budget pays for an extraction another run got from the cache.

Settings (``SETTINGS``): ``random`` and ``stratified`` (the search sample, :mod:`evoproxy.searchsample`;
one population with diversity-prompting selection); ``stratified-distinct`` (also refusing children that
rank the samples exactly like a member: ``--distinct-rankings``); ``stratified-nodiv`` (plain tournament);
``islands`` / ``islands-nodiv`` (4 islands, ring migration, restart after 8 stagnant generations).

Each run folder ``results/search_ablation/runs/<bench>-<setting>-s<seed>/`` keeps config.json, log.csv,
hall_of_fame.json, best.json and ``holdout.json``: every hall-of-fame member scored on the holdout
(NB201: 1000 architectures of the holdout split, sample seed 1; MQ: all 454 holdout configurations),
so that both answers are known: the best search fitness (``top``) and the validation choice (``best``).
A run with ``holdout.json`` is finished and skipped; an interrupted one is resumed. Holdout statistics are
extracted once for the search's whole terminal set (one disk-cache entry per item, shared by every run)
and the members are scored on them by the search's evaluator (``--check N``: the first run's best.json
is also scored by ``evoproxy.evaluate`` on N items, and the two must agree to 1e-6).

``--report-only`` writes ``table.md`` / ``table.csv`` (per setting: mean, std, min of holdout Spearman
over seeds, for the top-fitness and the validation-chosen answer), ``runs.csv`` (per run) and
``progress.png`` (best fitness vs seconds, every seed) from the finished runs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments.common import dump_json, log, parse_seeds, results_dir

BENCHES = {
    "nb201": dict(bench="nb201-cifar10", samples=100, fitness="spearman", time_budget=300.0, validation=0.5,
                  holdout=dict(samples=1000, seed=1)),
    # the MQ table's search split is 50 configurations: all of them are the search sample, none is left to validate
    "mq": dict(bench="mq-resnet20-cifar10", samples=50, fitness="spearman_partial", time_budget=120.0, validation=0.0,
               holdout=dict(samples=None, seed=0)),
}
COMMON = dict(structure="emq", multi_fidelity=True)
SETTINGS = {
    "random": dict(sampling="random"),
    "stratified": dict(sampling="stratified"),
    "stratified-distinct": dict(sampling="stratified", distinct_rankings=True),
    "stratified-nodiv": dict(sampling="stratified", diversity=False),
    "islands": dict(sampling="stratified", islands=4, restart_after=8),
    "islands-nodiv": dict(sampling="stratified", islands=4, restart_after=8, diversity=False),
}
CHUNK = 200  # holdout items held in memory at once


def config_for(short: str, setting: str, seed: int, out: Path, jobs: int):
    from evoproxy.searchconfig import SearchConfig

    b = BENCHES[short]
    return SearchConfig(bench=b["bench"], out=str(out), samples=b["samples"], fitness=b["fitness"],
                        time_budget=b["time_budget"], validation=b["validation"], seed=seed, jobs=jobs, progress=False,
                        **COMMON, **SETTINGS[setting])


def holdout_scores(config, proxies: list, jobs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """(scores [proxy, item], truth, size, ids) of ``proxies`` on the benchmark's holdout sample."""
    from evoproxy.searchdata import DataRecipe
    from evoproxy.vectorised import stack, tree_values
    from mqbench.benchmarks import BenchRef
    from primitives.workspace import Workspace

    ref, bench = BenchRef.resolve(config.bench, config.table, config.gt_column, config.checkpoint)
    saved = json.loads((Path(config.out) / "config.json").read_text())
    h = [v for k, v in BENCHES.items() if v["bench"] == config.bench][0]["holdout"]
    ids = bench.sample(h["samples"], h["seed"], "holdout")
    recipe = DataRecipe.for_bench(ref, ids, saved["terminals_used"], saved["hutchinson_probes_used"], config.noise_std,
                                  config.batch)
    scores = np.full((len(proxies), len(ids)), np.nan)
    workspace = Workspace(ref, bench)
    for a in range(0, len(ids), CHUNK):
        stats = workspace.statistics(ids[a:a + CHUNK], recipe.request, jobs=jobs, progress=True,
                                     cache_dir=recipe.cache_dir)
        st = stack(stats, names=sorted({n for p in proxies for n in p.tree.terminals()}))  # once for every member
        for k, p in enumerate(proxies):
            result = tree_values(p.tree.to_json(), st, 0, len(stats))
            scores[k, a:a + len(result.values)] = p.orientation * np.asarray(result.values, dtype=float)
        del stats, st
    return scores, np.asarray(bench.ground_truth(ids), float), np.asarray(bench.size(ids), float), ids


def check_against_evaluate(config, proxy, n: int, scores: np.ndarray, jobs: int) -> float:
    """Max relative difference between this experiment's holdout scores and ``evoproxy.evaluate`` on ``n`` items."""
    from evoproxy.evaluation import proxy_reports

    h = [v for v in BENCHES.values() if v["bench"] == config.bench][0]["holdout"]
    items: dict = {}
    proxy_reports(config.bench, [proxy], h["samples"], h["seed"], "holdout", jobs=jobs, items=items, progress=False)
    label = next(iter(items["results"][0]["scores"]))
    ref = np.array([r["scores"][label] for r in items["results"][:n]], dtype=float)
    ours = scores[:n]
    return float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)))


def run_one(short: str, setting: str, seed: int, jobs: int, check: int) -> dict:
    from evoproxy.evolution import Search, run_search
    from evoproxy.metrics import correlation_report
    from evoproxy.results import SearchResult

    out = results_dir("search_ablation") / "runs" / f"{short}-{setting}-s{seed}"
    done = out / "holdout.json"
    if done.exists():
        return json.loads(done.read_text())
    config = config_for(short, setting, seed, out, jobs)
    resume = (out / "checkpoint.json").exists()
    if not resume:
        t0 = time.perf_counter()
        warm = Search(config)  # extracts (or reads) the search samples' and validation items' statistics
        warm._prepare()
        del warm
        log(f"{out.name}: statistics ready in {time.perf_counter() - t0:.0f} s (not part of the budget)")
    t0 = time.perf_counter()
    run_search(config, resume=resume)
    wall = time.perf_counter() - t0
    result = SearchResult.load(out)
    hof_json = json.loads((out / "hall_of_fame.json").read_text())
    proxies = result.hall_of_fame
    best_key = json.dumps(result.best.tree.to_json())
    best_rank = next(k for k, e in enumerate(hof_json) if json.dumps(e["tree"]) == best_key)
    scores, truth, size, ids = holdout_scores(config, proxies, jobs)
    members = []
    for k, (p, e) in enumerate(zip(proxies, hof_json)):
        rep = correlation_report(scores[k], truth, size)
        members.append({"rank": k + 1, "formula": p.formula, "fitness": e["fitness"],
                        "validation_fitness": e.get("validation_fitness"), "holdout_spearman": rep["spearman"],
                        "holdout_partial_spearman": rep["partial_spearman"], "n": rep["n"], "failed": rep["failed"]})
    log_rows = result.log
    doc = {"bench": short, "setting": setting, "seed": seed, "members": members, "best_rank": best_rank + 1,
           "top": members[0], "best": members[best_rank], "n_holdout": len(ids),
           "search_seconds": sum(float(r["seconds"]) for r in log_rows), "run_wall_seconds": round(wall, 1),
           "generations": int(log_rows[-1]["generation"]), "population": result.config["population"],
           "sizing": result.config.get("sizing"), "time_budget": config.time_budget}
    if check:
        doc["check_max_rel_diff"] = check_against_evaluate(config, out / "best.json", check, scores[best_rank], jobs)
        log(f"{out.name}: experiment vs evoproxy.evaluate on {check} items: max rel diff {doc['check_max_rel_diff']:.2e}")
        if not doc["check_max_rel_diff"] <= 1e-6:
            raise SystemExit(f"error: holdout scores differ from evoproxy.evaluate ({doc['check_max_rel_diff']:.2e})")
    dump_json(done, doc)
    log(f"{out.name}: holdout top {members[0]['holdout_spearman']:.3f}, validation choice (rank {best_rank + 1}) "
        f"{members[best_rank]['holdout_spearman']:.3f}; {doc['generations']} generations x {doc['population']}")
    return doc


def report(out: Path) -> None:
    from experiments.search_ablation_report import write_ablation_report

    write_ablation_report(out, BENCHES, SETTINGS, COMMON)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.search_ablation", description=__doc__.splitlines()[0])
    p.add_argument("--benches", default="mq,nb201")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--check", type=int, default=0, help="compare the holdout scores with evoproxy.evaluate on N items")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = results_dir("search_ablation")
    if not args.report_only:
        for short in [b for b in args.benches.split(",") if b]:
            for setting in [s for s in args.settings.split(",") if s]:
                if setting not in SETTINGS:
                    raise SystemExit(f"error: unknown setting {setting!r} (known: {', '.join(SETTINGS)})")
                for seed in parse_seeds(args.seeds):
                    run_one(short, setting, seed, args.jobs, args.check)
                    args.check = 0  # once is enough
                    report(out)
    report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
