"""evoproxy.ProxySearch and evoproxy.Benchmark.from_models on tiny networks, batches and searches."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import evoproxy
from evoproxy import ConfigError

TINY = dict(population=4, generations=1, screen_samples=2, progress=False, time_budget=None)


class TinyNet(nn.Module):
    """A small CNN of a width/depth space (built without arguments too, for save())."""

    def __init__(self, width: int = 4, depth: int = 1):
        super().__init__()
        layers, c = [], 3
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)  # wrong input size for the batch

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_net(desc: dict) -> nn.Module:
    return TinyNet(desc["width"], desc["depth"])


SPACE = [{"width": w, "depth": d} for w in (2, 4, 6) for d in (1, 2, 3)]  # 9 architectures


def batch(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 6, 6, generator=g), torch.arange(n) % 4


def nets(n: int = 9):
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(make_net(SPACE[i % len(SPACE)]))
    return out


def accs(n: int = 9):
    return [50 + 3 * SPACE[i % len(SPACE)]["width"] + SPACE[i % len(SPACE)]["depth"] + 0.1 * i for i in range(n)]


def test_fit_models_list_then_predict_rank_export(tmp_path):
    x, y = batch()
    models = nets()
    before = [m.state_dict()["head.weight"].clone() for m in models]
    est = evoproxy.ProxySearch(seed=0, holdout=0.25, out=tmp_path / "run", **TINY)
    assert est.fit(models, accs(), inputs=x, targets=y) is est
    assert len(est.train_indices_) == 7 and len(est.holdout_indices_) == 2
    assert not set(est.train_indices_) & set(est.holdout_indices_)
    assert est.best_.formula and est.hall_of_fame_[0].formula == est.best_.formula
    assert len(est.equations_) == len(est.hall_of_fame_) and est.equations_[0]["rank"] == 1
    assert {"formula", "fitness", "size"} <= set(est.equations_[0])
    assert est.holdout_["n"] == 2 and "spearman" in est.holdout_
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert sorted(config["search_ids"]) == est.train_indices_  # the search saw the training items only
    # predict equals the holdout evaluation's per-item scores (same statistics protocol)
    hold = [models[i] for i in est.holdout_indices_]
    table = est.score_holdout([est.best_])
    ev = {int(r["id"]): next(iter(r["scores"].values())) for r in table.items["results"]}
    np.testing.assert_allclose(est.predict(hold), [ev[i] for i in est.holdout_indices_], rtol=1e-6)
    scores = est.predict(models)
    assert est.rank(models) == [int(i) for i in np.argsort(-scores, kind="stable")]
    assert (est.export(tmp_path / "p.py")).read_text().count("def score(") == 1
    for m, w in zip(models, before):  # the user's networks are untouched
        assert torch.equal(m.state_dict()["head.weight"], w) and m.head.weight.grad is None


def test_fit_is_reproducible_and_resumes(tmp_path):
    x, y = batch()
    a = evoproxy.ProxySearch(seed=3, out=tmp_path / "a", **TINY).fit(nets(), accs(), inputs=x, targets=y)
    b = evoproxy.ProxySearch(seed=3, out=tmp_path / "b", **TINY).fit(nets(), accs(), inputs=x, targets=y)
    assert [e["formula"] for e in a.equations_] == [e["formula"] for e in b.equations_]
    assert a.holdout_indices_ == b.holdout_indices_
    with pytest.raises(ConfigError, match="already holds a search"):
        evoproxy.ProxySearch(seed=3, out=tmp_path / "a", **TINY).fit(nets(), accs(), inputs=x, targets=y)
    (tmp_path / "a" / "log.csv").unlink()  # the run folder is the search's own: resume continues from its checkpoint
    c = evoproxy.ProxySearch(seed=3, out=tmp_path / "a", resume=True, **TINY).fit(nets(), accs(), inputs=x, targets=y)
    assert c.result_.generations_done == 1 and (tmp_path / "a" / "log.csv").exists()
    assert [e["formula"] for e in c.equations_] == [e["formula"] for e in a.equations_]


def test_factory_and_descriptions_save_reload_scores_identically(tmp_path):
    from evoproxy.api import evaluate

    x, y = batch()
    est = evoproxy.ProxySearch(seed=0, holdout=0, **TINY).fit(make_net, SPACE, accs(), inputs=x, targets=y)
    assert est.holdout_ is None and len(est.train_indices_) == 9
    bench = evoproxy.Benchmark.from_models(make_net, SPACE, accs(), inputs=x, targets=y)
    spec = bench.save(tmp_path / "saved", search_fraction=0.5)
    assert "tensors=" in spec.read_text() and "source" in (tmp_path / "saved" / "spec.csv").read_text()
    assert "live-" not in (tmp_path / "saved" / "spec.csv").read_text()  # nothing of this session in the files
    table = evaluate(str(spec), [est.best_], samples=None, split="all", batch=len(y), progress=False)
    got = {int(r["id"]): next(iter(r["scores"].values())) for r in table.items["results"]}
    np.testing.assert_allclose([got[i] for i in range(9)], est.predict(SPACE), rtol=1e-6)
    # the CLI's search reads it (a fresh search on the saved spec, as `evoproxy search --bench spec` runs it)
    from evoproxy.api import run_search
    from evoproxy.evolution.searchconfig import SearchConfig

    res = run_search(SearchConfig(bench=str(spec), out=str(tmp_path / "cli"), samples=4, batch=len(y), seed=0,
                                  population=4, generations=0, screen_samples=2, progress=False))
    assert res.best.formula


def test_models_list_save_writes_weights_and_reloads(tmp_path):
    from mqbench.bench.benchmarks import get_benchmark

    x, y = batch()
    models = [TinyNet() for _ in range(4)]  # one architecture, four initialisations: TinyNet() + weights rebuilds them
    spec = evoproxy.Benchmark.from_models(models, [1, 2, 3, 4], inputs=x, targets=y).save(tmp_path / "s")
    b = get_benchmark(str(spec))
    for i in b.ids:
        assert torch.equal(b.network(i).head.weight, models[i].head.weight)
    with pytest.raises(ConfigError, match="network 1 cannot be rebuilt as TinyNet"):
        evoproxy.Benchmark.from_models([TinyNet(), TinyNet(3, 2)], [1, 2], inputs=x, targets=y).save(tmp_path / "u")
    with pytest.raises(ConfigError, match="not importable"):
        evoproxy.Benchmark.from_models(lambda d: TinyNet(), [1, 2], [1, 2], inputs=x, targets=y).save(tmp_path / "t")


def test_mixed_precision_fit_predict(tmp_path):
    x, y = batch()
    torch.manual_seed(0)
    model = TinyNet(4, 2)  # 3 Conv2d/Linear layers
    rng = np.random.default_rng(0)
    configs = [list(map(int, rng.choice([2, 3, 4, 8], 3))) for _ in range(10)]
    acc = [sum(c) + 0.01 * i for i, c in enumerate(configs)]
    est = evoproxy.ProxySearch(seed=0, holdout=0.2, **TINY).fit(model, configs, acc, inputs=x, targets=y)
    assert len(est.holdout_indices_) == 2 and est.best_.formula
    s = est.predict(configs)
    assert s.shape == (10,) and np.isfinite(s).all()
    with pytest.raises(ConfigError, match="has 2 bit-widths; the model has 3"):
        est.predict([[4, 4]])


def test_failing_model_is_reported_and_left_out(tmp_path, capsys):
    x, y = batch()
    models = nets()
    models[4] = Broken()
    est = evoproxy.ProxySearch(seed=0, holdout=0, **TINY).fit(models, accs(), inputs=x, targets=y)
    assert list(est.failed_) == [4] and 4 not in est.train_indices_
    assert "item 4" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="9 of 9 items fail on the batch, 0 left") as info:
        evoproxy.ProxySearch(holdout=0, **TINY).fit([Broken()] * 9, accs(), inputs=x, targets=y)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("call, message", [
    (lambda x, y: ([TinyNet()] * 5, [1, 2, 3], x, y), "accuracies has 3 entries for 5 models"),
    (lambda x, y: ([TinyNet()] * 5, [1, 2, float("nan"), 4, 5], x, y), "accuracy of item 2 is nan"),
    (lambda x, y: ([], [], x, y), "models is empty"),
    (lambda x, y: ([TinyNet(), "net"], [1, 2], x, y), r"models\[1\] is a str"),
    (lambda x, y: ([TinyNet()] * 5, [1] * 5, x, None), "needs a batch"),
    (lambda x, y: ([TinyNet()] * 5, [1] * 5, x, y.float()), "targets must be int64"),
])
def test_bad_input_is_one_line(call, message):
    x, y = batch()
    models, acc, xx, yy = call(x, y)
    with pytest.raises(ConfigError, match=message) as info:
        evoproxy.ProxySearch(**TINY).fit(models, acc, inputs=xx, targets=yy)
    assert "\n" not in str(info.value)


def test_bad_bits_are_one_line():
    x, y = batch()
    model = TinyNet(4, 2)
    with pytest.raises(ConfigError, match="bit configuration 1 has 2 bit-widths; the model has 3"):
        evoproxy.Benchmark.from_models(model, [[4, 4, 4], [4, 4]], [1, 2], inputs=x, targets=y)
    with pytest.raises(ConfigError, match="bit-width 5 not in the allowed set"):
        evoproxy.Benchmark.from_models(model, [[4, 4, 4], [4, 5, 4]], [1, 2], inputs=x, targets=y,
                                       allowed_bits=(2, 4, 8))
    with pytest.raises(ConfigError, match="bit_configs is empty"):
        evoproxy.Benchmark.from_models(model, [], [], inputs=x, targets=y)


def test_settings_checked_at_construction():
    with pytest.raises(ConfigError, match="--population must be an integer >= 4"):
        evoproxy.ProxySearch(population=2)
    with pytest.raises(ConfigError, match="unknown setting 'populaton'"):
        evoproxy.ProxySearch(populaton=8)
    with pytest.raises(ConfigError, match="'batch' is set by fit"):
        evoproxy.ProxySearch(batch=8)
    with pytest.raises(ConfigError, match="holdout must be a fraction"):
        evoproxy.ProxySearch(holdout=1.0)
    est = evoproxy.ProxySearch(population=8, generations=2, islands=2, jobs=2, device="cpu")
    assert est.get_params()["islands"] == 2 and math.isclose(est.get_params()["time_budget"], 300)
    with pytest.raises(ConfigError, match="not fitted"):
        est.predict([TinyNet()])


def test_workers_read_cached_statistics_only(tmp_path):
    """jobs=2: the search's worker processes cannot reach the live networks; they read the statistics fit cached."""
    x, y = batch()
    one = evoproxy.ProxySearch(seed=1, out=tmp_path / "one", **TINY).fit(nets(), accs(), inputs=x, targets=y)
    two = evoproxy.ProxySearch(seed=1, out=tmp_path / "two", jobs=2, **TINY).fit(nets(), accs(), inputs=x, targets=y)
    assert [e["formula"] for e in two.equations_] == [e["formula"] for e in one.equations_]


def test_live_rows_outside_the_session_are_a_one_line_error(tmp_path):
    import gc

    from mqbench.bench.benchmarks import get_benchmark
    from primitives.core import extract

    x, y = batch()
    bench = evoproxy.Benchmark.from_models(nets(4), accs(4), inputs=x, targets=y)
    bench.check(range(4))
    spec = bench.write(tmp_path, "search", range(4))
    assert isinstance(get_benchmark(str(spec)).network(0), TinyNet)  # live: the user's network
    del bench
    gc.collect()
    stand_in = get_benchmark(str(spec)).network(0)  # as a worker process or the CLI sees it
    with pytest.raises(ConfigError, match="lives only in the Python session that fitted it") as info:
        extract(stand_in, x, y, names=["weight"])
    assert "\n" not in str(info.value)


def test_tensors_dataset_kind(tmp_path):
    from mqbench.data.datasets import load_batch, save_tensors

    x, y = batch(5)
    save_tensors(tmp_path / "b.pt", x, y)
    a, b = load_batch(f"tensors={tmp_path / 'b.pt'}", "train", 4, seed=9)  # the first n, as saved
    assert torch.equal(a, x[:4]) and torch.equal(b, y[:4])
    with pytest.raises(ConfigError, match="asked for a batch of 6"):
        load_batch(f"tensors={tmp_path / 'b.pt'}", "train", 6, seed=0)
    torch.save({"inputs": x}, tmp_path / "bad.pt")
    with pytest.raises(evoproxy.DataError, match="not a saved batch"):
        load_batch(f"tensors={tmp_path / 'bad.pt'}", "train", 2, seed=0)
