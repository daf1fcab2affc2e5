"""The search sample (random or stratified), the validation items and the choice of best.json on them."""
import json

import numpy as np
import pytest

from evoproxy.errors import ConfigError
from evoproxy.api import run_search
from evoproxy.evolution.searchconfig import SearchConfig
from evoproxy.evolution.searchsample import search_items, spread_order, stratified


class Pool:
    """A benchmark stand-in: ids 0..n-1, search split = the even ids, truth = a shuffled ramp."""

    def __init__(self, n=400, seed=0):
        self.truth = np.random.default_rng(seed).permutation(n).astype(float)
        self.ids = list(range(n))

    def split(self):
        return [i for i in self.ids if i % 2 == 0], [i for i in self.ids if i % 2]

    def ground_truth(self, ids):
        return self.truth[np.asarray(ids, dtype=int)]

    def sample(self, n, seed, split):
        from mqbench.bench.table import sample_ids

        return sample_ids(self.split()[0], n, seed)


def test_random_sampling_is_the_benchmarks_search_sample_and_validation_comes_after_it():
    b = Pool()
    fit, val = search_items(b, 50, 0.0, seed=3, strategy="random")
    assert fit == b.sample(50, 3, "search") and val == []
    fit2, val2 = search_items(b, 50, 0.5, seed=3, strategy="random")
    assert fit2 == fit and len(val2) == 25 and not set(val2) & set(fit2) and set(val2) <= set(b.split()[0])


def test_stratified_sample_takes_one_item_per_accuracy_stratum():
    b = Pool()
    pool = b.split()[0]
    fit, val = search_items(b, 40, 0.25, seed=1, strategy="stratified")
    assert len(fit) == 40 and len(val) == 10 and len(set(fit + val)) == 50 and set(fit + val) <= set(pool)
    ranks = np.argsort(np.argsort(b.ground_truth(pool)))  # each pool item's accuracy rank
    rank_of = dict(zip(pool, ranks))
    strata = np.array_split(np.arange(len(pool)), 50)
    hit = sorted(next(k for k, s in enumerate(strata) if rank_of[i] in s) for i in fit + val)
    assert hit == list(range(50))  # exactly one per stratum
    assert search_items(b, 40, 0.25, seed=1, strategy="stratified") == (fit, val)  # seeded
    assert search_items(b, 40, 0.25, seed=2, strategy="stratified") != (fit, val)
    # the validation items and every prefix of the fitness sample cover the range of accuracies
    val_strata = sorted(next(k for k, s in enumerate(strata) if rank_of[i] in s) for i in val)
    assert max(np.diff([0] + val_strata + [50])) <= 12
    for k in (10, 20):
        pre = sorted(next(k2 for k2, s in enumerate(strata) if rank_of[i] in s) for i in fit[:k])
        assert max(np.diff([0] + pre + [50])) <= 3 * 50 / k


def test_spread_order_is_a_permutation_and_bad_settings_say_so():
    order = spread_order(37, seed=4)
    assert sorted(order.tolist()) == list(range(37))
    with pytest.raises(ConfigError, match="sampling"):
        search_items(Pool(), 10, 0.0, seed=0, strategy="quantile")
    fit, val = search_items(Pool(n=40), 18, 0.5, seed=0, strategy="stratified")  # 20 in the split: 2 are left
    assert len(fit) == 18 and len(val) == 2
    assert search_items(Pool(n=40), 20, 0.5, seed=0, strategy="random")[1] == []
    with pytest.raises(ConfigError, match="search split has only 20"):
        search_items(Pool(n=40), 21, 0.0, seed=0, strategy="random")
    assert stratified([5, 6, 7], np.array([3.0, 1.0, 2.0]), 3, seed=0) != []


def test_validation_chooses_best_json_from_the_hall_of_fame(search_root, tmp_path):
    run = tmp_path / "val"
    kw = dict(bench="nb201-cifar10", samples=4, validation=0.5, sampling="stratified", batch=8, seed=2,
              population=6, generations=2, screen_samples=2, progress=False)
    result = run_search(SearchConfig(out=str(run), **kw))
    config = json.loads((run / "config.json").read_text())
    assert len(config["validation_ids"]) == 2 and not set(config["validation_ids"]) & set(config["search_ids"])
    hof = json.loads((run / "hall_of_fame.json").read_text())
    best = json.loads((run / "best.json").read_text())
    vals = [e["validation_fitness"] if e["validation_fitness"] is not None else -np.inf for e in hof]
    chosen = hof[int(np.argmax(vals))]
    assert best["tree"] == chosen["tree"] and best["search"]["validation_items"] == 2
    assert result.best.formula == chosen["formula"]
    assert best["search"]["sampling"] == "stratified"
    # resuming the finished run changes nothing
    again = run_search(SearchConfig(out=str(run), **kw), resume=True)
    assert json.loads((run / "best.json").read_text()) == best and again.best.formula == result.best.formula


def test_ranking_key_sees_monotone_transforms_and_distinct_rankings_keeps_one_each(search_root, tmp_path):
    from evoproxy.evolution.selection import ranking_key

    s = np.array([0.3, -1.0, 2.0, 2.0, 5.0])
    assert ranking_key(s) == ranking_key(np.exp(s)) == ranking_key(-s, -1) != ranking_key(-s)
    kw = dict(bench="nb201-cifar10", samples=6, batch=8, seed=1, population=6, generations=2, screen_samples=2,
              progress=False, multi_fidelity=False)
    distinct = {}
    for on in (False, True):
        run_search(SearchConfig(out=str(tmp_path / str(on)), distinct_rankings=on, **kw))
        pop = json.loads((tmp_path / str(on) / "checkpoint.json").read_text())["population"]
        assert len(pop) == 6
        distinct[on] = len({ranking_key(i["scores"], i["orientation"]) for i in pop})
    assert distinct[True] == 6 and distinct[False] < 6
    from evoproxy.evolution.searchconfig import SearchConfig as C

    assert "distinct_rankings" not in C(bench="x", out="y").result_settings()  # the old runs' behaviour: off
