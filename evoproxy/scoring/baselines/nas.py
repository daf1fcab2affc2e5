"""Zero-cost NAS proxies, as defined in NAS-Bench-Suite-Zero (Krishnakumar et al., NeurIPS 2022
Datasets & Benchmarks) and the original papers.

Common conventions (those of the zero-cost-proxies code of Abdelfattah et al., ICLR 2021, which
NAS-Bench-Suite-Zero reuses): layer-wise quantities are taken over the weights of every
``nn.Conv2d`` / ``nn.Linear`` and summed over all layers; the loss is the mean cross-entropy of the
batch; the network is used in the benchmark's mode (train mode for freshly initialised NAS networks,
so batch-norm uses batch statistics). Proxies that need a pass of their own work on ``ctx.model``
(a fresh copy); the others read ``ctx.stats`` (``primitives.extract``) so that several proxies share
one forward/backward.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evoproxy.scoring.baselines import ProxyContext, prunable_layers, register
from evoproxy.errors import ConfigError

EIG_K = 1e-5  # the small constant of jacob_cov / epe_nas (Mellor et al. 2021 v1; Lopes et al. 2021)
ZEN_MIXUP = 1e-2  # Zen-NAS perturbation scale alpha
ZICO_SPLITS = 2  # the batch is split into this many sub-batches for ZiCo's gradient statistics


def _sum(values) -> float:
    return float(sum(float(v) for v in values))


def _generator(ctx: ProxyContext, tag: str) -> torch.Generator:
    from primitives.core import derive_seed

    return torch.Generator().manual_seed(derive_seed(tag, int(ctx.seed)))


# ------------------------------------------------------------------------------------- static

@register("params", "nas")
def params(ctx: ProxyContext) -> float:
    """params = number of trainable parameters of the network (all of them: conv, BN, linear).

    NAS-Bench-Suite-Zero's ``params`` baseline.
    """
    return float(sum(p.numel() for p in ctx.base_model.parameters() if p.requires_grad))


@register("flops", "nas", needs=("weight",))
def flops(ctx: ProxyContext) -> float:
    """flops = sum over Conv2d/Linear layers of multiply-accumulates per image.

    conv: H_out*W_out*C_out*(C_in/groups)*k_h*k_w; linear: in*out (NAS-Bench-Suite-Zero's ``flops``,
    counted here as MACs of the weighted layers; BN/pooling/additions are left out).
    """
    return float(ctx.stats(["weight"]).total_flops)


@register("l2_norm", "nas")
def l2_norm(ctx: ProxyContext) -> float:
    """l2_norm = sum_l ||W_l||_F over Conv2d/Linear weights (NAS-Bench-Suite-Zero's ``l2_norm``)."""
    return _sum(m.weight.detach().double().norm() for m in prunable_layers(ctx.base_model))


# ------------------------------------------------------------------------------------- gradient

@register("grad_norm", "nas", needs=("weight_grad",))
def grad_norm(ctx: ProxyContext) -> float:
    """grad_norm = sum_l ||dL/dW_l||_F (Abdelfattah et al. 2021, "Zero-cost proxies for lightweight NAS")."""
    return _sum(l["weight_grad"].double().norm() for l in ctx.stats(["weight_grad"]).layers)


@register("snip", "nas", needs=("weight", "weight_grad"))
def snip(ctx: ProxyContext) -> float:
    """snip = sum_l sum |dL/dW_l * W_l| (SNIP, Lee et al. ICLR 2019; as a NAS proxy, Abdelfattah et al. 2021).

    dL/dW * W is the gradient of the loss w.r.t. a multiplicative weight mask at 1.
    """
    st = ctx.stats(["weight", "weight_grad"])
    return _sum((l["weight_grad"].double() * l["weight"].double()).abs().sum() for l in st.layers)


@register("plain", "nas", needs=("weight", "weight_grad"))
def plain(ctx: ProxyContext) -> float:
    """plain = sum_l sum (dL/dW_l * W_l), no absolute value (Abdelfattah et al. 2021; NAS-Bench-Suite-Zero)."""
    st = ctx.stats(["weight", "weight_grad"])
    return _sum((l["weight_grad"].double() * l["weight"].double()).sum() for l in st.layers)


@register("fisher", "nas", needs=("fisher",))
def fisher(ctx: ProxyContext) -> float:
    """fisher = sum_l sum_c 0.5 * sum_n (sum_spatial a_nc * dL/da_nc)^2 on each Conv2d/Linear output a.

    Turner et al., ICLR 2020 (BlockSwap) via Abdelfattah et al. 2021; the reference code averages
    over the batch instead of summing, a constant factor that does not change rankings.
    """
    return _sum(l["fisher"].double().sum() for l in ctx.stats(["fisher"]).layers)


@register("grasp", "nas")
def grasp(ctx: ProxyContext) -> float:
    """grasp = sum_l sum (-W_l * (H g)_l), g = dL/dW, H the Hessian of L (GraSP, Wang et al. ICLR 2020).

    As in Abdelfattah et al. 2021: Hg is the gradient of z = sum g_detached * g w.r.t. the weights
    (one forward, double backward); the sum runs over all Conv2d/Linear weights.
    """
    model = ctx.model
    weights = [m.weight for m in prunable_layers(model)]
    for w in weights:
        w.requires_grad_(True)
    loss = F.cross_entropy(model(ctx.inputs), ctx.targets)
    grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    pairs = [(w, g) for w, g in zip(weights, grads) if g is not None]
    if not pairs:
        raise ConfigError("the loss does not depend on any Conv2d/Linear weight")
    z = sum((g.detach() * g).sum() for _, g in pairs)
    hg = torch.autograd.grad(z, [w for w, _ in pairs], allow_unused=True)
    return _sum((-(w.detach().double() * h.double())).sum() for (w, _), h in zip(pairs, hg) if h is not None)


def zico_score(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, splits: int = ZICO_SPLITS) -> float:
    """ZiCo of ``model`` with the batch split into ``splits`` sub-batches (see :func:`zico`)."""
    n = inputs.shape[0]
    if splits < 2 or n < splits:
        raise ConfigError(f"ZiCo needs at least {max(2, splits)} samples for {splits} sub-batches, got {n}")
    weights = [m.weight for m in prunable_layers(model)]
    for w in weights:
        w.requires_grad_(True)
    per_split = []
    for s in range(splits):
        lo, hi = s * n // splits, (s + 1) * n // splits
        loss = F.cross_entropy(model(inputs[lo:hi]), targets[lo:hi])
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        per_split.append([torch.zeros_like(w) if g is None else g.detach() for w, g in zip(weights, grads)])
    score = 0.0
    for layer in range(len(weights)):
        g = torch.stack([per_split[s][layer].reshape(-1).double() for s in range(splits)])  # [S, n_l]
        std = g.std(dim=0, unbiased=False)
        mean_abs = g.abs().mean(dim=0)
        nz = std > 0
        total = float((mean_abs[nz] / std[nz]).sum())
        if total > 0:
            score += math.log(total)
    return score


@register("zico", "nas")
def zico(ctx: ProxyContext) -> float:
    """zico = sum_l log( sum_{theta in layer l} E[|g_theta|] / std(g_theta) ) (ZiCo, Li et al. ICLR 2023).

    g_theta is the gradient of the mean cross-entropy w.r.t. weight theta on each of 2 equal
    sub-batches of the batch (the reference uses several batches; with one batch of 64 we split it,
    like NAS-Bench-Suite-Zero's single-batch setting); mean and (population) std are over the
    sub-batches, weights with zero std are skipped, layers whose sum is 0 contribute nothing.
    """
    return zico_score(ctx.model, ctx.inputs, ctx.targets)


# ------------------------------------------------------------------------------------- synflow

def remove_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm module of ``model`` by ``nn.Identity`` (in place)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, nn.Identity())
    return model


def synflow_per_layer(model: nn.Module, input_shape) -> list[float]:
    """Per Conv2d/Linear layer sum |W * dR/dW| with R = sum of the outputs of the |params|, BN-free,
    float64 copy of ``model`` on one all-ones input of ``input_shape`` (modifies ``model``).

    Layers in registration order; a layer the output does not depend on gives 0.
    """
    remove_batchnorm(model)
    model.double()
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.abs_()
    layers = prunable_layers(model)
    weights = [m.weight for m in layers]
    for w in weights:
        w.requires_grad_(True)
    x = torch.ones((1,) + tuple(input_shape), dtype=torch.float64)
    out = model(x)
    grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
    return [0.0 if g is None else float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads)]


@register("synflow", "nas")
def synflow(ctx: ProxyContext) -> float:
    """synflow = sum_l sum |W_l * dR/dW_l|, R = 1^T f_|theta|(1) (SynFlow, Tanaka et al. NeurIPS 2020).

    As in Abdelfattah et al. 2021: every parameter replaced by its absolute value, batch-norm
    removed (their ``bn=False`` copy of the network), one all-ones input of the batch's image
    shape, computed in float64 so that deep products do not overflow; a score that still overflows
    is reported as failed.
    """
    return float(sum(synflow_per_layer(ctx.model, ctx.inputs.shape[1:])))


# ------------------------------------------------------------------------------------- activations

def relu_kernel(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """K_H = sum over nn.ReLU modules of c c^T + (1-c)(1-c)^T, c the binary code (x > 0) of the
    ReLU's input flattened per sample: K_ij = units - Hamming(c_i, c_j) (float64 [N, N])."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ConfigError("nwot needs nn.ReLU modules (the network has none)")
    n = inputs.shape[0]
    kernel = torch.zeros((n, n), dtype=torch.float64)

    def hook(module, args, output):
        c = (args[0].detach().reshape(n, -1) > 0).to(torch.float32)
        units = c.shape[1]
        both = (c @ c.T).double()  # exact: integer counts below 2^24 per ReLU
        ones = c.sum(dim=1).double()
        kernel.add_(2 * both - ones[:, None] - ones[None, :] + units)

    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return kernel.numpy()


@register("nwot", "nas")
def nwot(ctx: ProxyContext) -> float:
    """nwot = log|det K_H|, K_H[i,j] = N_A - d_H(c_i, c_j) over all ReLU units (Mellor et al. ICML 2021, v2).

    c_i is the binary activation code of sample i (ReLU input > 0) over every nn.ReLU of the
    network, N_A the number of units, d_H the Hamming distance; log|det| via slogdet. A singular
    kernel (e.g. identical codes) gives -inf, reported as failed.
    """
    kernel = relu_kernel(ctx.model, ctx.inputs)
    sign, logdet = np.linalg.slogdet(kernel)
    return float(logdet) if sign != 0 else -math.inf


def input_jacobian(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """J[n] = d(sum_k f_k(x))/dx_n flattened per sample (float64 [N, D]); the v1 NASWOT Jacobian."""
    x = inputs.detach().clone().requires_grad_(True)
    out = model(x)
    (jac,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    if jac is None:
        raise ValueError("the output does not depend on the input (no input Jacobian)")
    return jac.reshape(x.shape[0], -1).double().numpy()


def _corrcoef(rows: np.ndarray) -> np.ndarray:
    """np.corrcoef of the rows; a constant row (e.g. a zero Jacobian of a network whose output does
    not depend on its input) makes it undefined: ValueError with that reason."""
    if np.any(np.ptp(rows, axis=1) == 0):
        raise ValueError("an input Jacobian is constant over the input (the output does not depend on it); "
                         "the correlation matrix is undefined")
    return np.corrcoef(rows)


def _jacobian(ctx: ProxyContext) -> np.ndarray:
    return ctx.memo("input_jacobian", lambda: input_jacobian(ctx.model, ctx.inputs))


@register("jacob_cov", "nas")
def jacob_cov(ctx: ProxyContext) -> float:
    """jacob_cov = -sum_i [log(lambda_i + k) + 1/(lambda_i + k)], k = 1e-5 (Mellor et al. 2020, v1).

    lambda_i are the eigenvalues of the correlation matrix (np.corrcoef) of the per-sample input
    Jacobians J_n = d(sum_k f_k)/dx_n (one backward of the summed logits).
    """
    corr = _corrcoef(_jacobian(ctx))
    eig = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(eig + EIG_K) + 1.0 / (eig + EIG_K)))


@register("epe_nas", "nas")
def epe_nas(ctx: ProxyContext) -> float:
    """epe_nas = sum_c | sum_{i,j} log(|Sigma_c[i,j]| + k) |, k = 1e-5 (EPE-NAS, Lopes et al. ICANN 2021).

    Sigma_c is the correlation matrix of the input Jacobians (as in jacob_cov) of the batch's
    samples of class c (classes with fewer than 2 samples are skipped); the 'sum of absolute
    per-class scores' variant of the paper for <= 100 classes.
    """
    jac = _jacobian(ctx)
    labels = ctx.targets.cpu().numpy()
    total, used = 0.0, 0
    for c in np.unique(labels):
        rows = jac[labels == c]
        if rows.shape[0] < 2:
            continue
        corr = _corrcoef(rows)
        total += abs(float(np.sum(np.log(np.abs(corr) + EIG_K))))
        used += 1
    return total if used else math.nan


# ------------------------------------------------------------------------------------- zen

def gaussian_init(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Zen-NAS initialisation (in place): Conv2d/Linear weights ~ N(0, 1), biases 0, norm layers gamma 1, beta 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def features_before_pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last 4-d module output computed before the network's final nn.Linear runs (the feature
    map that global average pooling reduces)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    state = {"feat": None, "done": False}

    def keep(module, args, output):
        if not state["done"] and isinstance(output, torch.Tensor) and output.dim() == 4:
            state["feat"] = output

    def stop(module, args):
        state["done"] = True

    handles = [m.register_forward_hook(keep) for m in model.modules() if m is not model]
    if linears:
        handles.append(linears[-1].register_forward_pre_hook(stop))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    if state["feat"] is None:
        raise ConfigError("no 4-d feature map found before the network's last Linear layer")
    return state["feat"]


@register("zen", "nas")
def zen(ctx: ProxyContext) -> float:
    """zen = log E_n ||f(x) - f(x + a*e)||_1 + sum_BN log sqrt(mean_c running_var_c) (Zen-NAS, Lin et al. ICCV 2021).

    As in the Zen-NAS / NAS-Bench-Suite-Zero code: weights re-initialised N(0,1) (BN gamma=1,
    beta=0), x and e ~ N(0,1) of the batch's shape (seeded from ctx.seed), a = 0.01, f the
    pre-global-pooling feature map, BN in train mode; the BN scaling factor of each BatchNorm2d is
    read from its running_var after the two forward passes (default momentum). (The paper writes it
    with the batch variance; that is 0 on dead branches of NAS-Bench-201 cells, where the running
    variance stays finite.)
    """
    gen = _generator(ctx, "zen")
    model = gaussian_init(ctx.model, gen).train()
    x = torch.randn(ctx.inputs.shape, generator=gen, dtype=ctx.inputs.dtype)
    e = torch.randn(ctx.inputs.shape, generator=gen, dtype=ctx.inputs.dtype)
    with torch.no_grad():
        f1 = features_before_pool(model, x).double()
        f2 = features_before_pool(model, x + ZEN_MIXUP * e).double()
    delta = float((f1 - f2).abs().sum(dim=(1, 2, 3)).mean())
    if delta <= 0:
        return -math.inf
    log_bn = 0.0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
            log_bn += 0.5 * math.log(float(m.running_var.double().mean()))
    return math.log(delta) + log_bn
