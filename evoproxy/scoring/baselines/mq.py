"""Bit-configuration-aware proxies for mixed-precision quantization (MQ) benchmarks.

Each scores one bit configuration ``ctx.bit_config`` (weight bits of every Conv2d/Linear in forward
order) of one network; activations are at ``ctx.act_bits``. Q(W) is ``ctx.quantizer`` (on MQ
benchmarks the PTQ weight quantizer ``mqbench.quant.fakequant.quantize_weight``, so Q(W) is exactly what the
table's PTQ used). Everything that depends on the FP network only (layer geometry, Hessian
eigenvalues and traces, orthogonality, synflow/snip saliencies, quantization errors per layer and
bit-width) is computed once per network through ``ctx.network_cached`` and reused across
configurations. Sensitivities are negated so that higher always means "predicted more accurate".
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evoproxy.scoring.baselines import ProxyContext, register
from evoproxy.scoring.baselines.nas import synflow_per_layer
from evoproxy.errors import ConfigError

HAWQ_V2_PROBES = 32  # Hutchinson probes for Tr(H_l)
HAWQ_V1_MAX_ITER = 30  # power iterations per layer
HAWQ_V1_TOL = 1e-3  # relative change of the eigenvalue estimate that stops the iteration (as in HAWQ)
OMPQ_BETA = 1.0


def _bits(ctx: ProxyContext) -> list[int]:
    if ctx.bit_config is None:
        raise ConfigError("this proxy needs a bit configuration (an MQ benchmark)")
    bits = [int(b) for b in ctx.bit_config]
    layers = layer_table(ctx)
    if len(bits) != len(layers["names"]):
        raise ConfigError(f"bit_config has {len(bits)} entries for {len(layers['names'])} Conv2d/Linear layers")
    return bits


def layer_table(ctx: ProxyContext) -> dict:
    """Per Conv2d/Linear layer in forward order: names, weight numel, bias numel, MACs per image."""

    def build():
        from primitives import extract

        st = extract(ctx.base_model, ctx.inputs, ctx.targets, names=["weight"], seed=int(ctx.seed))
        weight = [int(np.prod(l.weight_shape)) for l in st.layers]
        return {"names": st.names, "weight_numel": weight,
                "bias_numel": [l.params - w for l, w in zip(st.layers, weight)],
                "macs": [int(l.flops) for l in st.layers]}

    return ctx.network_cached("layer_table", build)


def _modules_in_order(ctx: ProxyContext, model: nn.Module) -> list[nn.Module]:
    named = dict(model.named_modules())
    return [named[n] for n in layer_table(ctx)["names"]]


def quant_error_sq(ctx: ProxyContext) -> list[float]:
    """||Q_b(W_l) - W_l||_F^2 of each layer at its bit-width in ctx.bit_config (cached per layer and bits)."""
    bits = _bits(ctx)
    quantizer = ctx._quantizer()
    modules = _modules_in_order(ctx, ctx.base_model)
    out = []
    for i, (m, b) in enumerate(zip(modules, bits)):
        def compute(m=m, b=b):
            w = m.weight.detach()
            return float((quantizer(w, b).double() - w.double()).pow(2).sum())

        out.append(ctx.network_cached(("quant_error_sq", i, b, _quantizer_name(quantizer)), compute))
    return out


def _quantizer_name(quantizer) -> str:
    return f"{getattr(quantizer, '__module__', '')}.{getattr(quantizer, '__qualname__', repr(quantizer))}"


# ------------------------------------------------------------------------------------- size

@register("bit_sum", "mq")
def bit_sum(ctx: ProxyContext) -> float:
    """bit_sum = sum_l b_l over all Conv2d/Linear layers (the trivial 'more bits' proxy)."""
    return float(sum(_bits(ctx)))


@register("model_size", "mq")
def model_size(ctx: ProxyContext) -> float:
    """model_size = sum_l (n_W,l * b_l + n_bias,l * 32) / 8 / 2^20: weights at their bits, 32-bit biases, in MB.

    The MQ-Bench tables' size_mb formula (mqbench.quant.kernels.model_size_mb, also behind the size_mb statistic).
    """
    from mqbench.quant.kernels import model_size_mb

    layers = layer_table(ctx)
    return float(model_size_mb(layers["weight_numel"], layers["bias_numel"], _bits(ctx)))


@register("bops", "mq")
def bops(ctx: ProxyContext) -> float:
    """bops = sum_l MACs_l * b_l * b_act: bit operations per image (b_act = ctx.act_bits, 8 on our tables)."""
    from mqbench.quant.kernels import bops as bops_fn

    return float(bops_fn(layer_table(ctx)["macs"], _bits(ctx), ctx.act_bits))


# ------------------------------------------------------------------------------------- Hessian

def _loss_and_grads(model: nn.Module, modules, inputs, targets):
    weights = [m.weight for m in modules]
    for w in weights:
        w.requires_grad_(True)
    loss = F.cross_entropy(model(inputs), targets)
    grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    return weights, grads


def hessian_top_eigenvalues(ctx: ProxyContext) -> list[float]:
    """Largest-magnitude eigenvalue of each layer's Hessian block H_ll (forward order), by power
    iteration with exact Hessian-vector products (double backprop) on the batch; cached per network."""

    def compute():
        model = ctx.model
        modules = _modules_in_order(ctx, model)
        weights, grads = _loss_and_grads(model, modules, ctx.inputs, ctx.targets)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        out = []
        for w, g in ctx.steps(list(zip(weights, grads)), "hawq_v1: Hessian eigenvalue per layer"):
            if g is None or not g.requires_grad:
                out.append(0.0)
                continue
            v = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            v /= v.norm()
            eig = None
            for _ in range(HAWQ_V1_MAX_ITER):
                (hv,) = torch.autograd.grad(g, w, grad_outputs=v, retain_graph=True)
                new = float((hv * v).sum())
                norm = float(hv.norm())
                if norm == 0:
                    eig = 0.0
                    break
                v = hv / norm
                if eig is not None and abs(new - eig) <= HAWQ_V1_TOL * (abs(eig) + 1e-12):
                    eig = new
                    break
                eig = new
            out.append(float(eig))
        return out

    return ctx.network_cached(("hessian_top_eig", HAWQ_V1_MAX_ITER, HAWQ_V1_TOL), compute)


def hessian_traces(ctx: ProxyContext, probes: int = HAWQ_V2_PROBES) -> list[float]:
    """Hutchinson estimate of Tr(H_ll) per layer (forward order), with ``probes`` Rademacher probes
    supported on that layer's weights only (z_l^T H_ll z_l, one block Hessian-vector product each,
    as HAWQ-V2 does per block); cached per network. Probes spanning all layers at once (primitives'
    ``hessian_trace``) are cheaper but add cross-layer terms: on ResNet-20 the per-layer traces of two
    probe seeds differed by factors 0.69-1.72 with 128 joint probes, 0.82-1.25 with 32 block probes
    (about 90 CPU-s per network)."""

    def compute():
        from primitives.core import BLOCK_PROBE_TAG, block_hessian_traces, derive_seed

        model = ctx.model
        modules = _modules_in_order(ctx, model)
        for m in modules:
            m.weight.requires_grad_(True)
        return block_hessian_traces(model, [m.weight for m in modules], ctx.inputs, ctx.targets, int(probes),
                                    derive_seed(BLOCK_PROBE_TAG, int(ctx.seed)))

    return ctx.network_cached(("hessian_trace", int(probes)), compute)


@register("hawq_v1", "mq")
def hawq_v1(ctx: ProxyContext) -> float:
    """hawq_v1 = -sum_l lambda_max(H_l) * ||Q(W_l) - W_l||^2 (HAWQ, Dong et al. ICCV 2019, as scored in EMQ).

    lambda_max(H_l): top eigenvalue of the layer's Hessian block of the mean cross-entropy on the
    batch (FP network, benchmark's mode), by power iteration (at most 30 iterations, relative
    tolerance 1e-3); Q = the benchmark's weight quantizer at the layer's bits.
    """
    eig = hessian_top_eigenvalues(ctx)
    err = quant_error_sq(ctx)
    return -float(sum(e * q for e, q in zip(eig, err)))


@register("hawq_v2", "mq")
def hawq_v2(ctx: ProxyContext) -> float:
    """hawq_v2 = -sum_l Tr(H_l)/n_l * ||Q(W_l) - W_l||^2 (HAWQ-V2, Dong et al. NeurIPS 2020).

    Tr(H_l): Hutchinson trace (32 Rademacher probes per layer, block Hessian-vector products) of the
    layer's Hessian block of the mean cross-entropy on the batch (FP network, benchmark's mode),
    n_l the layer's weight count, Q the benchmark's weight quantizer at the layer's bits.
    """
    trace = hessian_traces(ctx)
    numel = layer_table(ctx)["weight_numel"]
    err = quant_error_sq(ctx)
    return -float(sum(t / n * q for t, n, q in zip(trace, numel, err)))


# ------------------------------------------------------------------------------------- OMPQ

def linear_cka(gram_x: np.ndarray, gram_y: np.ndarray) -> float:
    """<HKH, HLH>_F / (||HKH||_F ||HLH||_F) for Gram matrices K, L (H the centering matrix)."""

    def center(k):
        return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()

    kc, lc = center(gram_x), center(gram_y)
    denom = np.linalg.norm(kc) * np.linalg.norm(lc)
    return float((kc * lc).sum() / denom) if denom > 0 else 0.0


def orthogonality_matrix(ctx: ProxyContext) -> np.ndarray:
    """ORM[i, j] = linear CKA of the outputs of layers i and j (forward order) on the batch; cached per network."""

    def compute():
        model = ctx.model
        modules = _modules_in_order(ctx, model)
        grams: dict[int, np.ndarray] = {}
        index = {id(m): i for i, m in enumerate(modules)}

        def hook(module, args, output):
            x = output.detach().reshape(output.shape[0], -1).double()
            grams[index[id(module)]] = (x @ x.T).numpy()

        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            with torch.no_grad():
                model(ctx.inputs)
        finally:
            for h in handles:
                h.remove()
        n = len(modules)
        orm = np.eye(n)
        for i in range(n):
            for j in range(i + 1, n):
                orm[i, j] = orm[j, i] = linear_cka(grams[i], grams[j])
        return orm

    return ctx.network_cached("orthogonality_matrix", compute)


@register("ompq", "mq")
def ompq(ctx: ProxyContext) -> float:
    """ompq = mean_l theta_l * b_l, theta_l = exp(-beta * sum_{j != l} ORM(X_l, X_j)), beta = 1.

    OMPQ (Ma et al., AAAI 2023, "Orthogonal mixed precision quantization"), in the reading of
    EMQ's baseline: X_l is the output of Conv2d/Linear layer l on the batch (flattened per sample,
    FP network), ORM the linear-kernel CKA between two layers' sample Gram matrices, theta_l the
    layer importance that OMPQ's linear program multiplies with the bit-width; the proxy is the
    importance-weighted mean bit-width (EMQ indexes theta one layer off; here theta_l and b_l refer
    to the same layer, all Conv2d/Linear layers included).
    """
    bits = _bits(ctx)
    orm = orthogonality_matrix(ctx)
    gamma = orm.sum(axis=1) - np.diag(orm)
    theta = np.exp(-OMPQ_BETA * gamma)
    return float(np.mean(theta * np.asarray(bits, dtype=float)))


# ------------------------------------------------------------------------------------- QE

@functools.lru_cache(maxsize=None)
def quantized_gaussian_std(bits: int, sigma: float = 1.0) -> float:
    """Std of clip(round(sigma * z), -2^(b-1), 2^(b-1)) for z ~ N(0, 1) (quantization step 1).

    QE's model of a b-bit quantized zero-mean Gaussian signal (Sun et al. 2022, appendix: step 1,
    bound 2^(b-1)); computed exactly from the normal CDF over the integer levels.
    """

    def cdf(t: float) -> float:
        return 0.5 * (1.0 + math.erf(t / (sigma * math.sqrt(2.0))))

    bound = 2 ** (int(bits) - 1)
    first = second = 0.0
    for q in range(-bound, bound + 1):
        hi = 1.0 if q == bound else cdf(q + 0.5)
        lo = 0.0 if q == -bound else cdf(q - 0.5)
        first += (hi - lo) * q
        second += (hi - lo) * q * q
    return math.sqrt(max(second - first * first, 0.0))


@register("qe", "mq")
def qe(ctx: ProxyContext) -> float:
    """qe = sum_l [ log sqrt(C_in,l * k_l^2) + log S(b_w,l) + log S(b_a) ], S(b) = std of a b-bit quantized N(0,1).

    QE score (Sun et al., NeurIPS 2022, "Entropy-driven mixed-precision quantization for deep
    network design"): the Gaussian entropy of the network's features, log of the product over layers
    of the output std, where each layer multiplies the std by sqrt(fan-in) and by the std of its
    quantized weights and quantized input activations (unit-variance signals, step 1, bound
    2^(b-1), as in EMQ's QE baseline). Reading: all Conv2d/Linear layers weighted equally (EMQ's
    stage weights are specific to ImageNet ResNet-18's five stages), b_a = ctx.act_bits.
    """
    bits = _bits(ctx)
    layers = layer_table(ctx)
    modules = _modules_in_order(ctx, ctx.base_model)
    act = math.log(quantized_gaussian_std(ctx.act_bits))
    total = 0.0
    for m, b, n_w in zip(modules, bits, layers["weight_numel"]):
        fan_in = n_w // m.weight.shape[0]
        total += 0.5 * math.log(fan_in) + math.log(quantized_gaussian_std(b)) + act
    return total


# ------------------------------------------------------------------------------------- bit-aware NAS proxies

@register("bsynflow", "mq")
def bsynflow(ctx: ProxyContext) -> float:
    """bsynflow = sum_l b_l * sum |W_l * dR/dW_l| (synflow saliency per layer times its bits; EMQ's baseline).

    The per-layer synflow saliency of the FP network (|params|, BN removed, all-ones input,
    float64, as in the NAS ``synflow``) is computed once per network. Reading: EMQ's code applies it
    to a Gaussian re-initialised copy; we use the pretrained weights, whose saliency is what the
    quantized network inherits.
    """
    bits = _bits(ctx)

    def compute():
        model = ctx.model
        modules = _modules_in_order(ctx, model)
        per_layer = synflow_per_layer(model, ctx.inputs.shape[1:])  # registration order of the copy
        by_module = {id(m): s for m, s in zip([m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))], per_layer)}
        return [by_module[id(m)] for m in modules]

    saliency = ctx.network_cached("synflow_per_layer", compute)
    return float(sum(b * s for b, s in zip(bits, saliency)))


@register("bsnip", "mq")
def bsnip(ctx: ProxyContext) -> float:
    """bsnip = sum_l b_l * sum |dL/dW_l * W_l| (SNIP saliency per layer times its bits; EMQ's baseline).

    Gradient of the mean cross-entropy of the FP network on the batch (benchmark's mode), computed
    once per network.
    """
    bits = _bits(ctx)

    def compute():
        st = ctx.stats(["weight", "weight_grad"])
        return [float((l["weight_grad"].double() * l["weight"].double()).abs().sum()) for l in st.layers]

    saliency = ctx.network_cached("snip_per_layer", compute)
    return float(sum(b * s for b, s in zip(bits, saliency)))
