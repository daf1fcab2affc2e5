"""Bit allocation under a model-size budget (EMQ's downstream use of an MQ proxy).

    python -m experiments.bit_allocation [--models resnet20,resnet32] [--proxy PATH.json ...] [--random 50]

For each model and each budget (the model size of uniform 3-bit and of uniform 4-bit: searchable
layers at 3 resp. 4 bits, first conv and last linear fixed at 8 bits as in the MQ-Bench tables; size
as the tables' ``size_mb``, :func:`mqbench.quant.model_size_mb`), every method picks one bit
configuration (each searchable layer in {2,3,4}) whose size is within the budget:

* a proxy (the evolved proxy files, HAWQ-V2, OMPQ, size-only = maximise the model size) picks the
  configuration that maximises its score (higher = predicted more accurate for every proxy; a
  proxy file's orientation is applied by ``Proxy.score``);
* ``uniform``: the budget's own uniform configuration;
* ``random``: the best (by PTQ top-1) of the first N configurations meeting the budget in a seeded
  random order — over the sampled rows of the model's committed MQ-Bench table when there is one
  (no new PTQ), else over freshly drawn configurations (PTQ each).

Optimisation. A proxy is *layer-additive* when score(config) = const + Σ_l c_l(b_l). The test is
generic: c_l(b) = score(base with layer l at b) − score(base) for base = all layers at the lowest
bit-width, then the additive prediction is checked on ``ADDITIVITY_CHECKS`` seeded random
configurations with relative tolerance ``ADDITIVITY_RTOL`` (``math.isclose``). An additive proxy is
maximised exactly by dynamic programming over the layers with a Pareto frontier of (weight bits,
value): the budget is an integer number of bits, Σ_l n_l b_l over the searchable layers ≤ budget
bits − the fixed layers' bits (weights and 32-bit biases). Otherwise a seeded evolutionary search
(over-budget configurations repaired by lowering random layers) is used; the table says which.

Each chosen configuration goes through the tables' PTQ (``mqbench.build.evaluate_config`` with the
table's ``PTQSettings``), so top-1 is comparable with the table rows; results are cached per
(model, bits) in ``results/bit_allocation/ptq_cache.csv`` (one fsynced line per configuration).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from experiments.common import REPO, announce, dump_json, log, results_dir, write_table
from mqbench.fileio import append_line, complete_lines

ALLOWED = (2, 3, 4)
BUDGET_BITS = (3, 4)
ADDITIVITY_CHECKS = 20
ADDITIVITY_RTOL = 1e-6
SEED = 0
BATCH = 64
CACHE_COLUMNS = ("model", "bits", "top1", "size_mb", "bops_g", "calib_seed", "fp_sha256", "ptq_key", "seconds")
COLUMNS = ["model", "budget", "method", "optimiser", "top1", "size_mb", "bops_g", "bits"]
HEADERS = {"top1": "top-1 (%)", "size_mb": "size (MB)", "bops_g": "BOPs (G)"}


# ============================================================================ optimisation (pure)

def config_cost(config: Sequence[int], weights: Sequence[int]) -> int:
    """Σ_l n_l b_l: weight bits of the searchable layers."""
    return int(sum(int(n) * int(b) for n, b in zip(weights, config)))


def check_additive(score: Callable[[tuple], float], n_layers: int, allowed: Sequence[int] = ALLOWED,
                   seed: int = SEED, checks: int = ADDITIVITY_CHECKS, rel_tol: float = ADDITIVITY_RTOL) -> dict:
    """Is ``score`` (config tuple -> float) layer-additive? Fits const + Σ_l c_l(b_l) and verifies it.

    Returns {"additive", "const", "contrib" (list of {bits: c_l(bits)}), "checks", "max_rel_error",
    "evaluations", "reason"}. Non-finite scores make the proxy non-additive.
    """
    allowed = tuple(int(b) for b in allowed)
    base = (allowed[0],) * n_layers
    out = {"additive": False, "const": math.nan, "contrib": [], "checks": 0, "max_rel_error": math.nan,
           "evaluations": 0, "reason": ""}
    evals = 0

    def f(cfg):
        nonlocal evals
        evals += 1
        return float(score(tuple(cfg)))

    const = f(base)
    contrib = []
    finite = math.isfinite(const)
    for layer in range(n_layers):
        row = {allowed[0]: 0.0}
        for b in allowed[1:]:
            cfg = list(base)
            cfg[layer] = b
            value = f(cfg)
            finite &= math.isfinite(value)
            row[b] = value - const
        contrib.append(row)
    out.update(const=const, contrib=contrib)
    if not finite:
        out.update(evaluations=evals, reason="non-finite score")
        return out
    rng = np.random.default_rng(seed)
    scale = sum(max(abs(v) for v in row.values()) for row in contrib)
    worst = 0.0
    ok = True
    for _ in range(int(checks)):
        cfg = tuple(int(b) for b in rng.choice(allowed, size=n_layers))
        actual = f(cfg)
        predicted = const + sum(contrib[l][b] for l, b in enumerate(cfg))
        if not math.isfinite(actual):
            ok = False
            out["reason"] = "non-finite score"
            break
        err = abs(actual - predicted) / max(abs(actual), abs(predicted), 1e-300)
        worst = max(worst, err)
        if not math.isclose(actual, predicted, rel_tol=rel_tol, abs_tol=1e-12 * scale):
            ok = False
    out.update(additive=ok, checks=int(checks), max_rel_error=worst, evaluations=evals)
    if not ok and not out["reason"]:
        out["reason"] = f"additive prediction off by up to {worst:.3g} (relative)"
    return out


def dp_allocate(contrib: Sequence[dict], weights: Sequence[int], budget: int,
                allowed: Sequence[int] = ALLOWED) -> tuple[tuple[int, ...], float, int]:
    """Exact max of Σ_l contrib[l][b_l] subject to Σ_l weights[l]·b_l ≤ budget (integers).

    Dynamic programming over layers keeping the Pareto frontier of (cost, value): a partial
    assignment is dropped when another has lower-or-equal cost and higher-or-equal value. Returns
    (configuration, value, cost); among equal values the cheapest (then the first found) wins.
    """
    from evoproxy.errors import ConfigError

    allowed = tuple(sorted(int(b) for b in allowed))
    frontier: list[tuple[int, float, tuple]] = [(0, 0.0, ())]
    for layer, n in enumerate(weights):
        cand: dict[int, tuple[float, tuple]] = {}
        for cost, value, cfg in frontier:
            for b in allowed:
                c = cost + int(n) * b
                if c > budget:
                    continue
                v = value + float(contrib[layer][b])
                if c not in cand or v > cand[c][0]:
                    cand[c] = (v, cfg + (b,))
        if not cand:
            raise ConfigError(f"budget {budget} bits is below the smallest configuration")
        frontier, best = [], -math.inf
        for c in sorted(cand):
            v, cfg = cand[c]
            if v > best:
                frontier.append((c, v, cfg))
                best = v
    cost, value, cfg = frontier[-1]
    return cfg, value, cost


def repair(config: list[int], weights: Sequence[int], budget: int, allowed: Sequence[int], rng) -> list[int]:
    """Lower randomly chosen layers one allowed step at a time until the configuration fits."""
    allowed = tuple(sorted(allowed))
    config = list(config)
    cost = config_cost(config, weights)
    while cost > budget:
        lowerable = [l for l, b in enumerate(config) if b > allowed[0]]
        if not lowerable:
            from evoproxy.errors import ConfigError

            raise ConfigError(f"budget {budget} bits is below the smallest configuration")
        l = lowerable[int(rng.integers(len(lowerable)))]
        new = allowed[allowed.index(config[l]) - 1]
        cost -= int(weights[l]) * (config[l] - new)
        config[l] = new
    return config


def evolve_allocate(score: Callable[[tuple], float], weights: Sequence[int], budget: int,
                    allowed: Sequence[int] = ALLOWED, seed: int = SEED, population: int = 40,
                    generations: int = 50, seeds: Sequence[Sequence[int]] = ()) -> dict:
    """Seeded (mu + lambda) evolutionary maximisation of ``score`` over configurations within ``budget``.

    Tournament selection (3), uniform crossover, per-layer mutation (1/L), every child repaired to
    the budget (:func:`repair`); non-finite scores count as -inf. ``seeds``: configurations put in
    the first population (repaired). Returns {"config", "value", "cost", "evaluations"}.
    """
    allowed = tuple(sorted(int(b) for b in allowed))
    rng = np.random.default_rng(seed)
    n_layers = len(weights)
    memo: dict[tuple, float] = {}

    def fitness(cfg: tuple) -> float:
        if cfg not in memo:
            v = float(score(cfg))
            memo[cfg] = v if math.isfinite(v) else -math.inf
        return memo[cfg]

    pop: list[tuple] = []
    for b in allowed:  # the uniform configurations that fit
        if config_cost((b,) * n_layers, weights) <= budget:
            pop.append((b,) * n_layers)
    for s in seeds:
        pop.append(tuple(repair(list(s), weights, budget, allowed, rng)))
    while len(pop) < population:
        pop.append(tuple(repair([int(b) for b in rng.choice(allowed, size=n_layers)], weights, budget, allowed, rng)))
    pop = list(dict.fromkeys(pop))
    for _ in range(int(generations)):
        def pick():
            idx = rng.integers(len(pop), size=3)
            return max((pop[i] for i in idx), key=fitness)

        children = []
        for _ in range(population):
            a, b = pick(), pick()
            mask = rng.random(n_layers) < 0.5
            child = [x if m else y for x, y, m in zip(a, b, mask)]
            for l in range(n_layers):
                if rng.random() < 1.0 / n_layers:
                    child[l] = int(rng.choice(allowed))
            children.append(tuple(repair(child, weights, budget, allowed, rng)))
        merged = list(dict.fromkeys(pop + children))
        merged.sort(key=lambda c: (-fitness(c), config_cost(c, weights)))
        pop = merged[:population]
    best = max(pop, key=lambda c: (fitness(c), -config_cost(c, weights)))
    return {"config": best, "value": fitness(best), "cost": config_cost(best, weights), "evaluations": len(memo)}


def maximise(score: Callable[[tuple], float], weights: Sequence[int], budget: int,
             allowed: Sequence[int] = ALLOWED, seed: int = SEED) -> dict:
    """The configuration within ``budget`` that maximises ``score``: DP when additive, else evolution."""
    memo: dict[tuple, float] = {}

    def cached(cfg):
        cfg = tuple(int(b) for b in cfg)
        if cfg not in memo:
            memo[cfg] = float(score(cfg))
        return memo[cfg]

    check = check_additive(cached, len(weights), allowed, seed)
    if check["additive"]:
        cfg, predicted, cost = dp_allocate(check["contrib"], weights, budget, allowed)
        result = {"optimiser": "dp", "config": cfg, "value": cached(cfg), "predicted": check["const"] + predicted,
                  "cost": cost}
    else:
        seeds = []
        if all(math.isfinite(v) for row in check["contrib"] for v in row.values()):
            seeds.append(dp_allocate(check["contrib"], weights, budget, allowed)[0])  # additive approximation
        evo = evolve_allocate(cached, weights, budget, allowed, seed, seeds=seeds)
        result = {"optimiser": "evolution", "config": evo["config"], "value": evo["value"], "cost": evo["cost"]}
    result["additivity"] = {k: check[k] for k in ("additive", "checks", "max_rel_error", "reason")}
    result["evaluations"] = len(memo)
    return result


def count_configs_at_cost(weights: Sequence[int], cost: int, allowed: Sequence[int] = ALLOWED) -> int:
    """How many configurations have exactly ``cost`` weight bits (ties of the size-only proxy)."""
    counts = {0: 1}
    for n in weights:
        nxt: dict[int, int] = {}
        for c, k in counts.items():
            for b in allowed:
                if c + int(n) * b <= cost:
                    nxt[c + int(n) * b] = nxt.get(c + int(n) * b, 0) + k
        counts = nxt
    return counts.get(int(cost), 0)


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


def draw_meeting_budget(n_layers: int, weights: Sequence[int], budget: int, n: int, seed: int,
                        allowed: Sequence[int] = ALLOWED, max_draws: int = 1_000_000) -> list[tuple]:
    """The first ``n`` distinct non-uniform configurations of a seeded uniform stream over allowed^L within ``budget``.

    One stream per seed whatever the budget, so the draws of two budgets overlap (shared PTQ)."""
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    for _ in range(max_draws):
        cfg = tuple(int(b) for b in rng.choice(np.asarray(allowed), size=n_layers))
        if cfg in seen or len(set(cfg)) == 1:
            continue
        seen.add(cfg)
        if config_cost(cfg, weights) <= budget:
            out.append(cfg)
            if len(out) == n:
                break
    return out


# ============================================================================ models, budgets, scores

@dataclass
class ModelInfo:
    model: str
    meta: dict  # table metadata (or the same keys computed from the checkpoint)
    table: object | None  # MQTable or None
    ptq: object  # PTQSettings
    checkpoint: str
    fp_model: object = None
    _batch: tuple | None = field(default=None, repr=False)

    @property
    def searchable(self) -> list[int]:
        return list(self.meta["searchable"])

    @property
    def weights(self) -> list[int]:
        return [int(self.meta["layer_params"][i]) for i in self.searchable]

    def full_bits(self, config) -> list[int]:
        out = [int(self.meta["fixed_bits"])] * len(self.meta["layer_names"])
        for i, b in zip(self.searchable, config):
            out[i] = int(b)
        return out

    def total_bits(self, config) -> int:
        """Model size in bits (weights at their bits + 32-bit biases), as model_size_mb counts it."""
        return int(sum(w * b + bias * 32 for w, bias, b in
                       zip(self.meta["layer_params"], self.meta["layer_bias"], self.full_bits(config))))

    def fixed_bits_total(self) -> int:
        return self.total_bits((0,) * len(self.searchable))

    def size_mb(self, config) -> float:
        from mqbench.quant import model_size_mb

        return model_size_mb(self.meta["layer_params"], self.meta["layer_bias"], self.full_bits(config))

    def bops_g(self, config) -> float:
        from mqbench.quant import bops

        return bops(self.meta["layer_macs"], self.full_bits(config), int(self.meta["act_bits"])) / 1e9

    @property
    def model_key(self) -> str:
        return f"{self.model}:{self.meta['checkpoint_sha256'][:16]}"

    def batch(self):
        if self._batch is None:
            from mqbench.cifar10 import sample_batch

            self._batch = sample_batch("train", BATCH, seed=0, normalization=self.meta["normalization"])
        return self._batch


def table_path(model: str) -> Path:
    return REPO / "mqbench" / "tables" / f"{model}_cifar10_w234a8.csv"


def load_model_info(model: str) -> ModelInfo:
    """The model's table metadata and FP network (metadata computed as the table builder does when no table)."""
    from evoproxy.errors import ConfigError, DataError
    from mqbench.dataroot import require
    from mqbench.networks.resnet_cifar import CHECKPOINT_NORMALIZATION, load_pretrained
    from mqbench.ptq import PTQSettings
    from mqbench.quant import default_bit_spec, layer_macs, quantizable_layers
    from mqbench.table import MQTable

    if not model.startswith("resnet") or not model.removeprefix("resnet").isdigit():
        raise ConfigError(f"unknown model {model!r}: expected a CIFAR ResNet such as resnet20")
    depth = int(model.removeprefix("resnet"))
    path = table_path(model)
    if path.exists():
        table = MQTable.load(path)
        meta = dict(table.meta)
        checkpoint = meta.get("checkpoint")
        if not checkpoint or not Path(checkpoint).exists():
            checkpoint = str(require(model))
        fp = load_pretrained(depth, checkpoint)
        if fp.checkpoint_sha256 != meta["checkpoint_sha256"]:
            raise DataError(f"checkpoint {checkpoint} does not match table {path.name} (sha256 differs)")
        if tuple(meta["allowed"]) != ALLOWED:
            raise DataError(f"table {path.name} allows bits {meta['allowed']}, this experiment needs {ALLOWED}")
        ptq = PTQSettings(**meta["ptq"])
    else:
        table = None
        checkpoint = str(require(model))
        fp = load_pretrained(depth, checkpoint)
        ptq = PTQSettings()
        spec = default_bit_spec(fp, keep_first_last=True, allowed=ALLOWED, act_bits=ptq.act_bits)
        layers = quantizable_layers(fp)
        meta = {"model": model, "checkpoint_sha256": fp.checkpoint_sha256, "layer_names": list(spec.layer_names),
                "searchable": list(spec.searchable), "fixed_bits": spec.fixed_bits, "act_bits": spec.act_bits,
                "allowed": list(spec.allowed), "ptq": ptq.as_dict(), "normalization": CHECKPOINT_NORMALIZATION,
                "layer_params": [m.weight.numel() for _, m in layers],
                "layer_bias": [m.bias.numel() if m.bias is not None else 0 for _, m in layers],
                "layer_macs": layer_macs(fp)}
    return ModelInfo(model, meta, table, ptq, str(checkpoint), fp.eval())


class CachedQuantizer:
    """``quantize_weight`` memoised per (weight tensor, bits): the FP weights never change here."""

    def __init__(self):
        from mqbench.quant import quantize_weight

        self.fn = quantize_weight
        self.cache: dict = {}
        self.__module__ = quantize_weight.__module__
        self.__qualname__ = quantize_weight.__qualname__

    def __call__(self, weight, bits: int):
        key = (id(weight), int(bits))
        if key not in self.cache:
            self.cache[key] = (weight, self.fn(weight, int(bits)))  # keeps the weight alive: id stays unique
        return self.cache[key][1]


def baseline_scorer(info: ModelInfo, name: str) -> Callable[[tuple], float]:
    """Registered MQ baseline ``name`` on a configuration, through ProxyContext as evaluate.score_item does."""
    from evoproxy.baselines import ProxyContext, get_proxy
    from mqbench.quant import quantize_weight

    fn = get_proxy(name)
    inputs, targets = info.batch()
    act_bits = int(info.meta.get("act_bits", 8))

    def score(config):
        ctx = ProxyContext(info.fp_model, inputs, targets, bit_config=info.full_bits(config), seed=0,
                           quantizer=quantize_weight, model_key=info.model_key, act_bits=act_bits,
                           prefetch=tuple(sorted(fn.needs)))
        return float(fn(ctx))

    return score


def size_scorer(info: ModelInfo) -> Callable[[tuple], float]:
    return lambda config: float(info.size_mb(config))


def proxy_file_scorer(info: ModelInfo, proxy) -> Callable[[tuple], float]:
    """A proxy file's score: FP primitives extracted once, quantization primitives added per configuration."""
    import copy

    from evoproxy.searchdata import QUANT_NAMES, with_bit_configs
    from primitives import extract

    terminals = proxy.tree.terminals()
    names = sorted(terminals)
    fp_names = sorted((set(terminals) - set(QUANT_NAMES)) | {"weight"})
    quant_names = [n for n in names if n in QUANT_NAMES]
    probes = int(proxy.primitives.get("hutchinson_probes", 0)) if any(n.startswith("hessian") for n in fp_names) else 0
    inputs, targets = info.batch()
    fp_stats = extract(copy.deepcopy(info.fp_model).eval(), inputs, targets, names=fp_names, hutchinson_probes=probes,
                       noise_std=float(proxy.primitives.get("noise_std", 0.01)), seed=0, threads=1)
    quantizer = CachedQuantizer()

    def score(config):
        (st,) = with_bit_configs(fp_stats, [info.full_bits(config)], quant_names, keep=set(names), quantizer=quantizer)
        return float(proxy.score(st))

    return score


# ============================================================================ PTQ cache

def ptq_key(info: ModelInfo) -> str:
    return hashlib.sha256(json.dumps(info.ptq.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def read_cache(path: Path) -> list[dict]:
    """Rows of the PTQ cache; a torn last line (a crash mid-write) is cut off."""
    lines = complete_lines(path)
    if not lines:
        return []
    if tuple(lines[0].split(",")) != CACHE_COLUMNS:
        from evoproxy.errors import DataError

        raise DataError(f"{path} has columns {lines[0]}, expected {','.join(CACHE_COLUMNS)}; move it away")
    rows = []
    for line in lines[1:]:
        parts = line.split(",")
        if len(parts) != len(CACHE_COLUMNS):
            continue
        row = dict(zip(CACHE_COLUMNS, parts))
        row["top1"] = float(row["top1"])
        rows.append(row)
    return rows


class PTQRunner:
    """PTQ top-1 of configurations, as the table builder computes it, cached in a CSV."""

    def __init__(self, info: ModelInfo, cache_path: Path, progress: bool = True):
        self.info = info
        self.path = cache_path
        self.progress = progress
        self.key = ptq_key(info)
        self.sha = info.meta["checkpoint_sha256"][:16]
        self.known: dict[tuple, float] = {}
        for row in read_cache(cache_path):
            if row["model"] == info.model and row["fp_sha256"] == self.sha and row["ptq_key"] == self.key:
                from mqbench.build import bits_from_str

                self.known[bits_from_str(row["bits"])] = row["top1"]
        self.new_runs = 0
        self.seconds = 0.0

    def run(self, configs: Sequence[tuple], desc: str) -> dict[tuple, float]:
        from tqdm import tqdm

        from mqbench.build import BuildJob, bits_to_str, evaluate_config

        todo = list(dict.fromkeys(tuple(c) for c in configs if tuple(c) not in self.known))
        if todo:
            if not self.path.exists() or self.path.stat().st_size == 0:
                append_line(self.path, ",".join(CACHE_COLUMNS) + "\n")
            job = BuildJob(self.info.model, self.info.checkpoint, self.info.meta["normalization"], None,
                           self.info.ptq, threads=1)
            for cfg in tqdm(todo, desc=desc, unit="cfg", file=sys.stderr, disable=not self.progress,
                            dynamic_ncols=True):
                acc, seconds = evaluate_config(job, self.info.full_bits(cfg))
                acc = round(acc, 2)  # as the table stores it
                append_line(self.path, f"{self.info.model},{bits_to_str(cfg)},{acc:.2f},{self.info.size_mb(cfg):.6f},"
                                        f"{self.info.bops_g(cfg):.6f},{self.info.ptq.calib_seed},{self.sha},{self.key},"
                                        f"{seconds:.3f}\n")
                self.known[cfg] = acc
                self.new_runs += 1
                self.seconds += seconds
        return {tuple(c): self.known[tuple(c)] for c in configs}


# ============================================================================ main

def default_proxies() -> list[Path]:
    found = sorted((REPO / "results" / "mq_correlation" / "runs").glob("seed*/best.json"))
    return found if found else [REPO / "runs" / "mq_s0" / "best.json"]


def _rel(path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def proxy_label(path: Path) -> str:
    path = Path(path)
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        rel = path
    if path.parent.name.startswith("seed") and path.name == "best.json":
        return f"evolved ({path.parent.name})"
    return f"evolved ({rel})"


def run_model(model: str, proxies: dict, n_random: int, seed: int, out: Path, progress: bool) -> tuple[list, dict]:
    from mqbench.build import bits_to_str
    from primitives.core import fixed_threads

    t0 = time.perf_counter()
    info = load_model_info(model)
    n = len(info.searchable)
    weights = info.weights
    fixed = info.fixed_bits_total()
    log(f"[{model}] {n} searchable layers, table: {info.table.path.name if info.table else 'none'}")

    methods: list[tuple[str, Callable]] = []
    for label, proxy in proxies.items():
        methods.append((label, lambda proxy=proxy: proxy_file_scorer(info, proxy)))
    methods.append(("HAWQ-V2", lambda: baseline_scorer(info, "hawq_v2")))
    methods.append(("OMPQ", lambda: baseline_scorer(info, "ompq")))
    methods.append(("size-only", lambda: size_scorer(info)))

    budgets = {b: info.total_bits((b,) * n) for b in BUDGET_BITS}
    picks: list[dict] = []  # one per (budget, method)
    details = {"model": model, "budgets": {}, "methods": {}, "ptq": info.ptq.as_dict(),
               "table": str(info.table.path.relative_to(REPO)) if info.table else None}
    for b, total in budgets.items():
        details["budgets"][f"uniform-{b}"] = {"total_bits": total, "searchable_bits": total - fixed,
                                              "size_mb": info.size_mb((b,) * n)}
    with fixed_threads(1):
        for label, make in methods:
            start = time.perf_counter()
            scorer = make()
            setup = time.perf_counter() - start
            memo: dict = {}

            def score(cfg, scorer=scorer, memo=memo):
                if cfg not in memo:
                    memo[cfg] = scorer(cfg)
                return memo[cfg]

            entry = {"setup_s": round(setup, 2), "budgets": {}}
            for b, total in budgets.items():
                res = maximise(score, weights, total - fixed, ALLOWED, seed)
                assert info.total_bits(res["config"]) <= total
                picks.append({"budget_bits": b, "method": label, "optimiser": res["optimiser"], "config": res["config"]})
                entry["budgets"][f"uniform-{b}"] = {
                    "optimiser": res["optimiser"], "bits": bits_to_str(res["config"]), "score": res["value"],
                    "score_uniform": score((b,) * n), "additivity": res["additivity"], "evaluations": res["evaluations"]}
                if label == "size-only":
                    entry["budgets"][f"uniform-{b}"]["tied_optima"] = count_configs_at_cost(weights, res["cost"], ALLOWED)
                log(f"[{model}] {label} @ uniform-{b}: {res['optimiser']} (additive: {res['additivity']['additive']}, "
                    f"max rel err {res['additivity']['max_rel_error']:.2g}) -> {bits_to_str(res['config'])}")
            entry["seconds"] = round(time.perf_counter() - start, 2)
            details["methods"][label] = entry
        for b in budgets:
            picks.append({"budget_bits": b, "method": "uniform", "optimiser": "uniform", "config": (b,) * n})

    runner = PTQRunner(info, out / "ptq_cache.csv", progress)
    ptq_start = time.perf_counter()
    top1 = runner.run([p["config"] for p in picks], f"PTQ {model}")

    # random: best of the first n_random meeting the budget in a seeded order
    random_info = {}
    for b, total in budgets.items():
        budget = total - fixed
        if info.table is not None:
            ids = [i for i in info.table.ids if info.table.rows[i]["kind"] == "sample"]
            cands = [info.table.bits(i) for i in ids]
            chosen = first_meeting_budget(cands, weights, budget, n_random, seed)
            accs = {c: info.table.accuracy(bits=c) for c in chosen}
            source = f"{info.table.path.name} sampled rows"
        else:
            chosen = draw_meeting_budget(n, weights, budget, n_random, seed, ALLOWED)
            accs = runner.run(chosen, f"PTQ {model} random @{b}-bit")
            source = "fresh seeded draws (PTQ)"
        if not chosen:
            log(f"[{model}] no random configuration meets the uniform-{b} budget; random row left out")
            random_info[f"uniform-{b}"] = {"n": 0, "source": source, "seed": seed}
            continue
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
    if info.table is not None:  # reproducibility check of the PTQ against the table's anchors
        details["anchor_check"] = {f"uniform-{b}": {"table": info.table.accuracy(bits=(b,) * n), "here": top1[(b,) * n]}
                                   for b in budgets}
    details["wall_s"] = round(time.perf_counter() - t0, 1)

    rows = []
    order = {name: i for i, (name, _) in enumerate(methods)}
    for b in budgets:
        budget_label = f"uniform {b}-bit ({info.size_mb((b,) * n):.4f} MB)"
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
            f"layer in {{2,3,4}}, activations 8 bit) has size <= budget. Proxies (evolved proxy files, HAWQ-V2, OMPQ, "
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

    from evoproxy.errors import ConfigError
    from evoproxy.tree import load_proxy

    parser = argparse.ArgumentParser(prog="python -m experiments.bit_allocation", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet32", help="comma-separated CIFAR ResNets")
    parser.add_argument("--proxy", nargs="+", default=None, metavar="PATH.json",
                        help="evolved proxy files (default: results/mq_correlation/runs/seed*/best.json, "
                             "else runs/mq_s0/best.json)")
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
        paths = [Path(p) for p in args.proxy] if args.proxy else default_proxies()
        proxies = {}
        for p in paths:
            label = proxy_label(p)
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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ptq = details[0]["ptq"] if details else {}
    caption = build_caption(details, args.random, args.seed, ptq)
    proxy_lines = "; ".join(f"{label} = {p.formula} (from {_rel(p.source)}, searched on "
                            f"{p.search.get('bench', '?')})" for label, p in proxies.items())
    caption += f" Evolved proxies: {proxy_lines}."
    paths_written = write_table(out, "table", all_rows, COLUMNS, caption, HEADERS, digits=4)
    details_path = out / "details.json"
    dump_json(details_path, {"seed": args.seed, "random": args.random, "proxies": {k: _rel(p.source) for k, p in proxies.items()},
                             "wall_s": round(time.perf_counter() - start, 1), "models": details})
    announce(*paths_written, details_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
