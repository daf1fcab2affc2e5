"""ParZC baseline (issue 15 item 4): node-wise statistics, MABN-style mixer, JSON round trip, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evoproxy.errors import ConfigError
from evoproxy.scoring.metrics import kendall
from evoproxy.fitting.parzc import ParZC, default_proxies, fit_parzc, item_rows, nodewise, union_request

STEPS = 150


def synthetic(n: int, seed: int, positions: int = 8, stats: int = 3):
    """Node-wise rows of log-normal statistics; truth = a known weighted sum over positions of statistic 0."""
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(123).normal(size=positions)
    t = rng.lognormal(size=(n, positions, stats))
    rows = [{f"layer{l}": list(t[i, l]) for l in range(positions)} for i in range(n)]
    return rows, (np.log(t[:, :, 0]) * weights).sum(axis=1)


def unweighted(rows):
    return [sum(sum(v) for v in r.values()) for r in rows]


@pytest.fixture(scope="module")
def fitted():
    rows, truth = synthetic(60, seed=0)
    return fit_parzc(rows, truth, seed=0, steps=STEPS)


def test_mixer_learns_a_weighted_sum(fitted):
    rows, truth = synthetic(200, seed=1)  # unseen items
    learned = kendall(fitted.scores(rows), truth)
    base = kendall(unweighted(rows), truth)
    assert learned > 0.5 and learned > base + 0.3, (learned, base)
    assert fitted.fit["search_kendall_after"] > fitted.fit["search_kendall_unweighted_sum"] + 0.3


def test_json_round_trip_gives_identical_scores(fitted, tmp_path):
    rows, _ = synthetic(30, seed=2)
    path = fitted.save(tmp_path / "parzc.json")
    again = ParZC.load(path)
    assert np.array_equal(again.scores(rows), fitted.scores(rows))
    doc = json.loads(path.read_text())
    assert doc["format"] == "evoproxy.parzc/1" and isinstance(doc["params"]["t1"], list)


def test_deterministic_given_seed(fitted):
    rows, truth = synthetic(60, seed=0)
    same = fit_parzc(rows, truth, seed=0, steps=STEPS)
    other = fit_parzc(rows, truth, seed=1, steps=STEPS)
    assert all(np.array_equal(same.params[k], fitted.params[k]) for k in same.params)
    assert not np.array_equal(other.params["c1"], fitted.params["c1"])


def test_items_without_stable_positions_get_one_line_error():
    rows = [{f"net{i}.layer{l}": [1.0 + i, 2.0] for l in range(3)} for i in range(6)]
    with pytest.raises(ConfigError, match="no stable layer positions") as err:
        fit_parzc(rows, np.arange(6.0), steps=2)
    assert "\n" not in str(err.value)


def test_malformed_model_is_a_one_line_error(fitted):
    doc = fitted.to_json()
    doc["params"]["a"] = doc["params"]["a"][:-1]
    with pytest.raises(ConfigError, match="params\\['a'\\] must be finite with shape"):
        ParZC.from_json(doc)
    with pytest.raises(ConfigError, match="not a ParZC model"):
        ParZC.from_json({"format": "evoproxy.proxy/1"})


def test_nodewise_statistics_of_a_real_network():
    from mqbench.networks.nb201 import NB201Network
    from primitives.items import model_statistics

    proxies = default_proxies(mq=False)
    torch.manual_seed(0)
    inputs, targets = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    nets = [NB201Network(a, C=4, N=1, num_classes=10) for a in (
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
        "|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|avg_pool_3x3~1|nor_conv_3x3~2|",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_3x3~1|skip_connect~2|")]
    stats = [model_statistics(n, inputs, targets, union_request(proxies.values(), 4))[0] for n in nets]
    rows = item_rows(proxies, stats)
    row = rows[0]
    assert all(len(v) == len(proxies) for v in row.values())
    # each column sums to the proxy's value (a layer sum, orientation 1)
    for j, proxy in enumerate(proxies.values()):
        assert sum(v[j] for v in row.values()) == pytest.approx(proxy.value(stats[0]), rel=1e-9)
    model = fit_parzc(rows, [0.1, 0.3, 0.2], proxies, steps=3)
    assert model.value(stats[1]) == pytest.approx(model.scores([rows[1]])[0])
    assert model.score(nets[1], inputs, targets) == pytest.approx(model.value(stats[1]))
    assert nodewise(proxies, stats[2]).keys() == rows[2].keys()


def test_cli_calibrate_parzc(tiny_data_root, tmp_path, capsys):
    from test_calibrate import _mq_table

    from evoproxy.cli import main

    table = _mq_table(tiny_data_root, tmp_path, rows=120)  # 12 in the search split
    out = tmp_path / "parzc.json"
    stats = ",".join(str(default_proxies(True)[n].source) for n in ("bit_sum", "snip"))
    assert main(["calibrate", "--parzc", "--proxy", stats, "--bench", "mq-resnet20-cifar10", "--table", str(table),
                 "--samples", "12", "--batch", "4", "--steps", "40", "--out", str(out)]) == 0
    assert "ParZC on 8 layer positions x 2 statistics" in capsys.readouterr().out
    model = ParZC.load(out)
    assert list(model.proxies) == ["bit_sum", "snip"] and model.fit["split"] == "search" and model.fit["items"] == 12
    assert main(["calibrate", "--bench", "nb201-cifar10", "--out", str(tmp_path / "x.json")]) == 2
    assert "--proxy is required" in capsys.readouterr().err


def test_parametric_tables_only_rewrites_the_tables_from_runs_csv(tmp_path, monkeypatch):
    """`experiments.parametric --tables-only`: the committed fits summarised again (mean over seeds per row),
    runs.csv left as it is, no statistics or fits needed."""
    import csv
    import shutil

    import experiments.common
    from experiments.common import REPO
    from experiments.parametric import main

    (tmp_path / "parametric").mkdir()
    runs = tmp_path / "parametric" / "runs.csv"
    shutil.copy(REPO / "results" / "parametric" / "runs.csv", runs)
    before = runs.read_bytes()
    monkeypatch.setattr(experiments.common, "RESULTS", tmp_path)
    assert main(["--tables-only"]) == 0
    assert runs.read_bytes() == before
    fits = [r for r in csv.DictReader(runs.open()) if r["bench"] == "nb201-cifar10" and r["method"] == "calibrated"
            and r["n_search"] == "100"]
    expected = np.mean([float(r["kendall"]) for r in fits])
    table = list(csv.DictReader((tmp_path / "parametric" / "table.csv").open()))
    row = next(r for r in table if r["benchmark"] == "NAS-Bench-201" and r["method"] == "calibrated")
    assert row["n_holdout"] == fits[0]["n"] and int(row["seeds"]) == len(fits)
    assert row["kendall"].startswith(f"{expected:.3f}"), (row["kendall"], expected)
    assert (tmp_path / "parametric" / "sizes.png").stat().st_size > 0
