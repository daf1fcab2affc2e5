"""Tests of primitives/: per-layer tensors of tiny networks on random data."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import primitives
from evoproxy.errors import ConfigError
from primitives import PRIMITIVES, NetworkStats, extract, extract_many, simple_quantize, subsample_indices
from primitives import core


class TinyNet(nn.Module):
    """conv(bias) -> ReLU -> conv(stride 2) -> BN -> ReLU -> mean -> linear."""

    def __init__(self, c: int = 4, classes: int = 3, inplace: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(c, c + 1, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c + 1)
        self.fc = nn.Linear(c + 1, classes)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = F.relu(self.bn(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class SplitNet(nn.Module):
    """A conv and a linear layer on disjoint input channels, summed into 10 logits.

    The logits are linear in each weight and the two inputs are independent white noise, so the
    loss Hessian is close to block-diagonal and Hutchinson converges fast enough for a 10% check
    at 64 probes (relative std ~3% per layer for this model).
    """

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(2, classes, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, classes, bias=False)

    def forward(self, x):
        return self.conv(x[:, :2]).mean(dim=(2, 3)) + self.fc(x[:, 2:].mean(dim=(2, 3)))


def exact_hessian(model, layer_names, x, y):
    """The exact Hessian of the mean CE w.r.t. the listed layers' weights, flattened and concatenated."""
    mods = [model.get_submodule(n) for n in layer_names]
    sizes = [m.weight.numel() for m in mods]
    shapes = [m.weight.shape for m in mods]
    flat0 = torch.cat([m.weight.detach().reshape(-1) for m in mods])

    def loss_of(flat):
        params = {f"{n}.weight": chunk.reshape(shape) for n, chunk, shape in zip(layer_names, flat.split(sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat0), sizes


def make(seed=0, dtype=torch.float32, n=6, hw=8, **kw):
    torch.manual_seed(seed)
    model = TinyNet(**kw).to(dtype)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(n, 3, hw, hw, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def manual(model, x, y):
    """Conv/linear inputs, outputs and output grads by explicit hooks + retain_grad."""
    rec = {}

    def hook(name):
        def fn(mod, args, out):
            out.retain_grad()
            rec[name] = (args[0].detach().clone(), out)
        return fn

    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in hs:
        h.remove()
    grads = {n: m.weight.grad.clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    model.zero_grad(set_to_none=True)
    return rec, grads


# ---------------------------------------------------------------------------------------------
def test_registry_and_unknown_name():
    for name in ("weight", "weight_grad", "act_in", "act_out", "act_grad", "fisher", "act_x_grad", "hessian_diag",
                 "hessian_trace", "weight_grad@noise", "act_out@noise", "act_grad@noise", "weight_grad@perturb",
                 "act_out@perturb", "act_grad@perturb", "weight_q", "quant_error", "bitwidth"):
        assert name in PRIMITIVES and PRIMITIVES[name]
    model, x, y = make()
    with pytest.raises(ConfigError, match="unknown statistic") as err:
        extract(model, x, y, names=["weight", "nonsense"])
    assert "\n" not in str(err.value) and "weight_grad" in str(err.value)
    with pytest.raises(ConfigError, match="hutchinson_probes"):
        extract(model, x, y, names=["hessian_trace"])
    with pytest.raises(ConfigError, match="bit_config"):
        extract(model, x, y, names=["weight_q"])
    assert set(core.default_names()) == set(PRIMITIVES) - {"hessian_diag", "hessian_trace", "hessian_block_trace",
                                                           "weight_q", "quant_error", "bitwidth", "size_mb",
                                                           "virtual_grad"} \
        - {n for n, p in core.REGISTRY.items() if p.fn.__module__ == "primitives.richkernels"}  # on request only
    assert "hessian_block_trace" not in core.default_names(hutchinson_probes=2)  # only on request


def test_weight_grad_finite_differences():
    model, x, y = make(dtype=torch.float64)
    stats = extract(model, x, y, names=["weight_grad"])
    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    for layer in stats.layers:
        w = model.get_submodule(layer.name).weight
        g = layer.tensors["weight_grad"]
        assert g.shape == w.shape and g.dtype == torch.float64
        for _ in range(3):
            idx = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in w.shape)
            with torch.no_grad():
                old = w[idx].item()
                w[idx] = old + eps
                lp = F.cross_entropy(model(x), y).item()
                w[idx] = old - eps
                lm = F.cross_entropy(model(x), y).item()
                w[idx] = old
            fd = (lp - lm) / (2 * eps)
            assert g[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), (layer.name, idx)


def test_hutchinson_trace_vs_exact_hessian():
    torch.manual_seed(3)
    model = SplitNet().double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 6, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (64,), generator=g)
    stats = extract(model, x, y, names=["hessian_diag", "hessian_trace"], hutchinson_probes=64)
    assert stats.names == ["conv", "fc"]
    hess, sizes = exact_hessian(model, stats.names, x, y)
    diag = hess.diagonal()
    start = 0
    for layer, size in zip(stats.layers, sizes):
        exact = diag[start:start + size].sum().item()
        est = layer.tensors["hessian_trace"].item()
        assert layer.tensors["hessian_trace"].dim() == 0
        assert layer.tensors["hessian_diag"].shape == model.get_submodule(layer.name).weight.shape
        assert est == pytest.approx(layer.tensors["hessian_diag"].sum().item(), rel=1e-9)
        assert abs(est - exact) <= 0.10 * abs(exact), (layer.name, est, exact)
        start += size
    assert all(p.grad is None for p in model.parameters())


def test_hutchinson_diag_is_mean_of_z_hz():
    """White-box: with the same probes, hessian_diag equals mean_k z_k * (H z_k) for the exact H of a
    nonlinear net (BN in train mode, ReLU, two convs and a linear layer)."""
    model, x, y = make(dtype=torch.float64, c=2, n=5, hw=6)
    probes, seed = 3, 9
    stats = extract(model, x, y, names=["hessian_diag"], hutchinson_probes=probes, seed=seed)
    hess, sizes = exact_hessian(model, stats.names, x, y)
    gen = torch.Generator().manual_seed(core.derive_seed("hutchinson", seed))
    weights = [model.get_submodule(n).weight for n in stats.names]
    expected = torch.zeros(sum(sizes), dtype=torch.float64)
    for _ in range(probes):
        z = torch.cat([(torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1).reshape(-1) for w in weights])
        expected += z * (hess @ z)
    expected /= probes
    got = torch.cat([l.tensors["hessian_diag"].reshape(-1) for l in stats.layers])
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10)


def test_activations_and_fisher_vs_manual():
    model, x, y = make(dtype=torch.float64)
    stats = extract(model, x, y, names=["act_in", "act_out", "act_grad", "fisher", "act_x_grad"])
    rec, _ = manual(model, x, y)
    for layer in stats.layers:
        a_in, out = rec[layer.name]
        grad = out.grad
        out = out.detach()
        if out.dim() == 4:
            exp_in, exp_out, exp_g = a_in.mean((2, 3)), out.mean((2, 3)), grad.mean((2, 3))
            s = (out * grad).sum((2, 3))
            positions = out.shape[2] * out.shape[3]
        else:
            exp_in, exp_out, exp_g, s, positions = a_in, out, grad, out * grad, 1
        n, c = exp_out.shape
        assert layer.tensors["act_in"].shape == exp_in.shape and layer.tensors["act_out"].shape == (n, c)
        torch.testing.assert_close(layer.tensors["act_in"], exp_in)
        torch.testing.assert_close(layer.tensors["act_out"], exp_out)
        torch.testing.assert_close(layer.tensors["act_grad"], exp_g)
        torch.testing.assert_close(layer.tensors["fisher"], 0.5 * (s ** 2).sum(0))
        torch.testing.assert_close(layer.tensors["act_x_grad"], s.sum(0) / (n * positions))
        assert layer.tensors["fisher"].shape == (c,)


def test_inplace_after_layer_is_handled():
    model, x, y = make(dtype=torch.float64, inplace=True)
    stats = extract(model, x, y, names=["act_out", "fisher", "act_grad"])
    ref_model, _, _ = make(dtype=torch.float64, inplace=False)
    ref = extract(ref_model, x, y, names=["act_out", "fisher", "act_grad"])
    for a, b in zip(stats.layers, ref.layers):
        for n in a.tensors:
            torch.testing.assert_close(a.tensors[n], b.tensors[n])
    assert (stats.layer("conv1").tensors["act_out"] < 0).any()  # pre-ReLU values were kept


def test_layers_geometry_tiny():
    model, x, y = make(hw=8)
    stats = extract(model, x, y, names=["weight"])
    assert stats.names == ["conv1", "conv2", "fc"]
    assert [l.kind for l in stats.layers] == ["conv", "conv", "linear"]
    c1, c2, fc = stats.layers
    assert c1.weight_shape == (4, 3, 3, 3) and c1.input_shape == (3, 8, 8) and c1.output_shape == (4, 8, 8)
    assert c1.params == 4 * 27 + 4 and c2.params == 5 * 4 * 9 and fc.params == 5 * 3 + 3
    assert c1.flops == 8 * 8 * 4 * 3 * 9 and c2.flops == 4 * 4 * 5 * 4 * 9 and fc.flops == 15
    assert stats.total_params == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("bn"))
    assert stats.total_flops == c1.flops + c2.flops + fc.flops
    assert all(l.bits is None for l in stats.layers)
    torch.testing.assert_close(c1.tensors["weight"], model.conv1.weight.detach(), rtol=0, atol=0)


def test_layers_geometry_nb201():
    from mqbench.networks.nb201 import NB201Network

    arch = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    torch.manual_seed(0)
    model = NB201Network(arch, C=4, N=1).train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([0, 1])
    order = []
    hs = [m.register_forward_hook(lambda mod, a, o, n=n: order.append(n))
          for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    stats = extract(model, x, y, names=["weight"])
    assert stats.names == order and order[0] == "stem.0" and order[-1] == "classifier"
    convs = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert stats.total_params == sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                                     for m in convs.values())
    assert stats.layers[0].flops == 32 * 32 * 4 * 3 * 9
    assert stats.layers[-1].flops == 16 * 10 and stats.layers[-1].kind == "linear"
    assert model.training


def test_bit_config_validation_and_quantization():
    model, x, y = make()
    for bad, pattern in (([4, 4], "3 Conv2d/Linear"), ([4, 0, 4], "1..32"), ([4, 33, 4], "1..32"),
                         ([4, 2.5, 4], "1..32"), ([True, 4, 4], "1..32"), ({"conv1": 4}, "lacks"),
                         ({"conv1": 4, "conv2": 4, "fc": 4, "nope": 4}, "unknown layer")):
        with pytest.raises(ConfigError, match=pattern) as err:
            extract(model, x, y, names=["weight_q"], bit_config=bad)
        assert "\n" not in str(err.value)
    errors = []
    for bits in range(2, 9):
        stats = extract(model, x, y, names=["weight", "weight_q", "quant_error", "bitwidth"], bit_config=[bits] * 3)
        for layer in stats.layers:
            t = layer.tensors
            assert layer.bits == bits and t["bitwidth"].item() == bits and t["bitwidth"].dim() == 0
            torch.testing.assert_close(t["weight_q"] + t["quant_error"], t["weight"], rtol=0, atol=1e-6)
            per_channel = t["weight_q"].reshape(t["weight_q"].shape[0], -1)
            levels = [torch.unique(row).numel() for row in per_channel]
            assert max(levels) <= 2 ** bits - 1
        errors.append(sum(l.tensors["quant_error"].norm().item() for l in stats.layers))
    assert all(a > b for a, b in zip(errors, errors[1:]))
    by_name = extract(model, x, y, names=["weight_q"], bit_config={"conv1": 3, "conv2": 5, "fc": 8})
    assert [l.bits for l in by_name.layers] == [3, 5, 8]
    assert by_name.meta["bit_config"] == [3, 5, 8]
    # zero channels and 1-bit are safe
    w = torch.zeros(3, 4)
    w[1] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    q = simple_quantize(w, 4)
    assert torch.isfinite(q).all() and (q[0] == 0).all() and q[1, 1] == -2.0
    q1 = simple_quantize(w, 1)
    assert torch.isfinite(q1).all() and set(q1[1].abs().tolist()) <= {0.875, 0.0}


def test_custom_quantizer_is_used():
    model, x, y = make()
    stats = extract(model, x, y, names=["weight_q"], bit_config=[8, 8, 8], quantizer=lambda w, b: torch.zeros_like(w))
    assert all((l.tensors["weight_q"] == 0).all() for l in stats.layers)


def test_max_elements_alignment_and_float16():
    model, x, y = make(c=6)
    names = ["weight", "weight_grad", "hessian_diag", "act_out", "fisher"]
    full = extract(model, x, y, names=names, hutchinson_probes=2, seed=5)
    cap = 20
    sub = extract(model, x, y, names=names, hutchinson_probes=2, seed=5, max_elements=cap)
    for li, (a, b) in enumerate(zip(full.layers, sub.layers)):
        for n in names:
            t = a.tensors[n]
            if t.numel() > cap:
                idx = subsample_indices(5, li, t.numel(), cap)
                assert b.tensors[n].shape == (cap,)
                assert torch.equal(b.tensors[n], t.reshape(-1)[idx]), (a.name, n)
            else:
                assert torch.equal(b.tensors[n], t)
        # elementwise alignment: the kept W entries are the same positions as the kept G/H entries
        if a.tensors["weight"].numel() > cap:
            w_full, w_sub = a.tensors["weight"].reshape(-1), b.tensors["weight"]
            pos = [int((w_full == v).nonzero()[0]) for v in w_sub]
            assert torch.equal(b.tensors["weight_grad"], a.tensors["weight_grad"].reshape(-1)[pos])
            assert torch.equal(b.tensors["hessian_diag"], a.tensors["hessian_diag"].reshape(-1)[pos])
    half = extract(model, x, y, names=names, hutchinson_probes=2, seed=5, max_elements=cap, float16=True)
    for a, b in zip(sub.layers, half.layers):
        for n in names:
            assert b.tensors[n].dtype == torch.float16
            torch.testing.assert_close(b.tensors[n].float(), a.tensors[n].half().float(), rtol=0, atol=0)


def test_model_left_untouched():
    model, x, y = make()
    model.conv2.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = extract(model, x, y, hutchinson_probes=2)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert not model.conv2.weight.requires_grad and model.conv1.weight.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN running stats / counters
    assert stats.layer("conv2").tensors["weight_grad"].abs().sum() > 0
    model.eval()
    extract(model, x, y, names=["act_out"])
    assert not model.training


def test_noise_and_perturb_passes():
    model, x, y = make()
    base = extract(model, x, y, names=["act_out", "act_out@perturb", "weight_grad", "weight_grad@perturb"], noise_std=0.0)
    for layer in base.layers:
        assert torch.equal(layer.tensors["act_out"], layer.tensors["act_out@perturb"])
        assert torch.equal(layer.tensors["weight_grad"], layer.tensors["weight_grad@perturb"])
    stats = extract(model, x, y)
    for layer in stats.layers:
        t = layer.tensors
        assert t["act_out@noise"].shape == t["act_out"].shape and t["act_grad@noise"].shape == t["act_grad"].shape
        assert t["weight_grad@noise"].shape == t["weight"].shape
        assert not torch.equal(t["act_out@perturb"], t["act_out"])
        assert (t["act_out@perturb"] - t["act_out"]).abs().max() < 0.1
    # a subset of names gives the same values
    only = extract(model, x, y, names=["act_grad@noise"])
    for a, b in zip(only.layers, stats.layers):
        assert torch.equal(a.tensors["act_grad@noise"], b.tensors["act_grad@noise"])


def test_determinism_and_state_roundtrip(tmp_path):
    model, x, y = make()
    a = extract(model, x, y, hutchinson_probes=3, bit_config=[4, 4, 8], seed=7)
    b = extract(model, x, y, hutchinson_probes=3, bit_config=[4, 4, 8], seed=7)
    c = extract(model, x, y, hutchinson_probes=3, bit_config=[4, 4, 8], seed=8)
    assert_same(a, b)
    assert not torch.equal(a.layers[0].tensors["hessian_diag"], c.layers[0].tensors["hessian_diag"])
    # the caller's thread count does not matter (extract runs on DEFAULT_THREADS) and is restored
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        d = extract(model, x, y, hutchinson_probes=3, bit_config=[4, 4, 8], seed=7)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    assert_same(a, d)
    path = tmp_path / "s.pt"
    torch.save(a.to_state(), path)
    back = NetworkStats.from_state(torch.load(path, weights_only=True))
    assert_same(a, back)
    assert back.meta == a.meta and back.layers[0].weight_shape == a.layers[0].weight_shape
    assert back.total_params == a.total_params and back.layers[1].bits == 4


def assert_same(a: NetworkStats, b: NetworkStats):
    assert a.names == b.names
    for la, lb in zip(a.layers, b.layers):
        assert la.tensors.keys() == lb.tensors.keys()
        for n in la.tensors:
            assert la.tensors[n].dtype == lb.tensors[n].dtype and torch.equal(la.tensors[n], lb.tensors[n]), (la.name, n)


# --- extract_many ---------------------------------------------------------------------------
ITEMS = [("tiny", 3), ("tiny", 4), ("tiny", 5)]


def build_tiny(item):
    """Top-level (picklable) builder: item = (kind, seed)."""
    _, seed = item
    torch.manual_seed(seed)
    return TinyNet(), f"init-seed-{seed}"


def tiny_batch():
    g = torch.Generator().manual_seed(11)
    return torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g), 11


def test_extract_many_jobs_identical():
    batch = tiny_batch()
    one = extract_many(ITEMS, build_tiny, batch, jobs=1, progress=False, hutchinson_probes=2)
    two = extract_many(ITEMS, build_tiny, batch, jobs=2, progress=False, hutchinson_probes=2)
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert_same(a, b)
    assert one[0].meta["seed"] == 11 and one[0].meta["model_key"] == "init-seed-3"
    assert not torch.equal(one[0].layers[0].tensors["weight"], one[1].layers[0].tensors["weight"])


def test_extract_many_cache(tmp_path, monkeypatch):
    batch = tiny_batch()
    calls = []
    real = core.extract

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "extract", counting)
    first = extract_many(ITEMS, build_tiny, batch, cache_dir=tmp_path, progress=False, max_elements=50)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(calls) == 3 and len(files) == 3

    def boom(*args, **kwargs):
        raise AssertionError("extract must not run on a cache hit")

    monkeypatch.setattr(core, "extract", boom)
    second = extract_many(ITEMS, build_tiny, batch, cache_dir=tmp_path, progress=False, max_elements=50)
    for a, b in zip(first, second):
        assert_same(a, b)
    # a different option is a different key
    with pytest.raises(AssertionError, match="cache hit"):
        extract_many(ITEMS[:1], build_tiny, batch, cache_dir=tmp_path, progress=False, max_elements=51)
    # a corrupt file is recomputed and rewritten
    files[0].write_bytes(b"not a torch file")
    calls.clear()
    monkeypatch.setattr(core, "extract", counting)
    third = extract_many(ITEMS, build_tiny, batch, cache_dir=tmp_path, progress=False, max_elements=50)
    assert len(calls) == 1
    for a, b in zip(first, third):
        assert_same(a, b)
    assert NetworkStats.from_state(torch.load(files[0], weights_only=True)).names == first[0].names
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_key_covers_batch():
    x, y, s = tiny_batch()
    k = primitives.cache_key(("tiny", 3), "init-seed-3", s, primitives.many.batch_hash(x, y), {})
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1
    assert k != primitives.cache_key(("tiny", 3), "init-seed-3", s, primitives.many.batch_hash(x2, y), {})
    assert k != primitives.cache_key(("tiny", 3), "init-seed-4", s, primitives.many.batch_hash(x, y), {})
    assert k == primitives.cache_key(("tiny", 3), "init-seed-3", s, primitives.many.batch_hash(x, y),
                                     {"names": list(reversed(core.default_names()))})
    assert math.isfinite(len(k)) and len(k) == 64


# ---------------------------------------------------------------------------------------------
class SmoothNet(nn.Module):
    """conv -> tanh -> conv(stride 2) -> tanh -> mean -> linear: smooth, no batch-norm."""

    def __init__(self, c: int = 4, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c + 1, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(c + 1, classes)

    def forward(self, x):
        x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["fd", "fd_central"])
def test_fd_hessian_matches_exact_on_smooth_net(method, monkeypatch):
    if method == "fd":  # forward differences: O(h) truncation, ~2e-3 relative at the default step here
        monkeypatch.setattr(core, "FD_REL_STEP", 1e-5)
    torch.manual_seed(0)
    model = SmoothNet().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    names = ["hessian_diag", "hessian_trace"]
    ex = extract(model, x, y, names=names, hutchinson_probes=3, seed=5)
    fd = extract(model, x, y, names=names, hutchinson_probes=3, seed=5, hessian_method=method)
    assert fd.meta["hessian_method"] == method and ex.meta["hessian_method"] == "exact"
    for a, b in zip(ex.layers, fd.layers):
        ta, tb = a.tensors["hessian_trace"].item(), b.tensors["hessian_trace"].item()
        assert abs(ta) > 1e-6
        assert tb == pytest.approx(ta, rel=1e-3), a.name  # same probes z, H z by differences
        torch.testing.assert_close(b.tensors["hessian_diag"], a.tensors["hessian_diag"], rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("method", ["fd", "fd_central"])
def test_fd_hessian_restores_model_bit_identically(method):
    model, x, y = make()  # train-mode BN: running stats and num_batches_tracked must come back too
    model.conv2.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    stats = extract(model, x, y, names=["weight_grad", "hessian_diag", "hessian_trace"], hutchinson_probes=2,
                    hessian_method=method)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert v.data_ptr() == ptrs[k], k
    assert all(p.grad is None for p in model.parameters())
    assert not model.conv2.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(torch.isfinite(l.tensors["hessian_trace"]) for l in stats.layers)
    # the fd call with the data pass (reused g(w)) equals a Hessian-only fd call up to float32 rounding
    alone = extract(model, x, y, names=["hessian_trace"], hutchinson_probes=2, hessian_method=method)
    for a, b in zip(stats.layers, alone.layers):
        torch.testing.assert_close(a.tensors["hessian_trace"], b.tensors["hessian_trace"], rtol=1e-3, atol=1e-3)


def test_hessian_method_validated_and_in_cache_key():
    model, x, y = make()
    for bad in ("FD", "central", None, 1):
        with pytest.raises(ConfigError, match="hessian_method"):
            extract(model, x, y, names=["hessian_trace"], hutchinson_probes=1, hessian_method=bad)
    x_, y_, s = tiny_batch()
    digest = primitives.many.batch_hash(x_, y_)
    key = lambda **kw: primitives.cache_key(("tiny", 3), "m", s, digest, {"hutchinson_probes": 2, **kw})
    assert key() == key(hessian_method="exact")
    assert len({key(), key(hessian_method="fd"), key(hessian_method="fd_central")}) == 3
