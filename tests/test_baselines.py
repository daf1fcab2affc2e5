"""Baseline proxies on tiny networks against values computed by hand (numpy / explicit formulas)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evoproxy import baselines
from evoproxy.baselines import ProxyContext, get_proxy, proxy_names
from evoproxy.baselines import mq as mqp
from evoproxy.errors import ConfigError
from mqbench.quant import quantize_weight

NAS = ["params", "flops", "synflow", "snip", "grasp", "fisher", "grad_norm", "jacob_cov", "nwot", "zen", "zico",
       "l2_norm", "plain", "epe_nas"]
MQ = ["bit_sum", "model_size", "bops", "hawq_v1", "hawq_v2", "ompq", "qe", "bsynflow", "bsnip"]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _linear_net(seed=0, d_in=4, hidden=3, classes=3, mid=None):
    torch.manual_seed(seed)
    layers = [nn.Linear(d_in, hidden, bias=False)]
    if mid is not None:
        layers.append(mid)
    layers.append(nn.Linear(hidden, classes, bias=False))
    return nn.Sequential(*layers).double().train()


def _batch(n=6, d=4, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    return x, y


def _hand_linear(model, x, y):
    """Forward/backward of the 2-layer linear net y = W2 W1 x with the mean cross-entropy, in numpy."""
    w1 = model[0].weight.detach().numpy()
    w2 = model[-1].weight.detach().numpy()
    xn, n = x.numpy(), x.shape[0]
    h = xn @ w1.T
    z = h @ w2.T
    onehot = np.eye(z.shape[1])[y.numpy()]
    dz = (_softmax(z) - onehot) / n  # dL/dz of the mean loss
    dh = dz @ w2
    return {"w1": w1, "w2": w2, "h": h, "z": z, "dz": dz, "dh": dh, "g1": dh.T @ xn, "g2": dz.T @ h}


def test_registry_names_docstrings_and_errors():
    assert set(NAS) <= set(proxy_names("nas"))
    assert set(MQ) <= set(proxy_names("mq"))
    assert proxy_names() == proxy_names("nas") + proxy_names("mq")
    for name in NAS + MQ:
        doc = get_proxy(name).__doc__
        assert doc and "=" in doc.splitlines()[0] and get_proxy(name).proxy_name == name
    with pytest.raises(ConfigError, match="unknown proxy"):
        get_proxy("nope")
    with pytest.raises(ConfigError):
        proxy_names("other")
    with pytest.raises(ValueError):
        baselines.register("snip")(lambda ctx: 0.0)


def test_static_and_gradient_proxies_by_hand():
    model = _linear_net()
    x, y = _batch()
    ctx = ProxyContext(model, x, y, prefetch=("weight", "weight_grad", "fisher"))
    hand = _hand_linear(model, x, y)
    w1, w2, g1, g2 = hand["w1"], hand["w2"], hand["g1"], hand["g2"]
    assert get_proxy("params")(ctx) == 4 * 3 + 3 * 3
    assert get_proxy("flops")(ctx) == 4 * 3 + 3 * 3
    assert get_proxy("l2_norm")(ctx) == pytest.approx(np.linalg.norm(w1) + np.linalg.norm(w2), rel=1e-12)
    assert get_proxy("grad_norm")(ctx) == pytest.approx(np.linalg.norm(g1) + np.linalg.norm(g2), rel=1e-5)
    assert get_proxy("snip")(ctx) == pytest.approx(np.abs(g1 * w1).sum() + np.abs(g2 * w2).sum(), rel=1e-5)
    assert get_proxy("plain")(ctx) == pytest.approx((g1 * w1).sum() + (g2 * w2).sum(), rel=1e-5)
    fisher = 0.5 * ((hand["h"] * hand["dh"]) ** 2).sum() + 0.5 * ((hand["z"] * hand["dz"]) ** 2).sum()
    assert get_proxy("fisher")(ctx) == pytest.approx(fisher, rel=1e-5)
    assert len(ctx._stats) == 1  # one shared extraction served all of them


def test_synflow_is_twice_the_path_norm_and_ignores_batchnorm():
    # linear net: every layer's sum |W * dR/dW| equals R = 1^T |W2| |W1| 1, so synflow = 2 R
    model = _linear_net(mid=nn.BatchNorm1d(3))
    with torch.no_grad():
        model[1].weight.fill_(5.0)  # BN is removed: its parameters must not matter
        model[1].running_var.fill_(9.0)
    x, y = _batch()
    ctx = ProxyContext(model, x.float(), y)
    w1, w2 = model[0].weight.detach().numpy(), model[2].weight.detach().numpy()
    r = np.ones(3) @ np.abs(w2) @ np.abs(w1) @ np.ones(4)
    assert get_proxy("synflow")(ctx) == pytest.approx(2 * r, rel=1e-10)
    assert model[1].weight[0].item() == 5.0  # the context's model was not touched


def test_grasp_vs_exact_hessian():
    model = _linear_net()
    x, y = _batch()
    w1, w2 = model[0].weight.detach().clone(), model[-1].weight.detach().clone()

    def loss(flat):
        a, b = flat[:12].reshape(3, 4), flat[12:].reshape(3, 3)
        return F.cross_entropy(x @ a.T @ b.T, y)

    flat = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    hess = torch.autograd.functional.hessian(loss, flat)
    grad = torch.autograd.functional.jacobian(loss, flat)
    expected = float(-(flat * (hess @ grad)).sum())
    assert get_proxy("grasp")(ProxyContext(model, x, y)) == pytest.approx(expected, rel=1e-8)


def test_zico_by_hand():
    model = _linear_net()
    x, y = _batch(n=8)
    grads = []
    for lo, hi in ((0, 4), (4, 8)):
        h = _hand_linear(model, x[lo:hi], y[lo:hi])
        grads.append((h["g1"].ravel(), h["g2"].ravel()))
    expected = 0.0
    for layer in range(2):
        g = np.stack([grads[s][layer] for s in range(2)])
        std, mean_abs = g.std(axis=0), np.abs(g).mean(axis=0)
        nz = std > 0
        expected += math.log((mean_abs[nz] / std[nz]).sum())
    assert get_proxy("zico")(ProxyContext(model, x, y)) == pytest.approx(expected, rel=1e-8)


def _relu_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def test_nwot_vs_manual_hamming_kernel():
    model = _relu_net()
    x, y = _batch(n=5)
    w = [model[i].weight.detach().numpy() for i in (0, 2, 4)]
    b = [model[i].bias.detach().numpy() for i in (0, 2, 4)]
    a1 = x.numpy() @ w[0].T + b[0]
    a2 = np.maximum(a1, 0) @ w[1].T + b[1]
    codes = np.concatenate([a1 > 0, a2 > 0], axis=1).astype(int)
    units = codes.shape[1]
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    expected = np.linalg.slogdet(units - hamming)[1]
    assert get_proxy("nwot")(ProxyContext(model, x, y)) == pytest.approx(expected, rel=1e-10)
    # identical samples give a singular kernel: -inf, i.e. a failed score, not a crash
    assert get_proxy("nwot")(ProxyContext(model, x[:1].repeat(3, 1), y[:3])) == -math.inf


def test_jacob_cov_and_epe_nas_by_hand():
    model = _relu_net(seed=3)
    x, y = _batch(n=6)
    w = [model[i].weight.detach().numpy() for i in (0, 2, 4)]
    b = [model[i].bias.detach().numpy() for i in (0, 2, 4)]
    jac = []
    for xi in x.numpy():
        a1 = w[0] @ xi + b[0]
        a2 = w[1] @ np.maximum(a1, 0) + b[1]
        # d(sum of logits)/dx = W1^T D1 W2^T D2 W3^T 1
        jac.append(w[0].T @ ((a1 > 0) * (w[1].T @ ((a2 > 0) * (w[2].T @ np.ones(3))))))
    jac = np.array(jac)
    eig = np.linalg.eigvalsh(np.corrcoef(jac))
    k = 1e-5
    expected = -np.sum(np.log(eig + k) + 1 / (eig + k))
    ctx = ProxyContext(model, x, y)
    assert get_proxy("jacob_cov")(ctx) == pytest.approx(expected, rel=1e-6)
    labels = y.numpy()
    epe = sum(abs(np.log(np.abs(np.corrcoef(jac[labels == c])) + k).sum()) for c in range(3))
    assert get_proxy("epe_nas")(ctx) == pytest.approx(epe, rel=1e-6)


class _TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.linear = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(x.mean(dim=(2, 3)))


def _cnn_batch(n=8, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3


def test_conv_flops_and_zen_properties():
    torch.manual_seed(0)
    model = _TinyCNN().train()
    x, y = _cnn_batch()
    ctx = ProxyContext(model, x, y)
    assert get_proxy("flops")(ctx) == 8 * 8 * 4 * 3 * 9 + 4 * 4 * 5 * 4 * 9 + 5 * 3
    z1 = get_proxy("zen")(ctx)
    assert math.isfinite(z1) and z1 == get_proxy("zen")(ProxyContext(model, x, y))
    assert z1 != get_proxy("zen")(ProxyContext(model, x, y, seed=1))
    # by hand: N(0,1) weights; features = the last 4-d *module* output before the head (bn2 here,
    # since this net applies ReLU functionally); BN running_var after the two train-mode passes
    from evoproxy.baselines.nas import _generator, gaussian_init

    gen = _generator(ctx, "zen")
    m = gaussian_init(ctx.model, gen)
    xa = torch.randn(x.shape, generator=gen)
    xb = xa + 0.01 * torch.randn(x.shape, generator=gen)
    feats = []
    for inp in (xa, xb):
        with torch.no_grad():
            h = F.relu(m.bn1(m.conv1(inp)))
            feats.append(m.bn2(m.conv2(h)).double())
    delta = (feats[0] - feats[1]).abs().sum(dim=(1, 2, 3)).mean().item()
    bn = sum(0.5 * math.log(b.running_var.double().mean().item()) for b in (m.bn1, m.bn2))
    assert z1 == pytest.approx(math.log(delta) + bn, rel=1e-6)


# ------------------------------------------------------------------------------------------- MQ

def _mq_ctx(bits, seed=0, model_key="tiny-cnn"):
    torch.manual_seed(seed)
    model = _TinyCNN().eval()
    x, y = _cnn_batch()
    return ProxyContext(model, x, y, bit_config=bits, quantizer=quantize_weight, model_key=model_key)


def test_size_proxies_by_hand():
    bits = [4, 2, 8]
    ctx = _mq_ctx(bits)
    assert get_proxy("bit_sum")(ctx) == 14
    size_bits = 4 * 27 * 4 + 2 * 36 * 5 + 8 * 15 + 32 * 3  # weights at their bits, 32-bit linear bias
    assert get_proxy("model_size")(ctx) == pytest.approx(size_bits / 8 / 2**20)
    macs = [8 * 8 * 4 * 27, 4 * 4 * 5 * 36, 15]
    assert get_proxy("bops")(ctx) == sum(m * b * 8 for m, b in zip(macs, bits))
    with pytest.raises(ConfigError):
        get_proxy("bit_sum")(_mq_ctx(None))
    with pytest.raises(ConfigError, match="3 Conv2d/Linear"):
        get_proxy("bit_sum")(_mq_ctx([4, 4]))


def _quant_err(model, bits):
    mods = [model.conv1, model.conv2, model.linear]
    return [float((quantize_weight(m.weight.detach(), b) - m.weight.detach()).double().pow(2).sum()) for m, b in zip(mods, bits)]


_EXACT: dict = {}


def _exact_block_hessians(ctx):
    """Exact Hessian blocks of the three layers of _mq_ctx()'s network (computed once per module run)."""
    if "seed0" in _EXACT:
        return _EXACT["seed0"]
    model, x, y = ctx.base_model, ctx.inputs, ctx.targets
    out = []
    for mod in (model.conv1, model.conv2, model.linear):
        key = next(f"{name}.weight" for name, m in model.named_modules() if m is mod)
        w0 = mod.weight.detach().clone()

        def loss(w, key=key):
            return F.cross_entropy(torch.func.functional_call(model, {key: w}, (x,)), y)

        h = torch.autograd.functional.hessian(loss, w0).reshape(w0.numel(), w0.numel()).double().numpy()
        out.append((h + h.T) / 2)
    _EXACT["seed0"] = out
    return out


def test_hawq_v2_by_hand_and_block_traces_vs_exact():
    bits = [3, 2, 4]
    ctx = _mq_ctx(bits)
    probes = 64
    traces = mqp.hessian_traces(ctx, probes)
    for t, h in zip(traces, _exact_block_hessians(ctx)):
        sigma = math.sqrt(2 * ((h**2).sum() - (np.diag(h) ** 2).sum()) / probes)  # Rademacher Hutchinson std
        assert abs(t - np.trace(h)) <= 4 * sigma + 1e-9
    traces = mqp.hessian_traces(ctx)  # the default probes, as the proxy uses
    numel = [4 * 27, 5 * 36, 15]
    err = _quant_err(ctx.base_model, bits)
    expected = -sum(t / n * e for t, n, e in zip(traces, numel, err))
    assert get_proxy("hawq_v2")(ctx) == pytest.approx(expected, rel=1e-12)
    assert get_proxy("hawq_v2")(_mq_ctx([8, 8, 8])) > get_proxy("hawq_v2")(_mq_ctx([2, 2, 2]))


def test_hawq_v1_top_eigenvalues_vs_exact_and_cached(monkeypatch):
    ctx = _mq_ctx([4, 3, 2])
    model = ctx.base_model
    eig = mqp.hessian_top_eigenvalues(ctx)
    for i, h in enumerate(_exact_block_hessians(ctx)):
        ev = np.linalg.eigvalsh(h)
        assert eig[i] == pytest.approx(ev[np.argmax(np.abs(ev))], rel=2e-2)
    err = _quant_err(model, [4, 3, 2])
    assert get_proxy("hawq_v1")(ctx) == pytest.approx(-sum(e * q for e, q in zip(eig, err)), rel=1e-12)
    # another configuration of the same network reuses the eigenvalues (no second computation)
    def recomputed(*args, **kwargs):
        raise AssertionError("Hessian eigenvalues recomputed")

    monkeypatch.setattr(torch.autograd, "grad", recomputed)
    assert get_proxy("hawq_v1")(_mq_ctx([2, 2, 2])) < get_proxy("hawq_v1")(_mq_ctx([8, 8, 8])) <= 0


def test_ompq_qe_bsynflow_bsnip_by_hand():
    bits = [4, 2, 3]
    ctx = _mq_ctx(bits)
    model = ctx.base_model
    outs = []
    hooks = [m.register_forward_hook(lambda mod, a, o: outs.append(o.detach().reshape(o.shape[0], -1).double().numpy()))
             for m in (model.conv1, model.conv2, model.linear)]
    with torch.no_grad():
        model(ctx.inputs)
    for h in hooks:
        h.remove()
    n = ctx.inputs.shape[0]
    center = np.eye(n) - 1.0 / n
    grams = [center @ (o @ o.T) @ center for o in outs]
    cka = np.array([[(a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b) for b in grams] for a in grams])
    theta = np.exp(-(cka.sum(axis=1) - 1.0))
    assert get_proxy("ompq")(ctx) == pytest.approx(np.mean(theta * np.array(bits)), rel=1e-9)

    # QE's quantized-Gaussian std reproduces the published look-up values (sigma 1 and 2, 2 bits)
    assert mqp.quantized_gaussian_std(2) == pytest.approx(1.0089193649965897, rel=1e-9)
    assert mqp.quantized_gaussian_std(2, sigma=2.0) == pytest.approx(1.470493611987268, rel=1e-9)
    assert mqp.quantized_gaussian_std(8) == pytest.approx(math.sqrt(1 + 1 / 12), rel=1e-7)  # Sheppard
    fan_in = [27, 36, 5]
    s = mqp.quantized_gaussian_std
    expected_qe = sum(0.5 * math.log(f) + math.log(s(b)) + math.log(s(8)) for f, b in zip(fan_in, bits))
    assert get_proxy("qe")(ctx) == pytest.approx(expected_qe, rel=1e-12)

    # bsnip: per-layer sum |G * W| (FP network, eval mode) times bits
    mods = [model.conv1, model.conv2, model.linear]
    grads = torch.autograd.grad(F.cross_entropy(model(ctx.inputs), ctx.targets), [m.weight for m in mods])
    snip = [float((g * m.weight.detach()).abs().sum()) for g, m in zip(grads, mods)]
    assert get_proxy("bsnip")(ctx) == pytest.approx(sum(b * v for b, v in zip(bits, snip)), rel=1e-4)

    # bsynflow: BN-free |params| net on one all-ones image, per layer |W * dR/dW| times bits
    wts = [m.weight.detach().double().abs().requires_grad_(True) for m in mods]
    bias = model.linear.bias.detach().double().abs()
    h = F.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.float64), wts[0], padding=1).relu()
    h = F.conv2d(h, wts[1], stride=2, padding=1).relu()
    r = F.linear(h.mean(dim=(2, 3)), wts[2], bias).sum()
    g = torch.autograd.grad(r, wts)
    syn = [float((w.detach() * gw).sum()) for w, gw in zip(wts, g)]
    assert get_proxy("bsynflow")(ctx) == pytest.approx(sum(b * v for b, v in zip(bits, syn)), rel=1e-10)


def test_more_bits_never_scores_lower_on_size_proxies():
    low, high = _mq_ctx([2, 2, 2]), _mq_ctx([4, 4, 4])
    for name in ("bit_sum", "model_size", "bops", "bsynflow", "bsnip", "ompq", "qe"):
        assert get_proxy(name)(high) > get_proxy(name)(low), name
