"""Islands (identical for any --jobs and after an interruption + resume), the deterministic screening cost
bound, and the time-budget sizing."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from evoproxy.evolution.budget import MAX_GENERATIONS, MIN_POPULATION, POPULATIONS, choose_sizes
from evoproxy.api import run_search
from experiments.tools.fuzz import synthetic_stats
from evoproxy.evolution.islands import Individual, Island, migrate
from evoproxy.language.ops import OPS
from evoproxy.language.cost import CostMeter, evaluate_tree as evaluate_json, op_cost, tree_cost
from evoproxy.evolution.screening import score_range
from evoproxy.evolution.searchconfig import SearchConfig
from evoproxy.language.tree import parse_tree, tree_value

TINY = dict(bench="nb201-cifar10", samples=8, population=6, generations=3, batch=8, seed=3, progress=False)
ISLANDS = dict(islands=2, migration_interval=1, migrants=1, restart_after=1)
# multi-fidelity with a rung at half the samples (margin 0), so that children are rejected early on both islands
FIDELITY = {False: dict(multi_fidelity=False),
            True: dict(multi_fidelity=True, screen_samples=2, rungs=[0.5], margins=[0.0])}


def _outputs(run) -> tuple:
    rows = list(csv.reader(open(run / "log.csv")))
    col = rows[0].index("seconds")
    log = [r[:col] + r[col + 1:] for r in rows]
    return log, (run / "best.json").read_text(), (run / "hall_of_fame.json").read_text(), (run / "islands.csv").read_text()


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("fidelity", [False, True])
def test_islands_equal_for_any_jobs_and_after_an_interruption(search_root, tmp_path, stop_after_checkpoint, fidelity):
    settings = {**TINY, **ISLANDS, **FIDELITY[fidelity]}
    ref = run_search(SearchConfig(out=str(tmp_path / "ref"), jobs=1, **settings))
    want = _outputs(tmp_path / "ref")
    isl = list(csv.DictReader(open(tmp_path / "ref" / "islands.csv")))
    assert [(int(r["generation"]), int(r["island"])) for r in isl] == [(g, i) for g in range(4) for i in range(2)]
    assert any(int(r["migrants_in"]) for r in isl)
    log = list(csv.DictReader(open(tmp_path / "ref" / "log.csv")))
    if fidelity:  # children decided early, on both islands' thresholds
        assert sum(int(r["early_rejected"]) for r in log) > 0
    else:
        assert any(int(r["restarted"]) for r in isl)  # a restart happened too
    assert ref.best.formula
    for row in log:  # log.csv: best over the islands
        assert float(row["best_fitness"]) == max(float(r["best_fitness"]) for r in isl if r["generation"] == row["generation"])

    run_search(SearchConfig(out=str(tmp_path / "jobs2"), jobs=2, **settings))
    assert _outputs(tmp_path / "jobs2") == want

    with stop_after_checkpoint(2, Interrupted), pytest.raises(Interrupted):
        run_search(SearchConfig(out=str(tmp_path / "cut"), jobs=1, **settings))
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["generation"] == 2
    run_search(SearchConfig(out=str(tmp_path / "cut"), jobs=1, **settings), resume=True)
    assert _outputs(tmp_path / "cut") == want


def _ind(key, fitness):
    return Individual(parse_tree(["layer_sum", ["sum", "weight"]]), key, fitness, 1, [], 0)


def test_migration_copies_the_best_to_the_next_island_replacing_its_worst():
    a = [_ind("a1", 0.9), _ind("a2", 0.1), _ind("a3", 0.5)]
    b = [_ind("b1", 0.2), _ind("b2", 0.8), _ind("b3", 0.3)]
    c = [_ind("a1", 0.9), _ind("c2", 0.0), _ind("c3", 0.4)]
    arrived = migrate([a, b, c], 1, diversity=True)
    assert [i.key for i in b] == ["a1", "b2", "b3"]  # a's best replaced b's worst
    assert [i.key for i in c] == ["a1", "b2", "c3"]  # b's best (taken before b changed) replaced c's worst
    assert [i.key for i in a] == ["a1", "a2", "a3"] and arrived == [0, 1, 1]  # c's best a1 is already on a
    isl = Island([_ind("x", 0.5)])
    isl.record(0, False)
    assert not isl.stagnant(3, 3) and isl.stagnant(4, 3) and not isl.stagnant(100, 0)


@pytest.fixture(scope="module")
def stats():
    torch.manual_seed(0)
    return synthetic_stats(seed=0, networks=2, batch=4, probes=1)


def test_cost_bound_rejects_deterministically(stats):
    tree = parse_tree(["layer_sum", ["l1", ["gram", ["mul", "act_out", "act_grad"]]]])
    cost = tree_cost(tree.to_json(), stats, 0, 3)
    meter = CostMeter()
    functions = meter.functions()

    def run(st, fns):  # every layer of one network a batch of one
        return evaluate_json(tree.to_json(), [l.tensors for l in st.layers], [math.prod(l.weight_shape) for l in st.layers], fns)

    values = [run(st, functions) for st in stats[:3]]
    assert meter.total == cost > 0
    assert values == [run(st, {n: op.fn for n, op in OPS.items()}) for st in stats[:3]]  # metering: same scores
    assert values == pytest.approx([tree_value(tree, st) for st in stats[:3]], rel=1e-6)  # = the stacked evaluator
    ok = score_range(tree, stats, 0, 3, cost_bound=cost)
    assert ok.reason is None and ok.scores == pytest.approx(values, rel=1e-5)
    over = score_range(tree, stats, 0, 3, cost_bound=cost - 1)
    assert over.reason == "cost", over
    x, y = torch.randn(6, 3, 5), torch.randn(6, 3, 5)
    for items in (1, 4):  # the meter's inline counts are op_cost's of each item of a batch
        for name, op in OPS.items():
            if op.kind in ("unary", "binary", "reduce"):
                args = (x, y) if op.kind == "binary" else (x,)
                meter = CostMeter()
                result = meter.functions()[name](*(a.expand(items, *a.shape) for a in args))
                one = op_cost(name, [a.shape for a in args], () if op.kind == "reduce" else result.shape[1:])
                assert meter.total == items * one, name
    assert op_cost("gram", [(4, 3, 5)], (4, 4)) == 16 * 15
    assert op_cost("add", [(2, 3), (2, 3)], (2, 3)) == 6 and op_cost("sum", [(2, 3)], ()) == 6
    assert op_cost("logdet", [(4, 10)], ()) == 16 * 10 + 64 and op_cost("ladd", [], ()) == 0


def test_time_budget_sizes_follow_the_rule():
    # neither size given: square schedule, total population sqrt(F / 4.5) rounded down to the ladder; generations open
    assert choose_sizes(10.0, 600.0, 1, None, None) == (32, MAX_GENERATIONS)  # F = 6000: sqrt(1333) = 36.5 -> 32
    assert choose_sizes(10.0, 600.0, 4, None, None) == (8, MAX_GENERATIONS)  # 36.5 / 4 = 9.1 -> 8
    assert choose_sizes(10.0, 600.0, 1, 32, None) == (32, MAX_GENERATIONS)
    assert choose_sizes(10.0, 600.0, 1, None, 29) == (32, 29)  # 6000 / (4.5 * 30) = 44.4 -> 32
    assert choose_sizes(0.0, 600.0, 1, None, None) == (MIN_POPULATION, MAX_GENERATIONS)  # nothing affordable
    assert choose_sizes(1e9, 1e9, 1, None, None)[0] == POPULATIONS[-1]
    assert choose_sizes(10.0, 600.0, 1, None, None, smallest=40) == (40, MAX_GENERATIONS)  # above elites/migrants
    # a run of the same command a few percent faster or slower gets the same population
    assert {choose_sizes(10.0 * f, 600.0, 1, None, None)[0] for f in (0.9, 0.95, 1.0, 1.05)} == {32}


def test_stop_rule_learns_the_pace_and_patience():
    from types import SimpleNamespace

    from evoproxy.evolution.budget import next_generation_seconds, stalled_for, stop_reason

    log = [{"generation": g, "seconds": s, "best_fitness": f}
           for g, (s, f) in enumerate([(60, 0.5), (10, 0.6), (20, 0.6), (30, 0.6), (30, 0.6)])]
    assert next_generation_seconds(log[:1]) == 60 and next_generation_seconds(log) == (20 + 30 + 30) / 3
    assert stalled_for(log) == 3 and stalled_for(log[:2]) == 0
    c = SimpleNamespace(generations=MAX_GENERATIONS, patience=0, time_budget=200.0)
    assert stop_reason(c, log, 140.0) is None  # 140 + 26.7 < 200
    assert "time budget" in stop_reason(c, log, 180.0)
    assert "converged" in stop_reason(SimpleNamespace(generations=100, patience=3, time_budget=None), log, 0.0)
    assert stop_reason(SimpleNamespace(generations=4, patience=3, time_budget=1.0), log, 1e9) is None  # the last one


def test_time_budget_run_records_its_sizes(search_root, tmp_path):
    run = tmp_path / "budget"
    result = run_search(SearchConfig(out=str(run), bench="nb201-cifar10", samples=8, batch=8, seed=3, progress=False,
                                     time_budget=0.5))
    config = json.loads((run / "config.json").read_text())
    sizing = config["sizing"]
    assert sizing["sized_by"] == "time_budget" and sizing["machine_dependent"] is True
    assert "only wall-clock" in sizing["wall_clock"] and sizing["trees_per_second"] > 0
    assert (config["population"], config["generations"]) == (sizing["population"], sizing["generations"])
    assert result.stopped and "time budget" in result.stopped  # the budget was spent before generation 1
    # the budget's clock starts after the preparation (loading the statistics, the workers' warm-up)
    status = json.loads((run / "run.json").read_text())
    searched = sizing["calibration_seconds"] + sum(float(r["seconds"]) for r in csv.DictReader(open(run / "log.csv")))
    assert status["preparation_seconds"] > 0 and sizing["warmup_seconds"] >= 0
    assert searched <= status["elapsed_seconds"] < searched + status["preparation_seconds"]
    # a resume adopts the recorded sizes (nothing measured again) and sees the run finished
    again = run_search(SearchConfig(out=str(run), bench="nb201-cifar10", samples=8, batch=8, seed=3, progress=False,
                                    time_budget=0.5), resume=True)
    assert json.loads((run / "config.json").read_text())["sizing"] == sizing and again.best.formula
    assert math.isfinite(again.best.search["fitness_value"])


def test_time_budget_population_is_resized_once_at_the_real_pace(search_root, tmp_path):
    run = tmp_path / "resized"
    kw = dict(out=str(run), bench="nb201-cifar10", samples=8, batch=8, seed=3, progress=False, time_budget=120.0,
              generations=4)
    result = run_search(SearchConfig(**kw))
    config = json.loads((run / "config.json").read_text())
    resized = config["sizing"]["resized"]
    assert resized["after_generation"] == 2 and resized["trees_per_second"] > 0
    assert config["population"] == resized["population"] >= MIN_POPULATION
    assert resized["population"] in POPULATIONS and result.generations_done == 4
    # generations 3 and 4 have the resized population
    state = json.loads((run / "checkpoint.json").read_text())
    assert len(state["population"]) == resized["population"]
    again = run_search(SearchConfig(**kw), resume=True)  # a resume keeps the resized population, measures nothing
    assert json.loads((run / "config.json").read_text())["sizing"] == config["sizing"]
    assert again.best.formula == result.best.formula
