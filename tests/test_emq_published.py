"""EMQ's published proxy (issue 15 item 1): the virtual_grad statistic, the softmax0 operator, the two
proxy files (readings R1 / R2 of docs/emq_published_proxy.md), their closed forms, export and scoring."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from evoproxy.export import export_source
from evoproxy.ops import OPS
from evoproxy.tree import load_proxy
from mqbench.networks.resnet_cifar import CifarResNet
from primitives import extract

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "proxies"


def _mlp():
    """x (3) -> Linear(3, 2) -> ReLU -> Linear(2, 2): small enough to differentiate by hand."""
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, -1.0, -1.0]]))
        net[0].bias.copy_(torch.tensor([0.25, 0.5]))
        net[2].weight.copy_(torch.tensor([[2.0, 3.0], [-0.5, 4.0]]))
        net[2].bias.copy_(torch.tensor([1.0, -1.0]))
    return net


def test_virtual_grad_by_hand():
    net = _mlp()
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    stats = extract(net, x, y, names=["virtual_grad", "weight_grad"])
    g1, g2 = (layer["virtual_grad"] for layer in stats.layers)
    # all-ones input of 4 samples: h = relu(W1 1 + b1) = relu([-0.25, -2.5]) = [0, 0]
    #   d sum(logits) / dW2[o, j] = sum_n h_j = 0;  dW1[j, i] = sum_n (sum_o W2[o, j]) 1[pre_j > 0] x_i = 0
    assert torch.equal(g2, torch.zeros(2, 2)) and torch.equal(g1, torch.zeros(2, 3))
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([1.0, 4.0]))  # pre = [0.5, 1.0]: both units active, h = [0.5, 1.0]
    stats = extract(net, x, y, names=["virtual_grad"])
    g1, g2 = (layer["virtual_grad"] for layer in stats.layers)
    assert torch.allclose(g2, torch.tensor([[2.0, 4.0], [2.0, 4.0]]))  # 4 * h_j for every output o
    col = torch.tensor([2.0 - 0.5, 3.0 + 4.0])  # sum_o W2[o, j]
    assert torch.allclose(g1, 4 * col[:, None] * torch.ones(1, 3))
    # labels and the data batch do not matter; the model is left alone; weight_grad is unchanged by the extra pass
    other = extract(net, torch.randn(4, 3), torch.tensor([1, 1, 1, 1]), names=["virtual_grad"])
    assert all(torch.equal(a["virtual_grad"], b["virtual_grad"]) for a, b in zip(stats.layers, other.layers))
    assert all(p.grad is None for p in net.parameters())
    alone = extract(net, x, y, names=["weight_grad"])
    both = extract(net, x, y, names=["weight_grad", "virtual_grad"])
    assert all(torch.equal(a["weight_grad"], b["weight_grad"]) for a, b in zip(alone.layers, both.layers))


def test_virtual_grad_keeps_eval_mode_and_buffers():
    torch.manual_seed(0)
    net = CifarResNet(8).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    stats = extract(net, x, y, names=["virtual_grad"])
    ones = torch.ones_like(x).requires_grad_(False)
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    want = torch.autograd.grad(net(ones).sum(), weights)
    for layer, g in zip(stats.layers, want):  # float32 sums in another order (threads, memory format): 1e-5 of the layer's scale
        assert torch.allclose(layer["virtual_grad"], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and not net.training


def test_softmax0_by_hand():
    def fn(x):  # one item: operators take batches [items, *shape]
        return OPS["softmax0"].fn(x[None])[0]

    x = torch.tensor([[0.0, 1.0], [math.log(3.0), 1.0]])
    assert torch.allclose(fn(x), torch.tensor([[0.25, 0.5], [0.75, 0.5]]))
    w = torch.randn(5, 2, 3, 3)
    assert torch.allclose(fn(w).sum(dim=0), torch.ones(2, 3, 3))
    assert float(OPS["mean"].fn(fn(w)[None])[0]) == pytest.approx(1 / 5, rel=1e-6)
    assert torch.equal(fn(torch.tensor(7.0)), torch.tensor(1.0))
    assert torch.allclose(fn(torch.tensor([0.0, 0.0])), torch.tensor([0.5, 0.5]))
    batch = torch.randn(3, 5, 2)  # every item its own softmax along its first dimension
    assert torch.allclose(OPS["softmax0"].fn(batch), torch.stack([torch.softmax(b, 0) for b in batch]))


def _closed_form(model, bits, power):
    """mean_l b_l^power / O_l * mean(sqrt(relu(W_l))) over the Conv2d/Linear layers (forward order)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    terms = [b ** power / m.weight.shape[0] * float(m.weight.detach().double().clamp_min(0).sqrt().mean())
             for m, b in zip(layers, bits)]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("name,power", [("emq_published", 0.5), ("emq_published_alt", 1.0)])
def test_published_proxy_files_parse_score_and_export(name, power, tmp_path):
    proxy = load_proxy(EXAMPLES / f"{name}.json")
    assert proxy.tree.terminals() == {"virtual_grad", "weight", "bitwidth"}
    assert json.loads((EXAMPLES / f"{name}.json").read_text())["formula"] == proxy.formula
    torch.manual_seed(0)
    model = CifarResNet(8).eval()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    configs = [[8, 2, 3, 4, 2, 3, 4, 8], [8, 4, 4, 4, 4, 4, 4, 8], [8, 2, 2, 2, 2, 2, 2, 8]]
    scores = [proxy.score(model, x, y, bits) for bits in configs]
    for bits, s in zip(configs, scores):
        assert s == pytest.approx(_closed_form(model, bits, power), rel=1e-5)
    assert scores[1] > scores[0] > scores[2]  # more bits, higher score
    path = tmp_path / f"{name}.py"
    path.write_text(export_source(proxy, name))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert "def op_softmax0(x):" in path.read_text()
    for bits, s in zip(configs, scores):
        assert mod.score(model, x, y, bits) == pytest.approx(s, rel=1e-6)


def test_published_proxy_scores_on_an_mq_table(tiny_data_root, tmp_path):
    from evoproxy.evaluation import proxy_reports
    from test_evaluate import _fake_mq_table

    table = _fake_mq_table(tiny_data_root, tmp_path)
    files = [str(EXAMPLES / "emq_published.json"), str(EXAMPLES / "emq_published_alt.json")]
    reps = proxy_reports("mq-resnet20-cifar10", files, 6, 0, "all", table=str(table), batch=4, progress=False)
    for rep in reps.values():
        assert rep["failed"] == 0 and rep["n"] == 6, rep["failures"]
        assert rep["spearman"] > 0  # the fake table's accuracy grows with the bits
