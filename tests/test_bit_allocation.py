"""Bit allocation (evoproxy.allocation, experiments/bit_allocation.py): DP, additivity test, evolution,
budgets, failures, the allocate command."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from evoproxy.allocation.optimise import check_additive, config_cost, dp_allocate, evolve_allocate, maximise
from evoproxy.errors import ConfigError
from experiments.bit_allocation import first_meeting_budget

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


def test_count_configs_at_cost():
    from evoproxy.allocation.optimise import count_configs_at_cost

    weights = [2, 3, 3, 5, 6]
    for cost in (10 * 2 + 9, 3 * 19, 4 * 19 - 1):
        want = sum(config_cost(c, weights) == cost for c in itertools.product(ALLOWED, repeat=5))
        assert count_configs_at_cost(weights, cost, ALLOWED) == want


def test_ptq_cache_cuts_a_torn_line(tmp_path):
    from evoproxy.allocation.ptq import CACHE_COLUMNS, read_cache

    path = tmp_path / "cache.csv"
    path.write_text(",".join(CACHE_COLUMNS) + "\nresnet20,2-3,70.10,0.1,0.2,0,abc,key,1.0\nresnet20,3-3,7")
    rows = read_cache(path)
    assert [r["bits"] for r in rows] == ["2-3"] and rows[0]["top1"] == 70.1
    assert path.read_text().endswith("1.0\n")


# ------------------------------------------------------------------------------------- budgets

@pytest.mark.parametrize("budget, kind, value", [
    ("uniform-3", "uniform", 3), ("UNIFORM-4", "uniform", 4), ("0.1MB", "size", 0.1 * 2**20),
    ("0.1 mb", "size", 0.1 * 2**20), ("98KB", "size", 98 * 1024), ("0.25", "size", 0.25 * 2**20),
    (0.2, "size", 0.2 * 2**20), (1, "size", 2**20), ("1.2GBOPs", "bops", 1.2e9), ("950MBOPs", "bops", 9.5e8),
    ("3e8BOPs", "bops", 3e8), ("2.5 gbops", "bops", 2.5e9)])
def test_budgets_parse(budget, kind, value):
    from evoproxy.allocation import parse_budget

    b = parse_budget(budget)
    assert b.kind == kind and b.value == pytest.approx(value, rel=1e-12)
    assert b.metric == ("bops" if kind == "bops" else "size")


@pytest.mark.parametrize("budget", ["3GB", "uniform-0", "uniform-x", "uniform-33", "-1MB", "0MB", "0", -0.5,
                                  math.inf, "nanMB", "1.2 GOPs", "", "MB", True, None, [1]])
def test_bad_budgets_are_one_line_errors(budget):
    from evoproxy.allocation import parse_budget

    with pytest.raises(ConfigError) as err:
        parse_budget(budget)
    assert "\n" not in str(err.value) and "budget" in str(err.value)


def _toy_info(n_searchable: int = 5, seed: int = 0):
    """A ModelInfo without a network: two fixed 8-bit layers around ``n_searchable`` searchable ones."""
    from evoproxy.allocation.model import ModelInfo

    rng = np.random.default_rng(seed)
    n = n_searchable + 2
    params = [int(p) for p in rng.choice([9, 18, 36, 72, 144], size=n)]
    meta = {"layer_names": [f"l{i}" for i in range(n)], "searchable": list(range(1, n - 1)), "fixed_bits": 8,
            "act_bits": 8, "allowed": [2, 3, 4], "layer_params": params, "layer_bias": [0] * (n - 1) + [10],
            "layer_macs": [p * 16 for p in params], "checkpoint_sha256": "0" * 64}
    return ModelInfo("toy", meta, None, None, "")


def test_budget_limits_in_bits_and_bops():
    from evoproxy.allocation import parse_budget

    info = _toy_info()
    n = len(info.searchable)
    for k in (2, 3, 4):
        weights, limit = info.problem(parse_budget(f"uniform-{k}"))
        assert weights == info.weights and limit == config_cost((k,) * n, weights)  # exactly uniform-k fits
    size = info.size_mb((3,) * n)
    _, limit = info.problem(parse_budget(size))
    assert info.total_bits((3,) * n) - 8 < limit + info.fixed_bits_total() <= info.total_bits((3,) * n)
    weights, limit = info.problem(parse_budget(f"{info.total_bops((3,) * n)}BOPs"))
    assert limit == config_cost((3,) * n, weights) and weights == [m * 8 for m in info.meta["layer_macs"][1:-1]]


# ------------------------------------------------------------------------------------- Allocator on a toy model

def test_allocator_dp_equals_brute_force_and_respects_budgets():
    from evoproxy.allocation import Allocator, parse_budget

    info = _toy_info(6, 1)
    weights, contrib, const = _problem(6, 7)
    calls = []

    def proxy(cfg):
        calls.append(cfg)
        return const + sum(contrib[l][b] for l, b in enumerate(cfg))

    alloc = Allocator(proxy, "toy", info=info, label="toy proxy")
    for budget in ("uniform-3", info.size_mb((3, 4, 2, 3, 4, 2)), f"{info.total_bops((4, 3, 3, 2, 3, 3))}BOPs"):
        r = alloc.allocate(budget)
        w, limit = info.problem(parse_budget(budget))
        best, _ = _brute_force(w, contrib, limit)
        assert r.optimiser == "dp" and r.score == pytest.approx(const + best, abs=1e-9)
        assert config_cost(r.config, w) <= limit and r.bits == info.full_bits(r.config) and r.failed == 0
        assert r.bits[0] == r.bits[-1] == 8 and r.searchable == info.searchable
    assert len(calls) == len(set(calls))  # scores memoised across budgets
    with pytest.raises(ConfigError, match="below the smallest configuration"):
        alloc.allocate("0.0001MB")


def test_allocator_counts_failures_and_refuses_an_all_fail_proxy():
    from evoproxy.allocation import Allocator

    info = _toy_info(5, 2)

    def some_fail(cfg):
        if cfg[0] == 4:
            raise ZeroDivisionError("boom")
        return float(sum(cfg))

    r = Allocator(some_fail, "toy", info=info).allocate("uniform-3")
    assert r.optimiser == "evolution" and 0 < r.failed < r.scored
    assert r.first_failure == "ZeroDivisionError: boom" and r.config[0] != 4

    def all_fail(cfg):
        return math.nan

    with pytest.raises(ConfigError) as err:
        Allocator(all_fail, "toy", info=info, label="bad").allocate("uniform-3")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("proxy bad failed on all 11 configurations") and "non-finite" in msg


# ------------------------------------------------------------------------------------- the allocate command

def _tiny_table(root, tmp_path):
    """An MQ table with the metadata allocation reads, for the tiny ResNet-8 checkpoint (made-up accuracies)."""
    from conftest import tiny_mq_meta, write_mq_table

    from mqbench.quant.ptq import PTQSettings

    meta = tiny_mq_meta(root, normalization="imagenet",
                        ptq=PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, eval_batch=10).as_dict())
    return write_mq_table(tmp_path, meta, [([3] * len(meta["searchable"]), 50.0)])


def test_cli_allocate_prints_the_configuration_and_caches_ptq(tiny_data_root, tmp_path, capsys, monkeypatch):
    import json

    from evoproxy.cli import main

    table = _tiny_table(tiny_data_root, tmp_path)
    args = ["allocate", "--proxy", "bit_sum", "--model", "resnet8", "--budget", "uniform-3", "--table", str(table),
            "--batch", "10"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "budget:    uniform-3" in out and "exact DP" in out and "(fixed)" in out
    bits = out.split("bits:")[1].split()[0]
    assert len(bits.split("-")) == 6 and set(bits.split("-")) <= {"2", "3", "4"}
    cache = tmp_path / "ptq.csv"
    assert main(args + ["--ptq", "--ptq-cache", str(cache), "--json"]) == 0  # runs PTQ once (tiny data)
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["bits_str"] == bits and 0 <= first["top1"] <= 100 and first["failed"] == 0
    assert len(cache.read_text().splitlines()) == 2

    def no_ptq(*a, **k):
        raise AssertionError("PTQ should come from the cache")

    monkeypatch.setattr("mqbench.bench.build.evaluate_config", no_ptq)
    assert main(args + ["--ptq", "--ptq-cache", str(cache)]) == 0
    assert f"top-1:     {first['top1']:.2f} %" in capsys.readouterr().out


def test_cli_allocate_all_fail_proxy_exits_nonzero_with_one_line(tiny_data_root, tmp_path, capsys):
    import json

    from evoproxy.cli import main

    table = _tiny_table(tiny_data_root, tmp_path)
    proxy = tmp_path / "bad.json"
    proxy.write_text(json.dumps({"format": "evoproxy.proxy/1",
                                 "tree": ["layer_sum", ["mean", ["batch_std", "bitwidth"]]]}))
    assert main(["allocate", "--proxy", str(proxy), "--model", "resnet8", "--budget", "uniform-3",
                 "--table", str(table), "--batch", "10"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: proxy ") and "\n" not in err and "failed on all 13 configurations" in err
    assert "batch_std" in err and captured.out == ""
    assert main(["allocate", "--proxy", "bit_sum", "--model", "resnet8", "--budget", "3GB",
                 "--table", str(table)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: bad budget '3GB'")
