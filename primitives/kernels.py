"""Numeric kernels of primitive extraction: the passes with their hooks, the Hessian estimators, seeds,
block parameter counts and the function computing each primitive of a layer.

Torch, math and the standard library only (plus :mod:`mqbench.kernels`, the floor below): ``evoproxy
export`` copies this module's source into standalone proxy modules, and :mod:`primitives.core` (the
registry, validation, storage and the conventions, documented there) calls these functions, so the
library and exported proxies share one implementation. Errors a caller can cause raise
:class:`ExtractionError` (a ``ValueError``; ``primitives.core`` turns it into a one-line ConfigError).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mqbench.kernels import layer_size_mb

# passes: which forward/backward runs a primitive needs
STATIC, DATA, NOISE, PERTURB, HESSIAN, QUANT = "static", "data", "noise", "perturb", "hessian", "quant"
INPUT_PASSES = (DATA, NOISE, PERTURB)
# EMQ's virtual gradient: d(sum of logits)/dW on an all-ones input of the batch's shape (no loss, no labels)
VIRTUAL = "virtual"
GRAD_PASSES = INPUT_PASSES + (VIRTUAL,)  # passes of one forward + one autograd.grad (Capture values by needs)
PASS_ORDER = (DATA, NOISE, PERTURB, VIRTUAL, HESSIAN)
FD_REL_STEP = 1e-3  # finite-difference step h = FD_REL_STEP * rms of all probed weights
# seed tag of hessian_block_trace's probes: the hawq_v2 baseline's stream, so that baseline is expressible
# exactly as a proxy tree
BLOCK_PROBE_TAG = "hawq_v2"


class ExtractionError(ValueError):
    """The model, batch or bit configuration cannot be used (one line saying why)."""


# ----------------------------------------------------------------------------------- seeds, threads
def derive_seed(*parts) -> int:
    """A 63-bit seed from a tuple of plain values (stable across processes and platforms)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@contextlib.contextmanager
def fixed_threads(n: int | None):
    """Run torch's intra-op work on ``n`` threads (None: leave as is), restoring the old count."""
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


# ----------------------------------------------------------------------------------- layers, bits
LAYER_KINDS = ((nn.Conv2d, "conv"), (nn.Linear, "linear"))  # the layers statistics are taken of, and their kind


def layer_candidates(model: nn.Module) -> dict:
    """{id(module): (name, kind)} of every Conv2d/Linear of ``model`` (registration order)."""
    candidates = {}
    for name, module in model.named_modules():
        kind = next((k for cls, k in LAYER_KINDS if isinstance(module, cls)), None)
        if kind is not None and id(module) not in candidates:
            candidates[id(module)] = (name, kind)
    if not candidates:
        raise ExtractionError("the model has no nn.Conv2d or nn.Linear layer")
    return candidates


def prepare_batch(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    """(inputs on the model's device, in its dtype when floating; targets as int64 there)."""
    param = next(iter(model.parameters()))
    x = inputs.to(param.device)
    if x.is_floating_point():
        x = x.to(param.dtype)
    return x, targets.to(device=param.device, dtype=torch.long)


def validate_bit_values(bit_config) -> None:
    """Type/range checks that do not need the layer list."""
    if bit_config is None:
        return
    if isinstance(bit_config, Mapping):
        items = list(bit_config.items())
    elif isinstance(bit_config, (list, tuple)):
        items = list(enumerate(bit_config))
    else:
        raise ExtractionError(f"bit_config must be a list of ints or a dict name->bits, got {type(bit_config).__name__}")
    for key, b in items:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
            raise ExtractionError(f"bit_config[{key!r}] = {b!r}: bit-widths must be integers in 1..32")


def bits_per_layer(bit_config, layer_names: Sequence[str]) -> list[int | None]:
    """Weight bits per layer from a list (forward order) or a dict layer name -> bits (None: no bits)."""
    if bit_config is None:
        return [None] * len(layer_names)
    if isinstance(bit_config, Mapping):
        unknown = [k for k in bit_config if k not in layer_names]
        if unknown:
            raise ExtractionError(f"bit_config names unknown layer(s) {', '.join(map(repr, unknown[:5]))}; "
                                  f"the {len(layer_names)} Conv2d/Linear layers are {', '.join(layer_names[:5])}...")
        missing = [n for n in layer_names if n not in bit_config]
        if missing:
            raise ExtractionError(f"bit_config lacks {len(missing)} layer(s), e.g. {', '.join(map(repr, missing[:5]))}; "
                                  f"give bits for all {len(layer_names)} Conv2d/Linear layers")
        return [int(bit_config[n]) for n in layer_names]
    if len(bit_config) != len(layer_names):
        raise ExtractionError(f"bit_config has {len(bit_config)} entries but the model has {len(layer_names)} "
                              f"Conv2d/Linear layers (in forward order)")
    return [int(b) for b in bit_config]


def block_param_counts(model: nn.Module, layer_names: Sequence[str]) -> list[int]:
    """Trainable parameters attributed to each layer of ``layer_names`` (see the ``params`` primitive).

    Walks ``model.named_modules()`` (registration order): a layer's own parameters go to it; every
    other module's trainable parameters go to the layer registered last before it (its BatchNorm in
    the usual conv-BN blocks), or to the first layer when none came before. Shared parameters count
    once, so the counts sum to ``sum(p.numel() for p in model.parameters() if p.requires_grad)``."""
    index = {n: i for i, n in enumerate(layer_names)}
    counts = [0] * len(layer_names)
    current, pending, seen = None, 0, set()
    for name, module in model.named_modules():
        if name in index:
            current = index[name]
            counts[current] += pending
            pending = 0
        n = 0
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if current is None:
            pending += n
        else:
            counts[current] += n
    return counts


# ----------------------------------------------------------------------------------- what passes record
@dataclass
class LayerInfo:
    """A Conv2d/Linear layer as a pass's forward hook met it (shapes per sample)."""

    name: str
    kind: str  # "conv" or "linear"
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


@dataclass
class Capture:
    """What one pass recorded for one layer: ``values`` {what: tensor}, only what the pass's primitives need (the
    keys of ``Primitive.needs``) and what they derive from it."""

    layer: LayerInfo
    values: dict = field(default_factory=dict)


@dataclass
class LayerCtx:
    """A layer during extraction: its module, a detached weight copy and its bit-width."""

    index: int
    name: str
    kind: str
    module: nn.Module
    weight: torch.Tensor
    bits: int | None
    quantizer: Callable[[torch.Tensor, int], torch.Tensor]
    cache: dict = field(default_factory=dict)
    model: nn.Module | None = None  # the whole network (for network-level attributions such as ``params``)
    layer_names: tuple[str, ...] = ()  # every layer's name, forward order
    shared: dict = field(default_factory=dict)  # one dict shared by all layers of the network


def layer_contexts(model: nn.Module, layers: Sequence[LayerInfo], bits: Sequence, quantizer) -> list[LayerCtx]:
    """One :class:`LayerCtx` per layer (forward order), sharing one ``shared`` dict."""
    names, shared = tuple(l.name for l in layers), {}
    return [LayerCtx(i, info.name, info.kind, info.module, info.module.weight.detach().clone(), bits[i], quantizer,
                     model=model, layer_names=names, shared=shared) for i, info in enumerate(layers)]


def owned(t: torch.Tensor) -> torch.Tensor:
    """A detached contiguous CPU tensor that owns exactly its storage (so torch.save stores only it; the
    layout also fixes the summation order of the operators' reductions)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if (not t.is_contiguous()) or t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset():
        t = t.contiguous().clone()
    return t


# ----------------------------------------------------------------------------------- primitive functions
def spatial_mean(t: torch.Tensor, kind: str) -> torch.Tensor:
    """[N, C, *spatial] -> [N, C] (conv) or [N, *, F] -> [N, F] (linear), by the mean."""
    if t.dim() <= 2:
        return t
    if kind == "conv":
        return t.mean(dim=tuple(range(2, t.dim())))  # stride-agnostic (channels_last needs no copy)
    return t.mean(dim=tuple(range(1, t.dim() - 1)))


def per_sample_ag(cap: Capture) -> torch.Tensor:
    """s[n, c] = sum over spatial positions of a * dL/da (shared by fisher and act_x_grad)."""
    if "ag" not in cap.values:
        prod = cap.values["out"] * cap.values["ograd"]
        if prod.dim() > 2:
            dims = tuple(range(2, prod.dim())) if cap.layer.kind == "conv" else tuple(range(1, prod.dim() - 1))
            prod = prod.sum(dim=dims)
        cap.values["ag"] = prod
    return cap.values["ag"]


def positions(cap: Capture) -> int:
    t = cap.values["out"]
    if t.dim() <= 2:
        return 1
    return math.prod(t.shape[2:]) if cap.layer.kind == "conv" else math.prod(t.shape[1:-1])


# a static or quantization primitive is a function of the layer (LayerCtx), one of a pass of what the pass
# recorded for the layer (Capture)
def p_weight(ctx):
    return ctx.weight


def p_params(ctx):
    if "block_params" not in ctx.shared:
        ctx.shared["block_params"] = block_param_counts(ctx.model, ctx.layer_names)
    return torch.tensor(ctx.shared["block_params"][ctx.index], dtype=torch.int64)


def p_weight_grad(cap):
    return cap.values["wgrad"]


def p_act_in(cap):
    return cap.values["act_in"]


def p_act_out(cap):
    return cap.values["act_out"]


def p_act_grad(cap):
    return spatial_mean(cap.values["ograd"], cap.layer.kind)


def p_fisher(cap):
    return 0.5 * per_sample_ag(cap).pow(2).sum(dim=0)


def p_act_x_grad(cap):
    return per_sample_ag(cap).sum(dim=0) / (cap.values["out"].shape[0] * positions(cap))


def p_hessian_diag(cap):
    return cap.values["hdiag"]


def p_hessian_trace(cap):
    return cap.values["hdiag"].sum()


def p_hessian_block_trace(cap):
    return torch.tensor(cap.values["hblock"], dtype=cap.layer.module.weight.dtype)


def quantized(ctx: LayerCtx) -> torch.Tensor:
    if "wq" not in ctx.cache:
        wq = ctx.quantizer(ctx.weight, ctx.bits)
        if not isinstance(wq, torch.Tensor) or wq.shape != ctx.weight.shape:
            raise ValueError(f"quantizer returned {type(wq).__name__} of shape {getattr(wq, 'shape', None)} "
                             f"for weight {tuple(ctx.weight.shape)} of layer {ctx.name}")
        ctx.cache["wq"] = wq.detach().to(ctx.weight.dtype)
    return ctx.cache["wq"]


def p_weight_q(ctx):
    return quantized(ctx)


def p_quant_error(ctx):
    return ctx.weight - quantized(ctx)


def p_bitwidth(ctx):
    return torch.tensor(int(ctx.bits), dtype=torch.int32)


def p_size_mb(ctx):
    bias = ctx.module.bias.numel() if getattr(ctx.module, "bias", None) is not None else 0
    return torch.tensor(layer_size_mb(ctx.weight.numel(), bias, int(ctx.bits)), dtype=torch.float64)
