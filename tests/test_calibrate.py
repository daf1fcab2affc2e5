"""evoproxy calibrate (issue 15 item 3): learned per-layer-position weights of a proxy's layer terms."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evoproxy.fitting.calibrate import check_positions, fit_weights
from evoproxy.cli import main
from evoproxy.errors import ConfigError
from evoproxy.export import export_source
from evoproxy.scoring.metrics import kendall
from evoproxy.language.opkernels import layer_position
from evoproxy.language.tree import ProxyFileError, load_proxy, parse_proxy
from mqbench.networks.resnet_cifar import CifarResNet

EMQ = Path(__file__).resolve().parent.parent / "examples" / "proxies" / "emq_published.json"
TREE = ["layer_mean", ["l1", ["mul", "weight", "bitwidth"]]]


def _doc(tree=TREE, **extra):
    return {"format": "evoproxy.proxy/1", "tree": tree, "orientation": 1, **extra}


def test_fit_recovers_a_weighting():
    rng = np.random.default_rng(0)
    names = [f"l{i}" for i in range(6)]
    terms = rng.uniform(0.5, 1.5, (60, 6))
    true_w = np.array([3.0, -1.0, 0.2, 0.0, 2.0, 1.0])
    truth = terms @ true_w
    rows = [(names, list(t)) for t in terms]
    weights, fit = fit_weights(rows, truth, steps=400)
    assert fit["positions"] == 6 and fit["search_kendall_after"] > max(0.9, fit["search_kendall_before"] + 0.3)
    learned = terms @ np.array([weights[n] for n in names])
    assert kendall(learned, truth) == pytest.approx(fit["search_kendall_after"])


def test_nb201_positions_are_cell_edge_and_operation():
    from mqbench.networks.nb201 import NB201Network

    def positions(arch):
        return [layer_position(n, m.weight.shape) for n, m in NB201Network(arch, C=4, N=1).named_modules()
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

    a = positions("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    b = positions("|nor_conv_1x1~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|none~0|nor_conv_3x3~1|skip_connect~2|")
    assert "cells.0.edges.1_0.1:4x4x3x3" in a and "cells.0.edges.1_0.1:4x4x1x1" in b
    assert "cells.0.edges.1_0.1:4x4x3x3" not in b and len(set(a)) == len(a)
    assert {"stem.0:4x3x3x3", "cells.0.edges.2_0.1:4x4x3x3", "cells.1.conv_a.1:8x4x3x3"} <= set(a) & set(b)


def test_positions_must_recur():
    check_positions([(["a", "b"], [1.0, 2.0]), (["a", "b"], [0.5, 1.0])])
    with pytest.raises(ConfigError, match="no stable layer positions") as err:
        check_positions([([f"x{i}", f"y{i}"], [1.0, 2.0]) for i in range(5)])
    assert "\n" not in str(err.value)


def test_layer_weights_parse_score_and_export(tmp_path):
    torch.manual_seed(0)
    model = CifarResNet(8).eval()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    bits = [8, 2, 3, 4, 2, 3, 4, 8]
    plain = parse_proxy(_doc(), "plain")
    names = [layer_position(n, m.weight.shape) for n, m in model.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ones = parse_proxy(_doc(layer_weights={"key": "layer_position", "weights": {n: 1.0 for n in names}}), "ones")
    assert ones.score(model, x, y, bits) == pytest.approx(plain.score(model, x, y, bits), rel=1e-12)
    w = {n: float(i) - 2.5 for i, n in enumerate(names[:-1])}  # the last layer keeps the default
    proxy = parse_proxy(_doc(layer_weights={"key": "layer_position", "weights": w, "default": 0.5, "fit": {"a": 1}}), "w")
    mods = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    want = sum(w.get(n, 0.5) * float(m.weight.detach().double().abs().sum()) * b / len(mods)
               for n, m, b in zip(names, mods, bits))
    assert proxy.score(model, x, y, bits) == pytest.approx(want, rel=1e-5)
    path = proxy.save(tmp_path / "w.json")
    again = load_proxy(path)
    assert again.layer_weights == proxy.layer_weights and again.score(model, x, y, bits) == proxy.score(model, x, y, bits)
    src = tmp_path / "wmod.py"
    src.write_text(export_source(again, "wmod"))
    spec = importlib.util.spec_from_file_location("wmod", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.score(model, x, y, bits) == pytest.approx(proxy.score(model, x, y, bits), rel=1e-6)


@pytest.mark.parametrize("lw,match", [
    ([1, 2], "must be an object"),
    ({"key": "index", "weights": {"a": 1.0}}, "key must be"),
    ({"key": "layer_position", "weights": {}}, "non-empty"),
    ({"key": "layer_position", "weights": {"a": float("nan")}}, "finite number"),
    ({"key": "layer_position", "weights": {"a": "1"}}, "finite number"),
    ({"key": "layer_position", "weights": {"a": 1.0}, "default": True}, "default must be"),
    ({"key": "layer_position", "weights": {"a": 1.0}, "extra": 1}, "unknown layer_weights"),
])
def test_layer_weights_errors(lw, match):
    with pytest.raises(ProxyFileError, match=match):
        parse_proxy(_doc(layer_weights=lw), "p")
    with pytest.raises(ProxyFileError, match="root aggregates"):
        parse_proxy(_doc(["nadd", TREE, TREE], layer_weights={"key": "layer_position", "weights": {"a": 1.0}}), "p")


def _mq_table(root, tmp_path, rows=60):
    """An MQ table for the tiny ResNet-8 checkpoint whose made-up accuracy weights the layers' bits unevenly
    (with the PTQ settings allocation reads)."""
    from conftest import tiny_mq_meta, write_mq_table

    from mqbench.quant.ptq import PTQSettings

    ptq = PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, eval_batch=10).as_dict()
    meta = tiny_mq_meta(root, normalization="cifar10", ptq=ptq)
    rng = np.random.default_rng(0)
    table_rows = []
    for _ in range(rows):
        bits = [int(b) for b in rng.integers(2, 5, size=len(meta["searchable"]))]
        table_rows.append((bits, 10 + 5 * bits[-1] - 2 * bits[0] + 0.1 * rng.normal()))
    return write_mq_table(tmp_path, meta, table_rows)


def test_cli_calibrate_evaluate_and_errors(tiny_data_root, tmp_path, capsys):
    table = _mq_table(tiny_data_root, tmp_path)
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--proxy", str(EMQ), "--bench", "mq-resnet20-cifar10", "--table", str(table),
                 "--samples", "6", "--batch", "4", "--out", str(out)]) == 0
    assert "Kendall" in capsys.readouterr().out
    proxy = load_proxy(out)
    fit = proxy.layer_weights["fit"]
    assert fit["split"] == "search" and fit["samples"] == 6 and fit["positions"] == 8
    assert fit["search_kendall_after"] > fit["search_kendall_before"]
    assert main(["evaluate", "--bench", "mq-resnet20-cifar10", "--table", str(table), "--proxy", str(out),
                 "--samples", "20", "--batch", "4", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["failed"] == 0 and math.isfinite(rep["spearman"])
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(_doc(["nadd", TREE, TREE])))
    assert main(["calibrate", "--proxy", str(flat), "--bench", "mq-resnet20-cifar10", "--table", str(table),
                 "--samples", "6", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no per-layer structure" in err and "\n" not in err and not (tmp_path / "x.json").exists()


def test_allocate_uses_the_layer_weights(tiny_data_root, tmp_path, capsys):
    """A proxy file's layer weights reach `evoproxy allocate`: bit_sum with the largest searchable layer weighted
    up and the smallest weighted down allocates 4 resp. 2 bits to them, unlike plain bit_sum."""
    table = _mq_table(tiny_data_root, tmp_path)
    convs = [(n, m) for n, m in CifarResNet(8).named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    searchable = convs[1:-1]
    small = min(range(len(searchable)), key=lambda i: searchable[i][1].weight.numel())
    large = max(range(len(searchable)), key=lambda i: searchable[i][1].weight.numel())
    weights = {layer_position(searchable[large][0], searchable[large][1].weight.shape): 100.0,
               layer_position(searchable[small][0], searchable[small][1].weight.shape): -100.0}
    tree = ["layer_sum", ["sum", "bitwidth"]]
    path = tmp_path / "weighted.json"
    path.write_text(json.dumps(_doc(tree, layer_weights={"key": "layer_position", "weights": weights, "default": 1.0})))
    chosen = {}
    for label, proxy in (("weighted", str(path)), ("plain", "bit_sum")):
        assert main(["allocate", "--proxy", proxy, "--model", "resnet8", "--budget", "uniform-3", "--table",
                     str(table), "--batch", "4", "--json"]) == 0
        chosen[label] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bits_str"].split("-")
    assert len(chosen["weighted"]) == len(searchable)
    assert chosen["weighted"][large] == "4" and chosen["weighted"][small] == "2"
    assert chosen["plain"] != chosen["weighted"], chosen


def test_layer_weights_of_another_network_are_one_line(tiny_data_root, tmp_path, capsys):
    """Issue 22 item 8: layer_weights whose positions match no layer of the benchmark's network silently gave the
    uncalibrated proxy (exit 0); evaluate and allocate now say so in one line naming an expected and a found key."""
    table = _mq_table(tiny_data_root, tmp_path, rows=12)
    nb201 = {"cells.0.edges.1_0.1:16x16x3x3": 2.0, "stem.0:16x3x3x3": 0.5}  # NAS-Bench-201 positions
    path = tmp_path / "other.json"
    path.write_text(json.dumps(_doc(layer_weights={"key": "layer_position", "weights": nb201})))
    found = layer_position("conv1", CifarResNet(8).conv1.weight.shape)
    runs = [["evaluate", "--bench", "mq-resnet20-cifar10", "--table", str(table), "--proxy", str(path),
             "--samples", "4", "--split", "all", "--batch", "4"],
            ["allocate", "--proxy", str(path), "--model", "resnet8", "--budget", "uniform-3", "--table", str(table),
             "--batch", "4", "--json"]]
    for argv in runs:
        assert main(argv) == 2, argv
        stderr = capsys.readouterr().err  # (evaluate's progress bars go there too)
        assert "Traceback" not in stderr
        (err,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert "none of the proxy's 2 calibrated layer positions occur in the network" in err
        assert "'cells.0.edges.1_0.1:16x16x3x3'" in err and f"found e.g. {found!r}" in err, err
    partly = {**nb201, found: 3.0}  # one position of the network is enough: the others take the default
    path.write_text(json.dumps(_doc(layer_weights={"key": "layer_position", "weights": partly})))
    assert main(runs[1]) == 0
