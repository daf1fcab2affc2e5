"""The Scorer (evoproxy.scoring): one resolution of a user's proxy, one label rule, one value per kind, used by the
evaluation driver (benchmark items) and the allocation driver (bit configurations)."""
from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from evoproxy.errors import ConfigError
from evoproxy.opkernels import layer_position
from evoproxy.scoring import CONTEXT, SCORER_KINDS, STATISTICS, Scorer, as_scorer, callable_scorer, proxy_label
from evoproxy.tree import parse_proxy, tree_value
from mqbench.networks.resnet_cifar import CifarResNet

SNIP = Path(__file__).resolve().parent.parent / "examples" / "proxies" / "snip.json"
TREE = ["layer_mean", ["l1", ["mul", "weight", "bitwidth"]]]


def _doc(tree=TREE, **extra):
    return {"format": "evoproxy.proxy/1", "tree": tree, "orientation": -1, **extra}


def test_every_kind_says_what_it_reads():
    assert {k: kind.reads for k, kind in SCORER_KINDS.items()} == {
        "tree": STATISTICS, "calibrated": STATISTICS, "baseline": CONTEXT, "callable": CONTEXT}


def test_one_resolution_and_one_label_rule(tmp_path, monkeypatch):
    def my_fn(model, inputs, targets, bit_config):
        return 0.0

    plain = parse_proxy(_doc(), "plain")
    calibrated = parse_proxy(_doc(layer_weights={"key": "layer_position", "weights": {"conv1:16x3x3x3": 2.0}}), "cal")
    unnamed = replace(plain, source=None)
    cases = [("hawq_v2", "baseline", "hawq_v2"), (" snip ", "baseline", "snip"), (str(SNIP), "tree", str(SNIP)),
             (SNIP, "tree", str(SNIP)), (plain, "tree", "plain"), (unnamed, "tree", plain.formula),
             (calibrated, "calibrated", "cal"), (my_fn, "callable", "my_fn"), (functools.partial(my_fn), "callable", "partial")]
    for obj, kind, label in cases:
        scorer = as_scorer(obj)
        assert (scorer.kind, scorer.label, proxy_label(obj)) == (kind, label, label), obj
        assert as_scorer(scorer) is scorer and proxy_label(scorer) == label
    assert as_scorer(SNIP, "mine").label == "mine" and callable_scorer(my_fn, "f").label == "f"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "no_suffix").write_text(json.dumps(_doc()))
    assert as_scorer("no_suffix").kind == "tree"  # an existing file without .json is a proxy file
    (tmp_path / "snip").write_text(json.dumps(_doc()))
    assert as_scorer("snip").kind == "baseline"  # a registered name first
    with pytest.raises(ConfigError, match="unknown proxy 'nope'; registered: params"):
        as_scorer("nope")
    with pytest.raises(ConfigError, match="proxy file not found"):
        as_scorer("runs/none/best")
    with pytest.raises(ConfigError, match="a proxy must be"):
        as_scorer(3)


def test_tree_and_calibrated_values_on_statistics():
    """A scorer's bound value on statistics equals the Proxy's; the calibrated kind weights the tree's layer terms,
    and all weights 1 give the tree kind's value."""
    from evoproxy.scoring import proxy_statistics

    torch.manual_seed(0)
    model = CifarResNet(8).eval()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    bits = [8, 2, 3, 4, 2, 3, 4, 8]
    plain = parse_proxy(_doc(), "plain")
    (stats,) = proxy_statistics(plain, model, x, y, [bits])
    names = [layer_position(layer.name, layer.weight_shape) for layer in stats.layers]
    ones = parse_proxy(_doc(layer_weights={"key": "layer_position", "weights": {n: 1.0 for n in names}}))
    w = {n: float(i) for i, n in enumerate(names)}
    weighted = parse_proxy(_doc(layer_weights={"key": "layer_position", "weights": w}))
    value = as_scorer(plain).bind()(stats)
    assert value == plain.value(stats) == -tree_value(plain.tree, stats)
    assert as_scorer(ones).bind()(stats) == pytest.approx(value, rel=1e-12)
    terms = [float(layer.tensors["weight"].abs().sum()) * b / len(bits) for layer, b in zip(stats.layers, bits)]
    want = -sum(w[n] * t for n, t in zip(names, terms))
    assert as_scorer(weighted).bind()(stats) == weighted.value(stats) == pytest.approx(want, rel=1e-5)


def test_allocation_resolves_through_the_scorer():
    from evoproxy.allocation.scoring import resolve_target

    assert isinstance(resolve_target("bit_sum"), Scorer) and resolve_target("bit_sum").kind == "baseline"
    assert resolve_target(str(SNIP)).kind == "tree"

    def objective(config):
        return float(sum(config))

    assert resolve_target(objective) is objective
    with pytest.raises(ConfigError, match="'snip' scores networks, not bit configurations; MQ proxies: bit_sum"):
        resolve_target("snip")
    with pytest.raises(ConfigError, match="unknown proxy 'nope'; registered:"):
        resolve_target("nope")


def test_allocation_drives_every_kind_on_bit_configurations(tiny_data_root, tmp_path):
    """The allocation driver asks each kind for its value on a configuration: a callable scorer gets the model and
    the configuration's full bits and picks what the same function as an objective picks; a tree, a calibrated
    tree and a baseline read the configuration's bits."""
    from conftest import tiny_mq_meta, write_mq_table

    from evoproxy.allocation import Allocator
    from evoproxy.allocation.model import load_model

    from mqbench.ptq import PTQSettings

    ptq = PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, eval_batch=10).as_dict()
    meta = tiny_mq_meta(tiny_data_root, normalization="imagenet", ptq=ptq)
    table = write_mq_table(tmp_path, meta, [([3] * len(meta["searchable"]), 50.0)])
    info = load_model("resnet8", table, 4)
    n = len(info.searchable)
    prefer = ([4, 2, 3] * n)[:n]

    def closeness(model, inputs, targets, bit_config):
        assert isinstance(model, torch.nn.Module) and len(inputs) == 4
        return -float(sum((b - p) ** 2 for b, p in zip([bit_config[i] for i in info.searchable], prefer)))

    by_scorer = Allocator(callable_scorer(closeness), "resnet8", info=info).allocate("uniform-3")
    by_objective = Allocator(lambda cfg: -float(sum((b - p) ** 2 for b, p in zip(cfg, prefer))), "resnet8",
                             info=info).allocate("uniform-3")
    assert by_scorer.proxy == "closeness" and by_scorer.config == by_objective.config
    assert by_scorer.score == by_objective.score and by_scorer.failed == 0
    config = tuple(([2, 4, 3] * n)[:n])
    full = info.full_bits(config)
    bit_sum_file = SNIP.parent / "bit_sum.json"
    assert Allocator("bit_sum", "resnet8", info=info).score_of(config) == sum(full)
    assert Allocator(str(bit_sum_file), "resnet8", info=info).score_of(config) == sum(full)
    names = [layer_position(name, m.weight.shape) for name, m in CifarResNet(8).named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    weights = {name: float(i) for i, name in enumerate(names)}
    doc = {**json.loads(bit_sum_file.read_text()), "layer_weights": {"key": "layer_position", "weights": weights}}
    path = tmp_path / "weighted.json"
    path.write_text(json.dumps(doc))
    assert as_scorer(str(path)).kind == "calibrated"
    weighted = Allocator(str(path), "resnet8", info=info).score_of(config)
    assert weighted == pytest.approx(sum(i * b for i, b in enumerate(full)), rel=1e-12)
