"""Metrics against scipy / manual computations; the evaluator and its CLI on a tiny data root."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr, rankdata, spearmanr

from evoproxy import metrics
from evoproxy.cli import main

ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|nor_conv_1x1~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|skip_connect~1|avg_pool_3x3~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|skip_connect~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|avg_pool_3x3~1|none~2|",
    "|none~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|skip_connect~1|nor_conv_3x3~2|",
]
ACCS = [93.1, 88.0, 60.2, 94.0, 85.5, 90.3]


# ------------------------------------------------------------------------------------------- metrics

def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    assert metrics.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert metrics.kendall(x, y) == pytest.approx(kendalltau(x, y).statistic)
    assert metrics.pearson(x, y) == pytest.approx(pearsonr(x, y).statistic)


def test_spearman_top_is_spearman_of_the_highest_scored():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    keep = np.argsort(-x)[:10]  # 20% of 50
    assert metrics.spearman_top(x, y, 20) == pytest.approx(spearmanr(x[keep], y[keep]).statistic)
    assert metrics.spearman_top(x, y, 100) == pytest.approx(spearmanr(x, y).statistic)
    assert metrics.top_count(7, 20) == 2 and metrics.top_count(100, 50) == 50
    with pytest.raises(ValueError):
        metrics.spearman_top(x, y, 0)


def test_partial_spearman_vs_manual_residuals():
    rng = np.random.default_rng(2)
    size = rng.normal(size=60)
    x = size + rng.normal(size=60)
    y = size + 0.5 * x + rng.normal(size=60)
    rs = rankdata(size)
    res = []
    for v in (x, y):
        slope, intercept = np.polyfit(rs, rankdata(v), 1)
        res.append(rankdata(v) - (slope * rs + intercept))
    expected = np.corrcoef(res[0], res[1])[0, 1]
    assert metrics.partial_spearman(x, y, size) == pytest.approx(expected, rel=1e-10)
    # controlling for the score itself leaves nothing: undefined
    assert math.isnan(metrics.partial_spearman(x, y, x))


def test_report_counts_and_excludes_non_finite_scores():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    size = rng.normal(size=30)
    bad = x.copy()
    bad[[2, 7, 11]] = [np.nan, np.inf, -np.inf]
    rep = metrics.correlation_report(bad, y, size)
    ok = np.isfinite(bad)
    assert rep["failed"] == 3 and rep["n"] == 27
    assert rep["spearman"] == pytest.approx(spearmanr(x[ok], y[ok]).statistic)
    assert rep["partial_spearman"] == pytest.approx(metrics.partial_spearman(x[ok], y[ok], size[ok]))
    assert set(metrics.REPORT_KEYS) <= set(rep)


def test_constant_scores_give_nan_and_null_json():
    rep = metrics.correlation_report(np.ones(8), np.arange(8.0), np.arange(8.0))
    for key in ("spearman", "kendall", "pearson", "spearman_top20", "partial_spearman"):
        assert math.isnan(rep[key])
    text = json.dumps(metrics.json_safe(rep))
    assert json.loads(text)["spearman"] is None and "NaN" not in text


# ------------------------------------------------------------------------------------------- evaluator

@pytest.fixture
def nb201_root(tiny_data_root):
    nats = tiny_data_root / "nats-bench"
    nats.mkdir()
    with open(nats / "nats_tss_cifar10.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("ArchitectureString", "CIFAR10TestAccuracy200Epochs"))
        writer.writerows(zip(ARCHS, ACCS))
    return tiny_data_root


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_cli_evaluate_json_line(nb201_root, capsys):
    from mqbench.benchmarks import get_benchmark, nb201_param_count

    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", "params", "--samples", "4", "--seed", "1",
                 "--split", "all", "--batch", "10", "--json"]) == 0
    rep = _last_json(capsys.readouterr().out)
    for key in ("spearman", "kendall", "pearson", "spearman_top20", "spearman_top50", "partial_spearman",
                "partial_on", "n", "failed", "seconds_per_sample"):
        assert key in rep
    ids = get_benchmark("nb201-cifar10").sample(4, 1, "all")
    params = [nb201_param_count(ARCHS[i]) for i in ids]
    assert rep["n"] == 4 and rep["failed"] == 0 and rep["partial_on"] == "params"
    assert rep["spearman"] == pytest.approx(spearmanr(params, [ACCS[i] for i in ids]).statistic)
    assert rep["partial_spearman"] is None  # the score *is* the size it controls for


def test_cli_errors_are_one_line(nb201_root, capsys):
    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", "evolved.json", "--samples", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: proxy file not found: evolved.json"
    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", "nope", "--samples", "4"]) == 2
    assert "unknown proxy" in capsys.readouterr().err
    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", "hawq_v2", "--samples", "4", "--split", "all"]) == 2
    assert "MQ benchmark" in capsys.readouterr().err


def test_cli_baselines_writes_tables_and_json(nb201_root, tmp_path, capsys):
    out = tmp_path / "bl"
    assert main(["baselines", "--bench", "nb201-cifar10", "--proxies", "params,snip,nwot,synflow", "--samples", "4",
                 "--split", "all", "--batch", "10", "--out", str(out), "--json"]) == 0
    reps = _last_json(capsys.readouterr().out)
    assert list(reps) == ["params", "snip", "nwot", "synflow"]
    assert all(r["n"] + r["failed"] == 4 for r in reps.values())
    rows = list(csv.DictReader(open(out / "baselines.csv")))
    assert [r["proxy"] for r in rows] == list(reps)
    md = (out / "baselines.md").read_text()
    assert "n = 4 all samples (seed 0)" in md and "CIFAR10TestAccuracy200Epochs" in md and "| snip |" in md


def test_failures_are_counted_with_reasons_and_jobs_do_not_change_scores(nb201_root, monkeypatch):
    from evoproxy import baselines
    from evoproxy.evaluation import proxy_reports
    from evoproxy.scoring import resolve_scorers, score_items
    from mqbench.benchmarks import BenchRef
    from primitives.workspace import Workspace

    def flaky(ctx):
        """flaky = a test proxy: NaN on one architecture, an exception on another."""
        arch = ctx.base_model.arch_str
        if arch == ARCHS[2]:
            return math.nan
        if arch == ARCHS[3]:
            raise RuntimeError("boom\nsecond line")
        return float(len(arch))

    flaky.proxy_name, flaky.kind, flaky.needs = "flaky", "nas", ()
    monkeypatch.setitem(baselines._REGISTRY, "flaky", flaky)
    rep = proxy_reports("nb201-cifar10", ["flaky"], 6, 0, "all", batch=10, progress=False)["flaky"]
    assert rep["failed"] == 2 and rep["n"] == 4
    reasons = sorted(f["reason"] for f in rep["failures"])
    assert reasons == ["RuntimeError: boom second line", "non-finite score (nan)"]

    ref = BenchRef("nb201-cifar10")
    snip = resolve_scorers(["snip"])
    one = score_items(Workspace(ref), [0, 5], snip, 10, jobs=1, progress=False)
    two = score_items(Workspace(ref), [0, 5], snip, 10, jobs=2, progress=False)
    assert [r["scores"] for r in one] == [r["scores"] for r in two]


def _fake_mq_table(root, tmp_path):
    """An MQ table for the tiny ResNet-8 checkpoint with made-up accuracies (no PTQ run)."""
    from conftest import tiny_mq_meta, write_mq_table

    meta = tiny_mq_meta(root)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(6):
        bits = [int(b) for b in rng.integers(2, 5, size=len(meta["searchable"]))]
        rows.append((bits, 10 + sum(bits) + rng.normal()))
    return write_mq_table(tmp_path, meta, rows)


def test_cli_evaluate_on_an_mq_table(tiny_data_root, tmp_path, capsys):
    table = _fake_mq_table(tiny_data_root, tmp_path)
    assert main(["baselines", "--bench", "mq-resnet20-cifar10", "--table", str(table), "--proxies",
                 "model_size,bit_sum,ompq,qe,bsnip", "--samples", "6", "--split", "all", "--batch", "10",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    reps = _last_json(capsys.readouterr().out)
    from mqbench.table import MQTable

    t = MQTable.load(table)
    ids = t.sample(6, 0, "all")
    expected = spearmanr(t.column("size_mb", ids), t.column("top1", ids)).statistic
    assert reps["model_size"]["spearman"] == pytest.approx(expected)
    assert reps["model_size"]["partial_on"] == "model size"
    assert all(r["failed"] == 0 for r in reps.values()), {k: r["failures"] for k, r in reps.items()}
