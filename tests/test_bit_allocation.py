"""Bit allocation under a size budget (experiments/bit_allocation.py): DP, additivity test, evolution."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from experiments.bit_allocation import (check_additive, config_cost, dp_allocate, draw_meeting_budget,
                                        evolve_allocate, first_meeting_budget, maximise)

ALLOWED = (2, 3, 4)


def _problem(n_layers: int, seed: int):
    rng = np.random.default_rng(seed)
    weights = [int(w) for w in rng.choice([9, 18, 36, 72, 144], size=n_layers)]
    contrib = [{b: float(v) for b, v in zip(ALLOWED, np.sort(rng.normal(size=3)) * rng.uniform(0.1, 3.0))}
               for _ in range(n_layers)]
    const = float(rng.normal())
    return weights, contrib, const


def _brute_force(weights, contrib, budget):
    best, best_cfg = -math.inf, None
    for cfg in itertools.product(ALLOWED, repeat=len(weights)):
        if config_cost(cfg, weights) > budget:
            continue
        value = sum(contrib[l][b] for l, b in enumerate(cfg))
        if value > best:
            best, best_cfg = value, cfg
    return best, best_cfg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_equals_brute_force(seed):
    weights, contrib, _ = _problem(7, seed)
    for level in (2.3, 2.7, 3.0, 3.4, 4.0):
        budget = int(level * sum(weights))
        cfg, value, cost = dp_allocate(contrib, weights, budget, ALLOWED)
        best, _ = _brute_force(weights, contrib, budget)
        assert cost == config_cost(cfg, weights) <= budget
        assert value == pytest.approx(best, rel=1e-12, abs=1e-12)
        assert value == pytest.approx(sum(contrib[l][b] for l, b in enumerate(cfg)), rel=1e-12, abs=1e-12)


def test_dp_budget_at_uniform_max_gives_all_max_when_values_increase():
    weights = [3, 5, 7]
    contrib = [{2: 0.0, 3: 1.0, 4: 2.0}] * 3
    cfg, _, _ = dp_allocate(contrib, weights, 4 * sum(weights), ALLOWED)
    assert cfg == (4, 4, 4)


def test_additivity_detector():
    weights, contrib, const = _problem(6, 3)

    def additive(cfg):
        return const + sum(contrib[l][b] for l, b in enumerate(cfg))

    res = check_additive(additive, 6, ALLOWED, seed=0)
    assert res["additive"] and res["checks"] >= 20
    for l in range(6):
        for b in ALLOWED:
            assert res["contrib"][l][b] == pytest.approx(contrib[l][b] - contrib[l][2], abs=1e-12)

    def product(cfg):  # not additive: interactions between layers
        return float(np.prod([1.0 + 0.1 * b for b in cfg]))

    assert not check_additive(product, 6, ALLOWED, seed=0)["additive"]

    def nonfinite(cfg):
        return math.nan if cfg[0] == 4 else float(sum(cfg))

    assert not check_additive(nonfinite, 6, ALLOWED, seed=0)["additive"]


def test_evolution_respects_budget_and_is_seeded():
    weights, contrib, _ = _problem(8, 4)

    def score(cfg):  # non-additive
        return sum(contrib[l][b] for l, b in enumerate(cfg)) + 0.3 * math.sin(sum(cfg))

    for level in (2.4, 3.0, 3.5):
        budget = int(level * sum(weights))
        res = evolve_allocate(score, weights, budget, ALLOWED, seed=0, population=16, generations=10)
        assert config_cost(res["config"], weights) == res["cost"] <= budget
        assert set(res["config"]) <= set(ALLOWED)
        again = evolve_allocate(score, weights, budget, ALLOWED, seed=0, population=16, generations=10)
        assert again["config"] == res["config"]
        best = max(score(c) for c in itertools.product(ALLOWED, repeat=8) if config_cost(c, weights) <= budget)
        assert res["value"] <= best + 1e-12


def test_maximise_picks_the_method():
    weights, contrib, const = _problem(6, 5)
    budget = 3 * sum(weights)
    res = maximise(lambda c: const + sum(contrib[l][b] for l, b in enumerate(c)), weights, budget, ALLOWED)
    assert res["optimiser"] == "dp"
    assert res["value"] == pytest.approx(const + _brute_force(weights, contrib, budget)[0], abs=1e-9)
    res = maximise(lambda c: float(np.prod(c)) / (1 + config_cost(c, weights)) ** 0.5, weights, budget, ALLOWED)
    assert res["optimiser"] == "evolution" and res["cost"] <= budget


def test_random_selection_meets_budget():
    weights = [1, 2, 3, 4]
    cands = list(itertools.product(ALLOWED, repeat=4))
    budget = 3 * sum(weights)
    chosen = first_meeting_budget(cands, weights, budget, 10, seed=0)
    assert len(chosen) == 10 and all(config_cost(c, weights) <= budget for c in chosen)
    assert chosen == first_meeting_budget(cands, weights, budget, 10, seed=0)
    drawn = draw_meeting_budget(4, weights, budget, 5, seed=0)
    assert len(set(drawn)) == 5 and all(config_cost(c, weights) <= budget and len(set(c)) > 1 for c in drawn)


def test_count_configs_at_cost():
    from experiments.bit_allocation import count_configs_at_cost

    weights = [2, 3, 3, 5, 6]
    for cost in (10 * 2 + 9, 3 * 19, 4 * 19 - 1):
        want = sum(config_cost(c, weights) == cost for c in itertools.product(ALLOWED, repeat=5))
        assert count_configs_at_cost(weights, cost, ALLOWED) == want


def test_ptq_cache_cuts_a_torn_line(tmp_path):
    from experiments.bit_allocation import CACHE_COLUMNS, read_cache

    path = tmp_path / "cache.csv"
    path.write_text(",".join(CACHE_COLUMNS) + "\nresnet20,2-3,70.10,0.1,0.2,0,abc,key,1.0\nresnet20,3-3,7")
    rows = read_cache(path)
    assert [r["bits"] for r in rows] == ["2-3"] and rows[0]["top1"] == 70.1
    assert path.read_text().endswith("1.0\n")
