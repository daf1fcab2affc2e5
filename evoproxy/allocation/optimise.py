"""Bit-allocation optimisers (pure): maximise a score over bit configurations under an integer budget.

A configuration gives each searchable layer a bit-width from ``allowed``; its cost is
Σ_l w_l b_l for integer per-layer weights w_l (weight elements for a size budget, MACs x
activation bits for a BOPs budget) and must not exceed the budget.

A score is *layer-additive* when score(config) = const + Σ_l c_l(b_l). The test is generic
(:func:`check_additive`): c_l(b) = score(base with layer l at b) − score(base) for base = all
layers at the lowest bit-width, then the additive prediction is checked on ``ADDITIVITY_CHECKS``
seeded random configurations with relative tolerance ``ADDITIVITY_RTOL`` (``math.isclose``). An
additive score is maximised exactly by dynamic programming over the layers with a Pareto frontier
of (cost, value) (:func:`dp_allocate`); otherwise a seeded evolutionary search is used
(:func:`evolve_allocate`, over-budget configurations repaired by lowering random layers).
:func:`maximise` picks between them.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from evoproxy.errors import ConfigError

ALLOWED = (2, 3, 4)
ADDITIVITY_CHECKS = 20
ADDITIVITY_RTOL = 1e-6
SEED = 0


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
            raise ConfigError(f"budget {budget} is below the cost of the smallest configuration")
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
            raise ConfigError(f"budget {budget} is below the cost of the smallest configuration")
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
             allowed: Sequence[int] = ALLOWED, seed: int = SEED,
             on_checked: Callable[[dict], None] | None = None) -> dict:
    """The configuration within ``budget`` that maximises ``score``: DP when additive, else evolution.

    ``on_checked(check)`` is called with the additivity test's result before optimising (it may
    raise, e.g. when the score failed on every configuration so far). Returns {"optimiser" ("dp" or
    "evolution"), "config", "value", "cost", "additivity", "evaluations"}."""
    memo: dict[tuple, float] = {}

    def cached(cfg):
        cfg = tuple(int(b) for b in cfg)
        if cfg not in memo:
            memo[cfg] = float(score(cfg))
        return memo[cfg]

    check = check_additive(cached, len(weights), allowed, seed)
    if on_checked is not None:
        on_checked(check)
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
