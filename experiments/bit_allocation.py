"""Bit allocation under a model-size budget (EMQ's downstream use of an MQ proxy), over :mod:`evoproxy.allocation`.

    python -m experiments.bit_allocation [--models resnet20,resnet32] [--proxy PATH.json ...] [--random 50]

For each model and each budget (the model size of uniform 3-bit and of uniform 4-bit: searchable
layers at 3 resp. 4 bits, first conv and last linear fixed at 8 bits as in the MQ-Bench tables; size
as the tables' ``size_mb``, :func:`mqbench.quant.model_size_mb`), every method picks one bit
configuration (each searchable layer in {2,3,4}) whose size is within the budget:

* a proxy (the evolved proxy files, EMQ's published proxy in its two readings, HAWQ-V2, OMPQ, size-only =
  maximise the model size) picks the
  configuration that maximises its score with :class:`evoproxy.allocation.Allocator` (exact DP when the
  proxy passes the layer-additivity test, else evolutionary search; the table says which);
* ``uniform``: the budget's own uniform configuration;
* ``random``: the best (by PTQ top-1) of the first N configurations meeting the budget in a seeded
  random order over the sampled rows of the model's committed MQ-Bench table (no new PTQ).

Each chosen configuration goes through the tables' PTQ (``mqbench.build.evaluate_config`` with the
table's ``PTQSettings``), so top-1 is comparable with the table rows; results are cached per
(model, bits) in ``results/bit_allocation/ptq_cache.csv`` (one fsynced line per configuration).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from evoproxy.allocation.optimise import ADDITIVITY_CHECKS, ADDITIVITY_RTOL, ALLOWED, SEED, config_cost, count_configs_at_cost
from experiments.common import REPO, announce, dump_json, log, results_dir, write_report

BUDGET_BITS = (3, 4)
COLUMNS = ["model", "budget", "method", "optimiser", "top1", "size_mb", "bops_g", "bits"]
HEADERS = {"top1": "top-1 (%)", "size_mb": "size (MB)", "bops_g": "BOPs (G)"}


def first_meeting_budget(candidates: Sequence[tuple], weights: Sequence[int], budget: int, n: int,
                         seed: int) -> list[tuple]:
    """The first ``n`` of ``candidates`` in a seeded random order whose cost is within ``budget``."""
    order = np.random.default_rng(seed).permutation(len(candidates))
    out = []
    for i in order:
        if config_cost(candidates[i], weights) <= budget:
            out.append(candidates[i])
            if len(out) == n:
                break
    return out


def default_proxies() -> list[Path]:
    found = sorted((REPO / "results" / "mq_correlation" / "runs").glob("seed*/best.json"))
    return found if found else [REPO / "runs" / "mq_s0" / "best.json"]


def _rel(path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# EMQ's published proxy (examples/proxies, docs/emq_published_proxy.md): label per reading of how bits enter
EMQ_LABELS = {"emq_published": "EMQ published (R1)", "emq_published_alt": "EMQ published (R2)"}
EMQ_READINGS = {"emq_published": "R1: each layer's input tensors (virtual gradient, weight) multiplied by its bit-width",
                "emq_published_alt": "R2: each layer's scalar multiplied by its bit-width"}


def method_label(path: Path) -> str:
    """How the result tables name an evolved (or EMQ) proxy file."""
    path = Path(path)
    if path.stem in EMQ_LABELS:
        return EMQ_LABELS[path.stem]
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        rel = path
    if path.parent.name.startswith("seed") and path.name == "best.json":
        return f"evolved ({path.parent.name})"
    return f"evolved ({rel})"


def run_model(model: str, proxies: dict, n_random: int, seed: int, out: Path, progress: bool) -> tuple[list, dict]:
    from evoproxy.allocation import Allocator
    from evoproxy.allocation.model import load_model
    from evoproxy.allocation.ptq import PTQRunner
    from mqbench.build import bits_to_str

    t0 = time.perf_counter()
    info = load_model(model)
    if info.allowed != ALLOWED:
        from evoproxy.errors import DataError

        raise DataError(f"table {info.table.path.name} allows bits {list(info.allowed)}, this experiment needs {ALLOWED}")
    n = len(info.searchable)
    weights = info.weights
    fixed = info.fixed_bits_total()
    log(f"[{model}] {n} searchable layers, table: {info.table.path.name}")

    methods = list(proxies.items()) + [("HAWQ-V2", "hawq_v2"), ("OMPQ", "ompq"), ("size-only", info.size_mb)]
    budgets = {b: info.total_bits(info.uniform(b)) for b in BUDGET_BITS}
    picks: list[dict] = []  # one per (budget, method)
    details = {"model": model, "budgets": {}, "methods": {}, "ptq": info.ptq.as_dict(),
               "table": str(info.table.path.relative_to(REPO))}
    for b, total in budgets.items():
        details["budgets"][f"uniform-{b}"] = {"total_bits": total, "searchable_bits": total - fixed,
                                              "size_mb": info.size_mb(info.uniform(b))}
    for label, proxy in methods:
        start = time.perf_counter()
        allocator = Allocator(proxy, model, seed=seed, label=label, info=info)
        entry = {"setup_s": round(time.perf_counter() - start, 2), "budgets": {}}
        for b, total in budgets.items():
            res = allocator.allocate(f"uniform-{b}")
            assert info.total_bits(res.config) <= total
            picks.append({"budget_bits": b, "method": label, "optimiser": res.optimiser, "config": res.config})
            entry["budgets"][f"uniform-{b}"] = {
                "optimiser": res.optimiser, "bits": res.bits_str, "score": res.score,
                "score_uniform": allocator.score_of(info.uniform(b)), "additivity": res.additivity,
                "evaluations": res.evaluations}
            if label == "size-only":
                cost = config_cost(res.config, weights)
                entry["budgets"][f"uniform-{b}"]["tied_optima"] = count_configs_at_cost(weights, cost, ALLOWED)
            log(f"[{model}] {label} @ uniform-{b}: {res.optimiser} (additive: {res.additivity['additive']}, "
                f"max rel err {res.additivity['max_rel_error']:.2g}) -> {res.bits_str}")
        entry["seconds"] = round(time.perf_counter() - start, 2)
        details["methods"][label] = entry
    for b in budgets:
        picks.append({"budget_bits": b, "method": "uniform", "optimiser": "uniform", "config": info.uniform(b)})

    runner = PTQRunner(info, out / "ptq_cache.csv", progress)
    ptq_start = time.perf_counter()
    top1 = runner.run([p["config"] for p in picks], f"PTQ {model}")

    # random: best of the first n_random sampled table rows meeting the budget in a seeded order
    random_info = {}
    for b, total in budgets.items():
        ids = [i for i in info.table.ids if info.table.rows[i]["kind"] == "sample"]
        chosen = first_meeting_budget([info.table.bits(i) for i in ids], weights, total - fixed, n_random, seed)
        source = f"{info.table.path.name} sampled rows"
        if not chosen:
            log(f"[{model}] no random configuration meets the uniform-{b} budget; random row left out")
            random_info[f"uniform-{b}"] = {"n": 0, "source": source, "seed": seed}
            continue
        accs = {c: info.table.accuracy(bits=c) for c in chosen}
        best = max(chosen, key=lambda c: (accs[c], -info.total_bits(c)))
        top1[best] = accs[best]
        picks.append({"budget_bits": b, "method": f"random (best of {len(chosen)})", "optimiser": "random", "config": best})
        random_info[f"uniform-{b}"] = {"n": len(chosen), "source": source, "seed": seed,
                                       "top1_mean": float(np.mean(list(accs.values()))),
                                       "top1_best": accs[best], "bits": bits_to_str(best)}
    details["random"] = random_info
    details["ptq_new_runs"] = runner.new_runs
    details["ptq_worker_s"] = round(runner.seconds, 1)
    details["ptq_wall_s"] = round(time.perf_counter() - ptq_start, 1)
    # reproducibility check of the PTQ against the table's anchors
    details["anchor_check"] = {f"uniform-{b}": {"table": info.table.accuracy(bits=info.uniform(b)),
                                                "here": top1[info.uniform(b)]} for b in budgets}
    details["wall_s"] = round(time.perf_counter() - t0, 1)

    rows = []
    order = {name: i for i, (name, _) in enumerate(methods)}
    for b in budgets:
        budget_label = f"uniform {b}-bit ({info.size_mb(info.uniform(b)):.4f} MB)"
        these = [p for p in picks if p["budget_bits"] == b]
        these.sort(key=lambda p: order.get(p["method"], len(order) + (p["optimiser"] == "random")))
        for p in these:
            cfg = p["config"]
            rows.append({"model": model, "budget": budget_label, "method": p["method"], "optimiser": p["optimiser"],
                         "top1": top1[cfg], "size_mb": info.size_mb(cfg), "bops_g": info.bops_g(cfg),
                         "bits": bits_to_str(cfg)})
    return rows, details


def build_caption(details: list[dict], n_random: int, seed: int, ptq: dict) -> str:
    parts = []
    for d in details:
        r = d["random"]
        src = "; ".join(f"{k}: best of {v['n']} from {v['source']}" for k, v in r.items())
        parts.append(f"{d['model']} random: {src}")
    ptq_text = ", ".join(f"{k}={v}" for k, v in ptq.items())
    ties = "; ".join(f"{d['model']} {k}: {v['tied_optima']}" for d in details
                     for k, v in d["methods"].get("size-only", {}).get("budgets", {}).items())
    return (f"Bit allocation under model-size budgets (EMQ's downstream task). Budget = the size_mb of the uniform "
            f"3-bit resp. 4-bit configuration (searchable layers at 3/4 bits, first conv and last linear fixed at 8 bits, "
            f"weights at their bits + 32-bit biases, MB = 2^20 bytes); every method's configuration (each searchable "
            f"layer in {{2,3,4}}, activations 8 bit) has size <= budget. Proxies (evolved proxy files, EMQ published, HAWQ-V2, OMPQ, "
            f"size-only = maximise model size) choose the configuration maximising their score: optimiser 'dp' = exact "
            f"dynamic programming (the proxy passed the layer-additivity test on {ADDITIVITY_CHECKS} seeded random "
            f"configurations, relative tolerance {ADDITIVITY_RTOL:g}), 'evolution' = seeded evolutionary search "
            f"(not additive). Size-only has tied optima (configurations of exactly the maximal size: {ties}); the DP "
            f"returns the first it finds (layers in forward order, lower bits first). Random = best top-1 among the first {n_random} configurations meeting the budget in a "
            f"seeded (seed {seed}) random order ({'; '.join(parts)}). Proxies scored on 64 CIFAR-10 training images "
            f"(batch seed 0, proxy seed 0). PTQ as the MQ-Bench tables ({ptq_text}: per-channel MSE-clipped weights, "
            f"BN re-estimation, 8-bit per-tensor activation calibration); top-1 on the full 10k JPEG CIFAR-10 test "
            f"split, n = 1 PTQ run per configuration (calibration seed {ptq.get('calib_seed', 0)}); BOPs = "
            f"sum MACs x w-bits x a-bits per image.")


def main(argv=None) -> int:
    import torch

    from evoproxy.errors import ConfigError, EvoproxyError
    from evoproxy.tree import load_proxy

    parser = argparse.ArgumentParser(prog="python -m experiments.bit_allocation", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet32", help="comma-separated CIFAR ResNets")
    parser.add_argument("--proxy", nargs="+", default=None, metavar="PATH.json",
                        help="proxy files (default: results/mq_correlation/runs/seed*/best.json, else "
                             "runs/mq_s0/best.json, plus EMQ's published proxy in two readings)")
    parser.add_argument("--random", type=int, default=50, help="configurations for the random baseline (default 50)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the random order, additivity test, evolution")
    parser.add_argument("--out", default=None, help="output folder (default results/bit_allocation)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        if args.random < 1:
            raise ConfigError("--random must be >= 1")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        from experiments.mq_correlation import EMQ_PUBLISHED

        paths = [Path(p) for p in args.proxy] if args.proxy else default_proxies() + EMQ_PUBLISHED
        proxies = {}
        for p in paths:
            label = method_label(p)
            if label in proxies:
                label = f"evolved ({p})"
            proxies[label] = load_proxy(p)
        out = Path(args.out) if args.out else results_dir("bit_allocation")
        out.mkdir(parents=True, exist_ok=True)
        all_rows, details = [], []
        for model in models:
            rows, d = run_model(model, proxies, args.random, args.seed, out, not args.no_progress)
            all_rows += rows
            details.append(d)
    except EvoproxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ptq = details[0]["ptq"] if details else {}
    caption = build_caption(details, args.random, args.seed, ptq)
    proxy_lines = "; ".join(f"{label} = {p.formula} (from {_rel(p.source)}, searched on "
                            f"{p.search.get('bench', '?')})" for label, p in proxies.items()
                            if Path(p.source).stem not in EMQ_LABELS)
    caption += f" Evolved proxies: {proxy_lines}." if proxy_lines else ""
    emq = "; ".join(f"{label} = {p.formula} (from {_rel(p.source)}; {EMQ_READINGS[Path(p.source).stem]})"
                    for label, p in proxies.items() if Path(p.source).stem in EMQ_LABELS)
    caption += (f" EMQ's published proxy (tree_genov1 of EMQ-series; EMQ's public code does not show how the bit "
                f"configuration enters, so two readings): {emq}." if emq else "")
    paths_written = write_report(out, "table", all_rows, COLUMNS, caption, HEADERS, digits=4)
    details_path = out / "details.json"
    dump_json(details_path, {"seed": args.seed, "random": args.random, "proxies": {k: _rel(p.source) for k, p in proxies.items()},
                             "wall_s": round(time.perf_counter() - start, 1), "models": details})
    announce(*paths_written, details_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
