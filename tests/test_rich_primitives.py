"""The richer statistics of primitives/richkernels.py (NWOT sign codes, ZiCo, jacob_cov, graph features):
hand-checked values on tiny networks, the networkx reference, defaults untouched, export equals the library."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn as nn

from evoproxy.export import export_source
from evoproxy.language.tree import parse_proxy
from mqbench.networks.nb201 import NB201Network
from mqbench.networks.resnet_cifar import CifarResNet
from primitives import core, extract
from primitives.graph import computation_graph, reference_features
from primitives.richkernels import GRAPH_KEYS, ZICO_SPLITS

RICH = ["act_sign", "hamming_kernel", "grad_absmean", "grad_std", "input_jacobian"] + [f"graph_{k}" for k in GRAPH_KEYS]
# names=None before issue 14: the new statistics must not change it (nor, therefore, the cache keys of searches)
OLD_DEFAULTS = ["weight", "params", "weight_grad", "act_in", "act_out", "act_grad", "fisher", "act_x_grad",
                "weight_grad@noise", "act_out@noise", "act_grad@noise", "weight_grad@perturb", "act_out@perturb",
                "act_grad@perturb"]
DISCONNECTED = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
DEAD_END = "|nor_conv_1x1~0|+|none~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"  # node 2 is zeros: node 1's conv is dead


class MLP(nn.Module):
    """fc1 -> ReLU -> fc2 (no bias): hand-checkable codes, Jacobian and graph."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 2, bias=False)
        self.fc2 = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, 1.0]]))
            self.fc2.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 3.0]]))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Residual(nn.Module):
    """a -> ReLU -> (b(.) + .) -> mean -> fc: two input-output paths, b on the residual branch."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.fc((self.b(h) + h).mean(dim=(2, 3)))


def test_new_primitives_are_registered_off_by_default():
    assert core.default_names() == OLD_DEFAULTS
    assert core.default_names(2)[:len(OLD_DEFAULTS)] == OLD_DEFAULTS and not set(RICH) & set(core.default_names(2, [8]))
    for name in RICH:
        prim = core.REGISTRY[name]
        assert prim.pass_ == core.DATA and not prim.default and prim.fn.__module__ == "primitives.richkernels"


def test_sign_codes_and_hamming_kernel_by_hand():
    x = torch.tensor([[1.0, 2.0, -1.0], [-1.0, 1.0, 3.0], [2.0, -2.0, 1.0]])
    s = extract(MLP(), x, torch.tensor([0, 1, 0]), names=["act_sign", "hamming_kernel"])
    fc1, fc2 = s.layers
    code1 = torch.tensor([[1.0, 1, 0], [0, 1, 1], [1, 0, 1]])  # 1[x > 0]
    assert torch.equal(fc1["act_sign"], code1)
    # agreements: rows 0/1 agree on unit 1 only, 0/2 on unit 0, 1/2 on unit 2
    assert torch.equal(fc1["hamming_kernel"], torch.tensor([[3.0, 1, 1], [1, 3, 1], [1, 1, 3]]))
    # fc2's input relu(fc1 x): fc1 x = [[-1, 1], [-2, 4], [4, -1]] -> codes [0 1], [0 1], [1 0]
    assert torch.equal(fc2["act_sign"], torch.tensor([[0.0, 1], [0, 1], [1, 0]]))
    assert torch.equal(fc2["hamming_kernel"], torch.tensor([[2.0, 2, 0], [2, 2, 0], [0, 0, 2]]))


def test_sign_codes_of_a_conv_are_spatial_fractions():
    conv = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Flatten(), nn.Linear(3 * 4, 2))
    x = torch.randn(5, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    s = extract(conv, x, torch.zeros(5, dtype=torch.long), names=["act_sign", "hamming_kernel"])
    code = (x > 0).float()
    torch.testing.assert_close(s.layers[0]["act_sign"], code.mean(dim=(2, 3)))
    flat = code.reshape(5, -1)
    want = 8 - (flat[:, None, :] != flat[None, :, :]).sum(-1).float()  # N_A - Hamming distance, N_A = 2*2*2
    assert torch.equal(s.layers[0]["hamming_kernel"], want)


def test_zico_gradient_mean_and_std_by_hand():
    """W = 0: softmax is uniform (1/2), each mini-batch of one sample has g = (p - onehot(y)) x^T."""
    model = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(model.weight)
    x, y = torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([0, 0])
    s = extract(model, x, y, names=["grad_absmean", "grad_std", "weight_grad"])
    g1, g2 = torch.tensor([[-0.5, -1.0], [0.5, 1.0]]), torch.tensor([[-1.5, 0.0], [1.5, 0.0]])
    assert ZICO_SPLITS == 2
    torch.testing.assert_close(s.layers[0]["grad_absmean"], (g1.abs() + g2.abs()) / 2)
    torch.testing.assert_close(s.layers[0]["grad_std"], (g1 - g2).abs() / 2)
    torch.testing.assert_close(s.layers[0]["weight_grad"], (g1 + g2) / 2)  # the whole batch's gradient
    with pytest.raises(core.ConfigError, match="at least 2 samples"):
        extract(model, x[:1], y[:1], names=["grad_std"])


def test_zico_with_batch_norm_uses_each_mini_batch():
    torch.manual_seed(0)
    model = NB201Network("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|",
                         C=4, N=1).train()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    s = extract(model, x, y, names=["grad_absmean", "grad_std"], channels_last=False)
    halves = [extract(model, x[a:b], y[a:b], names=["weight_grad"], channels_last=False) for a, b in ((0, 3), (3, 6))]
    for li, layer in enumerate(s.layers):
        g = torch.stack([h.layers[li]["weight_grad"] for h in halves])
        torch.testing.assert_close(layer["grad_absmean"], g.abs().mean(0))
        torch.testing.assert_close(layer["grad_std"], g.std(0, unbiased=False))


def test_input_jacobian_by_hand_and_on_every_layer():
    model = MLP()
    x = torch.tensor([[1.0, 2.0, -1.0], [-1.0, 1.0, 3.0], [2.0, -2.0, 1.0]])
    s = extract(model, x, torch.tensor([0, 1, 0]), names=["input_jacobian"])
    # d(sum of logits)/dx = (1^T W2) diag(relu'(W1 x)) W1 = [0, 5] on the active hidden unit(s)
    w1, col = model.fc1.weight.detach(), model.fc2.weight.detach().sum(0)  # [0, 5]
    active = (x @ w1.T > 0).float()
    want = (active * col) @ w1
    assert torch.equal(s.layers[0]["input_jacobian"], want) and torch.equal(s.layers[1]["input_jacobian"], want)
    state = s.to_state()  # one storage for all layers: torch.save stores it once
    assert state["layers"][0]["tensors"]["input_jacobian"].untyped_storage().data_ptr() == \
        state["layers"][1]["tensors"]["input_jacobian"].untyped_storage().data_ptr()


def _graph(stats):
    return {l.name: {k: float(l[f"graph_{k}"]) for k in GRAPH_KEYS} for l in stats.layers}


def test_graph_features_of_a_residual_block_by_hand():
    model = Residual()
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    got = _graph(extract(model, x, y, names=[f"graph_{k}" for k in GRAPH_KEYS]))
    net = {"io_paths": 2.0, "longest": 3.0, "shortest": 2.0}
    assert got == {"a": {"depth": 1.0, "paths": 2.0, "residual": 0.0, **net},
                   "b": {"depth": 2.0, "paths": 1.0, "residual": 1.0, **net},
                   "fc": {"depth": 3.0, "paths": 2.0, "residual": 0.0, **net}}
    assert got == {k: {n: float(v) for n, v in d.items()} for k, d in reference_features(computation_graph(model, x)).items()}


@pytest.mark.parametrize("arch", ["|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
                                  "|skip_connect~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_3x3~0|none~1|skip_connect~2|",
                                  DISCONNECTED, DEAD_END])
def test_graph_features_equal_the_networkx_reference(arch):
    torch.manual_seed(0)
    model = NB201Network(arch, C=4, N=1).train()
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    got = _graph(extract(model, x, y, names=[f"graph_{k}" for k in GRAPH_KEYS]))
    want = reference_features(computation_graph(model, x))
    assert got == {k: {n: float(v) for n, v in d.items()} for k, d in want.items()}


def test_first_cell_has_four_paths_nb201_and_resnet_counts():
    # cell: skip~0 (1 path), conv~1 via node 1 (1), skip~2 via node 2 = conv(x) + pool(node 1) (2): 4 per cell;
    # 3 cells and 2 reduction blocks (2 paths each): 4^3 * 2^2 = 256
    torch.manual_seed(0)
    model = NB201Network("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
                         C=4, N=1).train()
    g = _graph(extract(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), names=["graph_io_paths", "graph_paths",
                                                                                          "graph_depth", "graph_residual",
                                                                                          "graph_longest", "graph_shortest"]))
    assert g["stem.0"] == {"depth": 1.0, "paths": 256.0, "residual": 0.0, "io_paths": 256.0, "longest": 12.0, "shortest": 4.0}
    assert g["cells.0.edges.1_0.1"]["paths"] == 128.0 and g["cells.0.edges.1_0.1"]["residual"] == 1.0
    torch.manual_seed(0)
    r = _graph(extract(CifarResNet(8).train(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]),
                       names=[f"graph_{k}" for k in GRAPH_KEYS]))
    assert r["conv1"] == {"depth": 1.0, "paths": 8.0, "residual": 0.0, "io_paths": 8.0, "longest": 8.0, "shortest": 2.0}
    assert r["layer2.0.conv1"]["residual"] == 1.0 and r["layer2.0.conv1"]["paths"] == 4.0


def test_disconnected_nb201_cell_gives_the_explicit_statistic():
    torch.manual_seed(0)
    model = NB201Network(DISCONNECTED, C=4, N=1).train()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    s = extract(model, x, y, names=RICH)
    g = _graph(s)
    assert all(v["io_paths"] == v["longest"] == v["shortest"] == v["paths"] == v["residual"] == 0 for v in g.values())
    assert g["stem.0"]["depth"] == 1.0 and g["classifier"]["depth"] == 0.0  # the input reaches the stem only
    assert all(torch.count_nonzero(l["input_jacobian"]) == 0 for l in s.layers)  # the logits ignore the input
    assert all(torch.isfinite(t).all() for l in s.layers for t in l.tensors.values())
    dead = _graph(extract(NB201Network(DEAD_END, C=4, N=1).train(), x, y, names=["graph_paths", "graph_depth",
                                                                                  "graph_io_paths", "graph_residual",
                                                                                  "graph_longest", "graph_shortest"]))
    assert dead["cells.0.edges.1_0.1"]["depth"] == 2.0 and dead["cells.0.edges.1_0.1"]["paths"] == 0.0
    assert dead["classifier"]["io_paths"] == 0.0


def test_rich_names_leave_the_other_primitives_and_the_model_alone():
    torch.manual_seed(1)
    model = NB201Network("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|",
                         C=4, N=1).train()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = extract(model, x, y, names=["weight_grad", "act_grad", "act_in"])
    rich = extract(model, x, y, names=["weight_grad", "act_grad", "act_in"] + RICH)
    for a, b in zip(plain.layers, rich.layers):
        for n in ("weight_grad", "act_grad", "act_in"):
            assert torch.equal(a[n], b[n]), n
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


TREES = [
    # NWOT-like kernel, ZiCo ratio, jacob_cov-like Jacobian Gram
    ["nadd", ["layer_sum", ["logdet", "hamming_kernel"]],
     ["nadd", ["layer_meanlog", ["sum", ["div", "grad_absmean", "grad_std"]]],
      ["layer_mean", ["logdet", "input_jacobian"]]]],
    # graph features with the sign codes
    ["nadd", ["layer_sum", ["lmul", ["sum", ["mul", "graph_paths", "graph_residual"]], ["mean", "act_sign"]]],
     ["layer_mean", ["ldiv", ["sum", ["add", "graph_depth", "graph_longest"]],
                     ["sum", ["add", "graph_io_paths", "graph_shortest"]]]]],
]


@pytest.mark.parametrize("k", range(len(TREES)))
def test_exported_rich_proxy_equals_the_library(k, tmp_path):
    proxy = parse_proxy({"format": "evoproxy.proxy/1", "tree": TREES[k], "orientation": 1, "extraction": {},
                         "search": {"bench": "test"}}, "test")
    path = tmp_path / f"rich{k}.py"
    path.write_text(export_source(proxy, f"rich{k}"))
    spec = importlib.util.spec_from_file_location(f"rich{k}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(k)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    for i, arch in enumerate(["|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|",
                              "|skip_connect~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|nor_conv_3x3~0|none~1|skip_connect~2|",
                              DISCONNECTED]):
        torch.manual_seed(i)
        model = NB201Network(arch, C=4, N=1).train()
        want, got = proxy.score(model, x, y), mod.score(model, x, y)
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-6), (arch, got, want)
