"""evoproxy.plot: each figure is written as a PNG of the documented pixel size; coinciding curves stay
distinguishable; ``evoproxy evaluate --plot`` writes the scatter."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from evoproxy import plot
from evoproxy.cli import main


def _png_size(path) -> tuple[int, int]:
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def _log_rows(n=6):
    return [{"generation": str(g), "best_fitness": str(0.5 + 0.05 * g), "median_fitness": str(0.3 + 0.04 * g),
             "best_formula": "Σ_l mean(|W|) $x$"} for g in range(n)]


def test_search_progress_writes_png_of_the_documented_size(tmp_path):
    out = plot.search_progress(_log_rows(), tmp_path / "p.png", title="progress")
    assert out == tmp_path / "p.png"
    assert _png_size(out) == (1050, 675)  # 7 x 4.5 inches at 150 dpi
    fig = plot.search_progress_figure(_log_rows())
    (ax,) = fig.axes
    assert ax.get_xlabel() == "generation" and ax.get_ylabel() == "search fitness"
    best, median = ax.get_lines()
    assert list(best.get_ydata()) == pytest.approx([0.5 + 0.05 * g for g in range(6)])
    assert list(median.get_ydata()) == pytest.approx([0.3 + 0.04 * g for g in range(6)])
    with pytest.raises(ValueError):
        plot.search_progress([], tmp_path / "empty.png")


def test_run_progress_reads_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = _log_rows(4)
    with open(run / "log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "config.json").write_text(json.dumps({"bench": "nb201-cifar10", "seed": 3, "fitness": "spearman"}))
    out = plot.run_progress(run, dpi=100)
    assert out == run / "progress.png" and _png_size(out) == (700, 450)


def test_ablation_keeps_identical_curves_distinguishable(tmp_path):
    same = [[0.1, 0.2, 0.2, 0.3, 0.4, 0.4, 0.5], [0.2, 0.2, 0.3, 0.3, 0.4, 0.5, 0.5]]
    curves = {"a": same, "b": [list(s) for s in same], "c": [[0.0, 0.1, 0.1, 0.2, 0.3, 0.3, 0.35]]}
    fig = plot.ablation_figure(curves, "t")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 3
    a, b = lines[0], lines[1]
    assert list(a.get_ydata()) == list(b.get_ydata())  # the data are not shifted
    assert a.get_marker() != b.get_marker() and a.get_linestyle() != b.get_linestyle()
    assert a.get_markevery() != b.get_markevery()  # markers at different generations
    assert a.get_linewidth() > b.get_linewidth() and b.get_zorder() > a.get_zorder()  # the later one drawn on top
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a", "b (coincides with 'a')", "c"]
    assert ax.get_xlabel() == "generation" and ax.get_ylabel()
    assert plot.coinciding({"a": [1, 2], "b": [1, 2], "c": [1, 2.001], "d": [1, 2]}) == {"b": "a", "d": "a"}
    out = plot.ablation(curves, tmp_path / "sub" / "ab.png", "t")
    assert _png_size(out) == (1200, 750)  # 8 x 5 inches at 150 dpi


def test_scatter_one_panel_per_proxy_with_spearman_and_n(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=30)
    good = truth + rng.normal(scale=0.5, size=30)
    flaky = rng.normal(size=30)
    flaky[[2, 5]] = math.nan
    fig = plot.scatter_figure({"good": good, "flaky": flaky}, truth, "t", truth_label="accuracy")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    rho_good = spearmanr(good, truth).statistic
    ok = np.isfinite(flaky)
    rho_flaky = spearmanr(flaky[ok], truth[ok]).statistic
    assert visible[0].get_title() == f"good: Spearman ρ = {rho_good:.3f}"
    assert visible[1].get_title() == f"flaky: Spearman ρ = {rho_flaky:.3f}"
    assert all(ax.get_ylabel() == "accuracy" and ax.get_xlabel() for ax in visible)
    caption = fig.get_supxlabel()
    assert "n = 30 (good), 28 (flaky) of 30" in caption and "flaky 2" in caption
    out = plot.scatter({"good": good, "flaky": flaky}, truth, tmp_path / "s.png")
    assert _png_size(out) == (1200, 630)  # two 4 x 3.6-inch panels + 0.6 inch for the caption, 150 dpi
    one = plot.scatter({"good": good}, truth, tmp_path / "one.png", dpi=100)
    assert _png_size(one) == (550, 510)
    assert "n = 30 items" in plot.scatter_figure({"good": good}, truth).get_supxlabel()
    with pytest.raises(ValueError):
        plot.scatter({"short": good[:5]}, truth, tmp_path / "bad.png")


def test_check_path_refuses_unknown_formats():
    assert plot.check_path("x.png").suffix == ".png"
    with pytest.raises(ValueError, match="unknown image format"):
        plot.check_path("x.xyz")


def test_cli_evaluate_writes_the_scatter(tiny_data_root, tmp_path, capsys):
    archs = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
             "|nor_conv_1x1~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
             "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|skip_connect~1|avg_pool_3x3~2|",
             "|skip_connect~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|avg_pool_3x3~1|none~2|"]
    (tiny_data_root / "nats-bench").mkdir()
    with open(tiny_data_root / "nats-bench" / "nats_tss_cifar10.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("ArchitectureString", "CIFAR10TestAccuracy200Epochs")]
                                 + list(zip(archs, [93.1, 88.0, 60.2, 85.5])))
    out = tmp_path / "figs" / "params.png"
    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", "params", "--samples", "4", "--split", "all",
                 "--batch", "10", "--plot", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert _png_size(out) == (825, 765)  # one 5.5 x 4.5-inch panel + 0.6 inch caption, 150 dpi
    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", "params", "--samples", "4",
                 "--plot", str(tmp_path / "x.xyz")]) == 2
    assert "unknown image format" in capsys.readouterr().err
