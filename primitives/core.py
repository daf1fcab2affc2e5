"""Per-layer statistics of a network on one batch: the inputs of the evolved proxies.

``extract(model, inputs, targets)`` returns a :class:`NetworkStats` with one :class:`LayerStats` per
``nn.Conv2d`` / ``nn.Linear`` module, in the order their forward hooks fire on the first pass
(modules that never run are left out; a module called twice in one forward is a ConfigError).
Each layer carries a dict of tensors, one per requested primitive (see ``PRIMITIVES``).

Conventions
-----------
* Loss: mean cross-entropy of the model's logits on the batch (``F.cross_entropy``); all
  gradients are of this mean loss, so they carry a factor 1/N.
* Mode: the model's current ``train()``/``eval()`` mode is used as it is. NAS proxies call extract
  on freshly initialised networks in train mode (batch-norm uses batch statistics); pretrained
  mixed-precision models are called in eval mode. Buffers (e.g. BN running statistics) are restored
  after every pass, weights are never modified, and no ``.grad`` is left on any parameter
  (gradients are taken with ``torch.autograd.grad``, never ``backward``).
* Activations: ``act_in`` / ``act_out`` / ``act_grad`` are reduced over the spatial dims by the
  mean, keeping the sample dim: a conv's [N, C, H, W] becomes [N, C]; a linear's [N, F] stays
  [N, F] (extra middle dims of a linear, e.g. tokens, are averaged like spatial dims).
* ``fisher`` (Turner et al. 2020; NAS-Bench-Suite-Zero) is computed on the layer output a:
  per sample s_n,c = sum over spatial of a * dL/da, then fisher_c = 0.5 * sum_n s_n,c^2 -> [C_out].
  ``act_x_grad`` = mean over samples and spatial positions of a * dL/da -> [C_out].
* Hessian: Hutchinson with Rademacher probes z that span all layers' weights jointly;
  diag ~= mean_k z_k * (H z_k) from double backprop on one graph (create_graph once, then one
  ``autograd.grad`` with ``retain_graph`` per probe); ``hessian_trace`` is the per-layer sum of
  that diagonal estimate (a 0-d tensor), taken before any subsampling. The Hessian runs its own
  forward pass in the default (contiguous) memory layout: double backprop through channels_last
  tensors mixes layouts and measured ~1.5x slower on CPU. Profile (NB201, 1 thread): conv double
  backward ~40-45% of the time, batch-norm double backward ~20-30%, the rest elementwise; one
  probe costs ~2.5 gradient passes. Also measured slower and not used: ``is_grads_batched``
  probes (1.16x), forward-over-reverse ``torch.func.jvp(grad)`` (1.5x), an elementwise batch-norm
  decomposition (1.1-1.2x), mkldnn off (2x).
* ``hessian_block_trace`` (only on request: not part of ``names=None``): Tr(H_ll) per layer by
  Hutchinson with ``hutchinson_probes`` probes supported on that layer's weights only (HAWQ-V2's
  estimator; no cross-layer terms), one exact block Hessian-vector product per layer and probe on
  the contiguous batch, probes drawn layer by layer from a generator seeded with
  (``BLOCK_PROBE_TAG`` = "hawq_v2", seed): the same numbers as the ``hawq_v2`` baseline. Costs about
  layers x probes backward passes; ``hessian_method`` does not apply to it.
* ``params``: a 0-d int64 count of trainable parameters attributed to the layer: its own weight and
  bias plus those of every other module registered after it and before the next Conv2d/Linear (the
  BatchNorm of a conv-BN block; parameters registered before the first layer go to the first), so
  the layers' counts sum to the network's trainable parameter count (NAS-Bench-Suite-Zero's
  ``params``); see :func:`block_param_counts`.
* ``hessian_method`` ("exact" default): "fd" / "fd_central" replace H z by forward / central
  differences of weight gradients, (g(w + h z) - g(w)) / h or (g(w + h z) - g(w - h z)) / 2h,
  with the same probes z and one global step h = FD_REL_STEP * rms(all probed weights) (a single
  h keeps the estimator identical; per-layer steps would weight the off-diagonal terms
  differently). Weights are perturbed in place and copied back bit-identically; "fd" reuses the
  data pass's g(w) when the same call computes weight_grad. They match the exact method on smooth
  networks, but NOT on ReLU networks: autograd's Hessian sets ReLU'' = 0, while a difference
  quotient picks up the gradient jumps of the ReLUs the step flips, whose random-signed sum
  grows like 1/sqrt(h) relative to h H z. Measured on 10 NB201 networks (train mode, batch 64,
  same probes): median per-layer trace error vs exact 140% / 620% / 1700% ("fd") at
  FD_REL_STEP 1e-2 / 1e-3 / 1e-4, Spearman across layers 0.1-0.3, diag cosine 0.03-0.34; the
  same in float64 (so not rounding), while the same networks with SiLU instead of ReLU agree to
  0.2-0.4% median. Use them only for smooth activations.
* Extra inputs (EZNAS): ``@noise`` = the same statistics on N(0, 1) inputs of the batch's shape,
  ``@perturb`` on ``inputs + noise_std * N(0, 1)``; both keep the batch's targets. Only the passes
  that the requested names need are run; a pass shares its single forward/backward among all of
  its primitives (forward hooks record the layers' inputs/outputs, one ``autograd.grad`` gives
  dL/dW and dL/d(output) together). A layer output later modified in place by the model is
  detected (tensor version counter) and the pass is re-run handing clones to the model.
* Layout: with ``channels_last=True`` (default) 4-d inputs of the data/noise/perturb passes are
  converted to channels_last, which mkldnn convolutions then propagate; the model's weights are
  not touched. Measured on NB201 (batch 64, 1 thread, 8 architectures): cheap pass 0.39 vs 0.71
  CPU-s, eznas passes 0.84 vs 1.40 CPU-s. The price is float32 accuracy of weight gradients
  (convs before train-mode BN sum 65k cancelling terms): median per-layer relative error vs a
  float64 reference 1.0% with channels_last vs 0.18% contiguous (activations ~1e-5 either way).
  Pass ``channels_last=False`` when that matters; it is part of the cache key.
* Randomness: every random tensor (noise, perturbation, probes, subsample indices) is drawn from
  an explicit ``torch.Generator`` seeded from ``seed`` and a purpose tag, so a subset of names
  gives the same values as the full set.
* Threads: on CPU, torch's results depend on the intra-op thread count (measured on an NB201
  network, batch 64, channels_last: every computed primitive differs between 1 and 2 threads at
  the float32-rounding level, e.g. max abs diff 1e-3 in weight_grad, 2e-5 in act_out, 5e-5 in
  hessian_diag; repeated runs with the same count are bit-identical). ``extract`` therefore runs under a fixed thread count
  (``threads``, default :data:`DEFAULT_THREADS` = 1) and restores the caller's setting afterwards,
  so results do not depend on how many worker processes are used.
* ``max_elements``: any stored tensor with more elements is flattened and subsampled to
  ``max_elements`` entries at sorted indices drawn from a generator seeded by
  (seed, layer index, numel); tensors of one layer with the same numel (W, G, H, W_q, ...) use the
  same indices and stay aligned elementwise (see :func:`subsample_indices`).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mqbench.errors import ConfigError

CODE_VERSION = "primitives-1"
DEFAULT_THREADS = 1
STATE_FORMAT = "evoproxy.primitives/1"

# passes: which forward/backward runs a primitive needs
STATIC, DATA, NOISE, PERTURB, HESSIAN, QUANT = "static", "data", "noise", "perturb", "hessian", "quant"
INPUT_PASSES = (DATA, NOISE, PERTURB)
PASS_ORDER = (DATA, NOISE, PERTURB, HESSIAN)
HESSIAN_METHODS = ("exact", "fd", "fd_central")
FD_REL_STEP = 1e-3  # finite-difference step h = FD_REL_STEP * rms of all probed weights
BLOCK_PROBE_TAG = "hawq_v2"  # seed tag of hessian_block_trace's probes: the hawq_v2 baseline's stream, so
#                              that baseline is expressible exactly as a proxy tree


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class LayerStats:
    """One Conv2d / Linear layer: its geometry and the requested primitive tensors."""

    name: str
    kind: str  # "conv" or "linear"
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]  # per sample
    output_shape: tuple[int, ...]  # per sample
    params: int  # weight + bias elements
    flops: int  # multiply-accumulates per image
    bits: int | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def to_state(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "weight_shape": list(self.weight_shape),
            "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
            "params": int(self.params), "flops": int(self.flops), "bits": self.bits,
            "tensors": dict(self.tensors),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> "LayerStats":
        return cls(
            name=str(state["name"]), kind=str(state["kind"]),
            weight_shape=tuple(int(v) for v in state["weight_shape"]),
            input_shape=tuple(int(v) for v in state["input_shape"]),
            output_shape=tuple(int(v) for v in state["output_shape"]),
            params=int(state["params"]), flops=int(state["flops"]),
            bits=None if state["bits"] is None else int(state["bits"]),
            tensors={str(k): v for k, v in state["tensors"].items()},
        )


@dataclass
class NetworkStats:
    """All layers of one network on one batch, plus how they were computed (``meta``)."""

    layers: list[LayerStats]
    meta: dict = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def layer(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_state(self) -> dict:
        """A plain dict (tensors, str, int, float, bool, None, lists, dicts) for torch.save."""
        return {"format": STATE_FORMAT, "meta": dict(self.meta), "layers": [l.to_state() for l in self.layers]}

    @classmethod
    def from_state(cls, state: Mapping) -> "NetworkStats":
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a primitives state (format {STATE_FORMAT!r})")
        return cls(layers=[LayerStats.from_state(l) for l in state["layers"]], meta=dict(state["meta"]))


# --------------------------------------------------------------------------------------------
# quantizer
# --------------------------------------------------------------------------------------------
def simple_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric uniform fake-quantization of ``weight`` to ``bits`` bits.

    Channel c (dim 0) uses scale s_c = max|W_c| / (2^(b-1) - 1) and levels s_c * {-q..q},
    q = 2^(b-1) - 1 (round half to even). All-zero channels stay zero. For b = 1 (where q = 0)
    it is the binary quantizer sign(W_c) * mean|W_c|.
    """
    w = weight.detach()
    if w.dim() == 0:
        w = w.reshape(1)
    flat = w.reshape(w.shape[0], -1)
    shape = (-1,) + (1,) * (flat.dim() - 1)
    if bits == 1:
        alpha = flat.abs().mean(dim=1).reshape(shape)
        return (torch.sign(flat) * alpha).reshape(weight.shape)
    qmax = float(2 ** (bits - 1) - 1)
    maxabs = flat.abs().amax(dim=1).reshape(shape)
    scale = torch.where(maxabs > 0, maxabs / qmax, torch.ones_like(maxabs))
    q = torch.clamp(torch.round(flat / scale), -qmax, qmax)
    return (q * scale).reshape(weight.shape)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
@dataclass
class _Capture:
    """What one pass recorded for one layer (only the fields its primitives need)."""

    act_in: torch.Tensor | None = None  # [N, C_in] spatial mean
    act_out: torch.Tensor | None = None  # [N, C_out] spatial mean
    out: torch.Tensor | None = None  # full output, detached
    wgrad: torch.Tensor | None = None  # dL/dW
    ograd: torch.Tensor | None = None  # dL/d(output), full
    hdiag: torch.Tensor | None = None  # Hutchinson diagonal
    hblock: float | None = None  # block Hutchinson trace of the layer's Hessian block
    cache: dict = field(default_factory=dict)


@dataclass
class _LayerCtx:
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


@dataclass(frozen=True)
class Primitive:
    name: str
    description: str
    pass_: str
    needs: frozenset  # subset of {"act_in", "act_out", "out", "wgrad", "ograd"}; hessian: {"hdiag"} / {"hblock"}
    fn: Callable[[_LayerCtx, _Capture | None], torch.Tensor]
    default: bool = True  # part of names=None (when its pass is available)


REGISTRY: dict[str, Primitive] = {}
PRIMITIVES: dict[str, str] = {}  # name -> one-line description


def primitive(name: str, description: str, pass_: str, needs: Iterable[str] = (), default: bool = True):
    """Register the function computing primitive ``name`` (used as a decorator); ``default=False``
    leaves it out of ``names=None`` (it is computed only on request)."""

    def register(fn):
        if name in REGISTRY:
            raise ValueError(f"primitive {name!r} registered twice")
        REGISTRY[name] = Primitive(name, description, pass_, frozenset(needs), fn, default)
        PRIMITIVES[name] = description
        return fn

    return register


def _spatial_mean(t: torch.Tensor, kind: str) -> torch.Tensor:
    """[N, C, *spatial] -> [N, C] (conv) or [N, *, F] -> [N, F] (linear), by the mean."""
    if t.dim() <= 2:
        return t
    if kind == "conv":
        return t.mean(dim=tuple(range(2, t.dim())))  # stride-agnostic (channels_last needs no copy)
    return t.mean(dim=tuple(range(1, t.dim() - 1)))


def _per_sample_ag(ctx: _LayerCtx, cap: _Capture) -> torch.Tensor:
    """s[n, c] = sum over spatial positions of a * dL/da (shared by fisher and act_x_grad)."""
    if "ag" not in cap.cache:
        prod = cap.out * cap.ograd
        if prod.dim() > 2:
            dims = tuple(range(2, prod.dim())) if ctx.kind == "conv" else tuple(range(1, prod.dim() - 1))
            prod = prod.sum(dim=dims)
        cap.cache["ag"] = prod
    return cap.cache["ag"]


def _positions(ctx: _LayerCtx, cap: _Capture) -> int:
    t = cap.out
    if t.dim() <= 2:
        return 1
    return math.prod(t.shape[2:]) if ctx.kind == "conv" else math.prod(t.shape[1:-1])


@primitive("weight", "W: the layer's weight tensor", STATIC)
def _weight(ctx, cap):
    return ctx.weight


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


@primitive("params", "the layer's trainable parameter count with its block's (weight, bias, the BatchNorm "
                     "registered after it); sums to the network's count over layers (0-d)", STATIC)
def _params(ctx, cap):
    if "block_params" not in ctx.shared:
        ctx.shared["block_params"] = block_param_counts(ctx.model, ctx.layer_names)
    return torch.tensor(ctx.shared["block_params"][ctx.index], dtype=torch.int64)


_WHERE = {DATA: "on the batch", NOISE: "on N(0,1) noise inputs of the batch's shape",
          PERTURB: "on the batch plus noise_std * N(0,1)"}
_SUFFIX = {DATA: "", NOISE: "@noise", PERTURB: "@perturb"}


def _weight_grad(ctx, cap):
    return cap.wgrad


def _act_out(ctx, cap):
    return cap.act_out


def _act_grad(ctx, cap):
    return _spatial_mean(cap.ograd, ctx.kind)


for _pass in INPUT_PASSES:
    _s, _w = _SUFFIX[_pass], _WHERE[_pass]
    primitive(f"weight_grad{_s}", f"G: gradient of the mean cross-entropy w.r.t. W, {_w}", _pass, ("wgrad",))(_weight_grad)
    if _pass == DATA:
        primitive("act_in", "layer input activations, spatial mean per sample: [N, C_in]", DATA, ("act_in",))(
            lambda ctx, cap: cap.act_in)
    primitive(f"act_out{_s}", f"layer output activations, spatial mean per sample: [N, C_out], {_w}", _pass, ("act_out",))(_act_out)
    primitive(f"act_grad{_s}", f"gradient of the loss w.r.t. the layer output, spatial mean per sample: [N, C_out], {_w}",
              _pass, ("ograd",))(_act_grad)
    if _pass == DATA:
        primitive("fisher", "Fisher (Turner et al. 2020): 0.5 * sum_n (sum_spatial a * dL/da)^2 per output channel: [C_out]",
                  DATA, ("out", "ograd"))(lambda ctx, cap: 0.5 * _per_sample_ag(ctx, cap).pow(2).sum(dim=0))
        primitive("act_x_grad", "a * dL/da on the layer output, mean over samples and spatial positions: [C_out]",
                  DATA, ("out", "ograd"))(
            lambda ctx, cap: _per_sample_ag(ctx, cap).sum(dim=0) / (cap.out.shape[0] * _positions(ctx, cap)))


@primitive("hessian_diag", "H: Hutchinson estimate of the diagonal of the loss Hessian w.r.t. W (needs hutchinson_probes > 0)",
           HESSIAN, ("hdiag",))
def _hessian_diag(ctx, cap):
    return cap.hdiag


@primitive("hessian_trace", "Hutchinson trace of the layer's Hessian block: sum of hessian_diag (0-d tensor)", HESSIAN, ("hdiag",))
def _hessian_trace(ctx, cap):
    return cap.hdiag.sum()


@primitive("hessian_block_trace", "Tr(H_l) by Hutchinson with probes on this layer's weights only (HAWQ-V2; "
                                  "one Hessian-vector product per layer and probe; 0-d tensor)",
           HESSIAN, ("hblock",), default=False)
def _hessian_block_trace(ctx, cap):
    return torch.tensor(cap.hblock, dtype=ctx.weight.dtype)


def _quantized(ctx):
    if "wq" not in ctx.cache:
        wq = ctx.quantizer(ctx.weight, ctx.bits)
        if not isinstance(wq, torch.Tensor) or wq.shape != ctx.weight.shape:
            raise ValueError(f"quantizer returned {type(wq).__name__} of shape {getattr(wq, 'shape', None)} "
                             f"for weight {tuple(ctx.weight.shape)} of layer {ctx.name}")
        ctx.cache["wq"] = wq.detach().to(ctx.weight.dtype)
    return ctx.cache["wq"]


@primitive("weight_q", "W_q: the weight quantized to the layer's bit-width (needs bit_config)", QUANT)
def _weight_q(ctx, cap):
    return _quantized(ctx)


@primitive("quant_error", "W - W_q: the quantization error of the weight (needs bit_config)", QUANT)
def _quant_error(ctx, cap):
    return ctx.weight - _quantized(ctx)


@primitive("bitwidth", "the layer's weight bit-width as a 0-d int tensor (needs bit_config)", QUANT)
def _bitwidth(ctx, cap):
    return torch.tensor(int(ctx.bits), dtype=torch.int32)


def layer_size_mb(weight_numel: int, bias_numel: int, bits: int) -> float:
    """Storage of one layer in MB (2^20 bytes): weights at ``bits``, biases at 32 bit (the MQ tables' size_mb per layer)."""
    return (int(weight_numel) * int(bits) + int(bias_numel) * 32) / 8 / 2 ** 20


@primitive("size_mb", "the layer's storage in MB at its bit-width: weights at b bits, bias at 32 bits (0-d float64; needs bit_config)",
           QUANT)
def _size_mb(ctx, cap):
    bias = ctx.module.bias.numel() if getattr(ctx.module, "bias", None) is not None else 0
    return torch.tensor(layer_size_mb(ctx.weight.numel(), bias, int(ctx.bits)), dtype=torch.float64)


def default_names(hutchinson_probes: int = 0, bit_config=None) -> list[str]:
    """The names ``names=None`` stands for: the static and input-pass primitives, plus hessian_diag and
    hessian_trace when probes > 0, plus the quantization ones when a bit_config is given
    (``hessian_block_trace``, one Hessian-vector product per layer and probe, only on request)."""
    out = []
    for name, prim in REGISTRY.items():
        if not prim.default:
            continue
        if prim.pass_ == HESSIAN and hutchinson_probes <= 0:
            continue
        if prim.pass_ == QUANT and bit_config is None:
            continue
        out.append(name)
    return out


def resolve_names(names, hutchinson_probes: int = 0, bit_config=None) -> list[str]:
    """Validated primitive names in registry order (ConfigError on unknown/unsatisfiable ones)."""
    if names is None:
        return default_names(hutchinson_probes, bit_config)
    if isinstance(names, str):
        names = [names]
    names = list(names)
    bad = [n for n in names if n not in REGISTRY]
    if bad:
        raise ConfigError(f"unknown primitive name(s) {', '.join(map(repr, bad))}; valid: {', '.join(REGISTRY)}")
    wanted = set(names)
    if hutchinson_probes <= 0 and any(REGISTRY[n].pass_ == HESSIAN for n in wanted):
        raise ConfigError("hessian_diag/hessian_trace/hessian_block_trace need hutchinson_probes > 0")
    if bit_config is None and any(REGISTRY[n].pass_ == QUANT for n in wanted):
        raise ConfigError("weight_q/quant_error/bitwidth need a bit_config")
    return [n for n in REGISTRY if n in wanted]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def derive_seed(*parts) -> int:
    """A 63-bit seed from a tuple of plain values (stable across processes and platforms)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def subsample_indices(seed: int, layer_index: int, numel: int, max_elements: int) -> torch.Tensor:
    """The sorted flat indices kept when a tensor of ``numel`` elements of layer ``layer_index``
    is capped at ``max_elements`` (int64 [max_elements])."""
    gen = _generator("subsample", int(seed), int(layer_index), int(numel))
    return torch.randperm(numel, generator=gen)[:max_elements].sort().values


@contextlib.contextmanager
def fixed_threads(n: int | None):
    """Run torch's intra-op work on ``n`` threads (None: leave as is), restoring the old count."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A detached CPU tensor that owns exactly its storage (so torch.save stores only it)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if (not t.is_contiguous()) or t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset():
        t = t.contiguous().clone()
    return t


def _quantizer_id(quantizer) -> str:
    if quantizer is simple_quantize:
        return "simple_quantize"
    mod = getattr(quantizer, "__module__", None) or type(quantizer).__module__
    qual = getattr(quantizer, "__qualname__", None) or type(quantizer).__qualname__
    return f"{mod}.{qual}"


def validate_bit_values(bit_config) -> None:
    """Type/range checks that do not need the layer list (one-line ConfigError)."""
    if bit_config is None:
        return
    if isinstance(bit_config, Mapping):
        items = list(bit_config.items())
    elif isinstance(bit_config, (list, tuple)):
        items = list(enumerate(bit_config))
    else:
        raise ConfigError(f"bit_config must be a list of ints or a dict name->bits, got {type(bit_config).__name__}")
    for key, b in items:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
            raise ConfigError(f"bit_config[{key!r}] = {b!r}: bit-widths must be integers in 1..32")


def _bits_per_layer(bit_config, layer_names: Sequence[str]) -> list[int | None]:
    if bit_config is None:
        return [None] * len(layer_names)
    if isinstance(bit_config, Mapping):
        unknown = [k for k in bit_config if k not in layer_names]
        if unknown:
            raise ConfigError(f"bit_config names unknown layer(s) {', '.join(map(repr, unknown[:5]))}; "
                              f"the {len(layer_names)} Conv2d/Linear layers are {', '.join(layer_names[:5])}...")
        missing = [n for n in layer_names if n not in bit_config]
        if missing:
            raise ConfigError(f"bit_config lacks {len(missing)} layer(s), e.g. {', '.join(map(repr, missing[:5]))}; "
                              f"give bits for all {len(layer_names)} Conv2d/Linear layers")
        return [int(bit_config[n]) for n in layer_names]
    if len(bit_config) != len(layer_names):
        raise ConfigError(f"bit_config has {len(bit_config)} entries but the model has {len(layer_names)} "
                          f"Conv2d/Linear layers (in forward order)")
    return [int(b) for b in bit_config]


# --------------------------------------------------------------------------------------------
# one pass
# --------------------------------------------------------------------------------------------
@dataclass
class _LayerInfo:
    name: str
    kind: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


class _ModelError(RuntimeError):
    pass


def _run_pass(model, candidates: dict, x, y, needs: frozenset, probes: int, probe_seed: int,
              expected: list | None, safe: bool = False):
    """One forward (+ backward) of ``model`` on (x, y) with hooks on the Conv2d/Linear modules.

    Returns (layers as _LayerInfo in hook order, captures, loss). ``probes`` > 0 also computes the
    Hutchinson diagonal of the weights' Hessian on the same graph. ``safe`` hands a clone of each
    layer output to the rest of the model, so in-place ops after a layer cannot alter what we keep.
    """
    order: list[_LayerInfo] = []
    caps: list[_Capture] = []
    outs: list[torch.Tensor] = []
    versions: list[int] = []
    seen: set[int] = set()
    keep_out = "out" in needs or "ograd" in needs

    def hook(module, args, output):
        key = id(module)
        if key in seen:
            raise ConfigError(f"layer {candidates[key][0]!r} runs more than once per forward; shared layers are not supported")
        seen.add(key)
        name, kind = candidates[key]
        inp = args[0] if args else None
        order.append(_LayerInfo(name, kind, module,
                                tuple(inp.shape[1:]) if isinstance(inp, torch.Tensor) else (),
                                tuple(output.shape[1:])))
        cap = _Capture()
        if "act_in" in needs:
            cap.act_in = _spatial_mean(inp.detach(), kind).clone()
        if "act_out" in needs:
            cap.act_out = _spatial_mean(output.detach(), kind).clone()
        if keep_out:
            outs.append(output)
            versions.append(output._version)
            if "out" in needs:
                cap.out = output.detach()
        caps.append(cap)
        if safe and keep_out:
            return output.clone()
        return None

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in candidates]
    grad_w = "wgrad" in needs or probes > 0
    grad_o = "ograd" in needs
    try:
        with torch.set_grad_enabled(grad_w or grad_o):
            logits = model(x)
            if not isinstance(logits, torch.Tensor):
                raise _ModelError(f"model returned {type(logits).__name__}, expected a logits tensor")
            loss = F.cross_entropy(logits, y)
    finally:
        for h in handles:
            h.remove()
    if expected is not None and [l.module for l in order] != expected:
        raise _ModelError("the set or order of Conv2d/Linear layers changed between passes "
                          "(input-dependent control flow is not supported)")
    if keep_out and any(o._version != v for o, v in zip(outs, versions)):
        if safe:
            raise _ModelError("a layer output was modified in place even with cloned outputs")
        return None  # caller re-runs in safe mode
    loss_value = float(loss.detach())
    if not (grad_w or grad_o):
        return order, caps, loss_value
    weights = [l.module.weight for l in order] if grad_w else []
    inputs = weights + (outs if grad_o else [])
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, create_graph=probes > 0)
    nw = len(weights)
    for i, cap in enumerate(caps):
        if grad_w and "wgrad" in needs:
            g = grads[i]
            cap.wgrad = torch.zeros_like(weights[i]).detach() if g is None else g.detach()
        if grad_o:
            g = grads[nw + i]
            cap.ograd = torch.zeros_like(outs[i]).detach() if g is None else g.detach()
    if probes > 0:
        gen = torch.Generator().manual_seed(probe_seed)
        live = [i for i in range(nw) if grads[i] is not None and grads[i].requires_grad]
        diag = [torch.zeros_like(w, memory_format=torch.contiguous_format).detach() for w in weights]
        for k in range(probes):
            zs = [(torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1).to(w.device) for w in weights]
            if live:
                hz = torch.autograd.grad([grads[i] for i in live], weights, grad_outputs=[zs[i] for i in live],
                                         retain_graph=k < probes - 1, allow_unused=True)
                for i in range(nw):
                    if hz[i] is not None:
                        diag[i].addcmul_(zs[i], hz[i])
        for i, cap in enumerate(caps):
            cap.hdiag = diag[i].div_(probes)
    del grads, loss, logits
    return order, caps, loss_value


def block_hessian_traces(model, weights, x, y, probes: int, probe_seed: int) -> list[float]:
    """Hutchinson estimate of Tr(H_ll) of each layer's Hessian block: ``probes`` Rademacher probes z_l
    supported on that layer's weights only, mean of z_l . (H_ll z_l) from one exact block Hessian-vector
    product each (double backprop on one graph, accumulated in float64). One generator seeded with
    ``probe_seed`` draws all probes, layer by layer in forward order. A layer the loss does not depend
    on (or only linearly) gets 0. This is the estimator of the ``hawq_v2`` baseline, probe for probe."""
    with torch.enable_grad():
        logits = model(x)
        if not isinstance(logits, torch.Tensor):
            raise ConfigError(f"model returned {type(logits).__name__}, expected a logits tensor")
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    gen = torch.Generator().manual_seed(probe_seed)
    out = []
    for w, g in zip(weights, grads):
        if g is None or not g.requires_grad:
            out.append(0.0)
            continue
        total = 0.0
        for _ in range(probes):
            z = torch.randint(0, 2, w.shape, generator=gen).to(w.dtype).mul_(2).sub_(1).to(w.device)
            (hz,) = torch.autograd.grad(g, w, grad_outputs=z, retain_graph=True)
            total += float((z.double() * hz.double()).sum())
        out.append(total / probes)
    del grads, loss, logits
    return out


def _fd_hessian(run, xp, probes: int, probe_seed: int, method: str, base, layers, rel_step: float):
    """Hutchinson diagonal with H z from finite differences of weight gradients (see the docstring).

    ``run(xp, needs, probes)`` is one plain gradient pass (buffers restored after it). ``base`` is
    g(w) from the data pass when it can be reused (forward differences only). Same probes z as the
    exact path; the weights are perturbed in place and restored bit-identically from copies.
    Returns (layers, captures).
    """
    order = layers
    if method == "fd" and base is None:
        order, caps0, _ = run(xp, {"wgrad"}, 0)
        base = [c.wgrad for c in caps0]
    elif order is None:
        order, _, _ = run(xp, set(), 0)  # a no-grad forward, just to find the layers and their order
    weights = [l.module.weight for l in order]
    saved = [w.detach().clone() for w in weights]
    numel = sum(w.numel() for w in saved)
    rms = math.sqrt(sum(float(w.double().pow(2).sum()) for w in saved) / max(numel, 1))
    h = rel_step * rms if rms > 0 else rel_step
    gen = torch.Generator().manual_seed(probe_seed)
    diag = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in saved]

    def grads_at(zs, sign):
        with torch.no_grad():
            for w, s, z in zip(weights, saved, zs):
                w.copy_(s)
                w.add_(z, alpha=sign * h)
        _, caps, _ = run(xp, {"wgrad"}, 0)
        return [c.wgrad for c in caps]

    try:
        for _ in range(probes):
            zs = [(torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1).to(w.device) for w in weights]
            plus = grads_at(zs, 1.0)
            if method == "fd":
                hz = [(p - b).div_(h) for p, b in zip(plus, base)]
            else:
                minus = grads_at(zs, -1.0)
                hz = [(p - m).div_(2 * h) for p, m in zip(plus, minus)]
            for d, z, v in zip(diag, zs, hz):
                d.addcmul_(z, v)
    finally:
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)
    caps = []
    for d in diag:
        cap = _Capture()
        cap.hdiag = d.div_(probes)
        caps.append(cap)
    return order, caps


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------
def extract(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, bit_config=None, names=None,
            hutchinson_probes: int = 0, max_elements: int | None = None, seed: int = 0, float16: bool = False,
            quantizer: Callable[[torch.Tensor, int], torch.Tensor] = simple_quantize, noise_std: float = 0.01,
            threads: int | None = DEFAULT_THREADS, channels_last: bool = True,
            hessian_method: str = "exact") -> NetworkStats:
    """Per-layer primitive tensors of ``model`` on the batch (``inputs`` [N, ...], ``targets`` [N]).

    ``names``: primitive names (``PRIMITIVES``); None = all input-pass ones, plus hessian_* when
    ``hutchinson_probes`` > 0, plus weight_q/quant_error/bitwidth when ``bit_config`` is given
    (a list of ints, one per Conv2d/Linear in forward order, or a dict layer name -> bits, 1..32).
    ``quantizer(weight, bits) -> weight_q`` is pluggable. ``max_elements`` caps each stored tensor
    (aligned subsampling, see module docstring), ``float16`` stores floating tensors as float16.
    ``threads``: torch intra-op threads during extraction (None = leave the caller's setting;
    all computed values depend on it at the float32-rounding level). ``channels_last``: run the input passes on
    channels_last inputs (faster on CPU; part of the numerics). The model's train/eval mode is
    used as it is; weights, buffers and ``.grad`` are left as they were.
    """
    if isinstance(hutchinson_probes, bool) or not isinstance(hutchinson_probes, int) or hutchinson_probes < 0:
        raise ConfigError(f"hutchinson_probes must be an integer >= 0, got {hutchinson_probes!r}")
    if max_elements is not None and (isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1):
        raise ConfigError(f"max_elements must be None or an integer >= 1, got {max_elements!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be None or an integer >= 1, got {threads!r}")
    if hessian_method not in HESSIAN_METHODS:
        raise ConfigError(f"hessian_method must be one of {', '.join(map(repr, HESSIAN_METHODS))}, got {hessian_method!r}")
    validate_bit_values(bit_config)
    wanted = resolve_names(names, hutchinson_probes, bit_config)
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ConfigError("inputs and targets must be torch tensors")
    if targets.dim() != 1 or targets.shape[0] != inputs.shape[0]:
        raise ConfigError(f"targets must be [N] with N = inputs.shape[0] = {inputs.shape[0]}, got {tuple(targets.shape)}")

    with fixed_threads(threads):
        return _extract(model, inputs, targets, bit_config, wanted, hutchinson_probes, max_elements, int(seed),
                        bool(float16), quantizer, float(noise_std), threads, bool(channels_last), hessian_method,
                        FD_REL_STEP)


def _extract(model, inputs, targets, bit_config, wanted, probes, max_elements, seed, float16, quantizer,
             noise_std, threads, channels_last, hessian_method="exact", fd_step=None) -> NetworkStats:
    candidates = {}
    for name, module in model.named_modules():
        kind = _layer_kind(module)
        if kind is not None and id(module) not in candidates:
            candidates[id(module)] = (name, kind)
    if not candidates:
        raise ConfigError("the model has no nn.Conv2d or nn.Linear layer")
    param = next(iter(model.parameters()))
    device = param.device
    x = inputs.to(device)
    if x.is_floating_point():
        x = x.to(param.dtype)
    y = targets.to(device=device, dtype=torch.long)

    passes: dict[str, set] = {}
    for n in wanted:
        prim = REGISTRY[n]
        if prim.pass_ in INPUT_PASSES:
            passes.setdefault(prim.pass_, set()).update(prim.needs)
    for n in wanted:
        if REGISTRY[n].pass_ == HESSIAN:
            passes.setdefault(HESSIAN, set()).update(REGISTRY[n].needs)  # "hdiag" (joint) / "hblock" (per layer)
    if not passes:
        passes[DATA] = set()  # a no-grad forward, just to find the layers and their order

    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modules = [m for m in model.modules() if id(m) in candidates]
    grad_flags = [(m.weight, m.weight.requires_grad) for m in modules]
    for w, _ in grad_flags:
        w.requires_grad_(True)

    layers: list[_LayerInfo] | None = None
    captures: dict[str, list[_Capture]] = {}
    loss_data = None

    def run(xp, needs, probes_here):
        expected = None if layers is None else [l.module for l in layers]
        for safe in (False, True):
            try:
                result = _run_pass(model, candidates, xp, y, frozenset(needs), probes_here,
                                   derive_seed("hutchinson", seed), expected, safe=safe)
            except _ModelError as exc:
                raise ConfigError(str(exc)) from None
            finally:
                for b, saved in buffers:
                    b.data.copy_(saved)
            if result is not None:
                return result
        raise AssertionError("unreachable")  # safe mode either returns or raises

    try:
        for pass_ in PASS_ORDER:
            if pass_ not in passes:
                continue
            if pass_ in (DATA, HESSIAN):
                xp = x
            elif pass_ == NOISE:
                xp = torch.randn(x.shape, generator=_generator("noise", seed), dtype=x.dtype).to(device)
            else:
                xp = x + noise_std * torch.randn(x.shape, generator=_generator("perturb", seed), dtype=x.dtype).to(device)
            joint = pass_ != HESSIAN or "hdiag" in passes[HESSIAN]  # the joint-probe Hessian (or an input pass)
            fd = pass_ == HESSIAN and hessian_method != "exact"
            if channels_last and (pass_ != HESSIAN or fd) and xp.dim() == 4:
                xp = xp.contiguous(memory_format=torch.channels_last)
            if not joint:  # only the per-layer block traces: a no-grad forward finds the layers if needed
                order = layers if layers is not None else run(x, set(), 0)[0]
                caps, loss = [_Capture() for _ in order], None
            elif fd:
                base = None
                if hessian_method == "fd" and DATA in captures and "wgrad" in passes[DATA]:
                    base = [c.wgrad for c in captures[DATA]]  # same input, layout and weights: reuse g(w)
                order, caps = _fd_hessian(run, xp, probes, derive_seed("hutchinson", seed), hessian_method,
                                          base, layers, fd_step)
                loss = None
            else:
                order, caps, loss = run(xp, set() if pass_ == HESSIAN else passes[pass_], probes if pass_ == HESSIAN else 0)
            if pass_ == HESSIAN and "hblock" in passes[HESSIAN]:
                try:  # exact block Hessian-vector products on the contiguous batch, like the joint estimate
                    traces = block_hessian_traces(model, [l.module.weight for l in order], x, y, probes,
                                           derive_seed(BLOCK_PROBE_TAG, seed))
                finally:
                    for b, saved in buffers:
                        b.data.copy_(saved)
                for cap, value in zip(caps, traces):
                    cap.hblock = value
            if layers is None:
                layers = order
            captures[pass_] = caps
            if pass_ == DATA:
                loss_data = loss
    finally:
        for w, flag in grad_flags:
            w.requires_grad_(flag)

    layer_names = [l.name for l in layers]
    bits = _bits_per_layer(bit_config, layer_names)

    index_cache: dict[tuple[int, int], torch.Tensor] = {}
    shared: dict = {}
    out_layers = []
    for li, info in enumerate(layers):
        module = info.module
        weight = module.weight.detach().clone()
        ctx = _LayerCtx(li, info.name, info.kind, module, weight, bits[li], quantizer, model=model,
                        layer_names=tuple(layer_names), shared=shared)
        tensors = {}
        for n in wanted:
            prim = REGISTRY[n]
            caps = captures.get(prim.pass_)
            cap = None if caps is None else caps[li]
            t = prim.fn(ctx, cap)
            if max_elements is not None and t.numel() > max_elements:
                key = (li, t.numel())
                if key not in index_cache:
                    index_cache[key] = subsample_indices(seed, li, t.numel(), max_elements).to(t.device)
                t = t.reshape(-1)[index_cache[key]]
            if float16 and t.is_floating_point():
                t = t.to(torch.float16)
            tensors[n] = _owned(t)
        bias = getattr(module, "bias", None)
        params = module.weight.numel() + (bias.numel() if isinstance(bias, torch.Tensor) else 0)
        out_layers.append(LayerStats(
            name=info.name, kind=info.kind, weight_shape=tuple(module.weight.shape),
            input_shape=info.input_shape, output_shape=info.output_shape, params=int(params),
            flops=int(_flops(info, module)), bits=bits[li], tensors=tensors,
        ))
    captures.clear()

    meta = {
        "seed": seed, "batch_size": int(inputs.shape[0]), "input_shape": list(inputs.shape[1:]),
        "names": list(wanted), "hutchinson_probes": int(probes), "max_elements": max_elements,
        "float16": float16, "noise_std": noise_std, "threads": threads, "channels_last": channels_last,
        "hessian_method": hessian_method if probes > 0 else None, "training": bool(model.training),
        "bit_config": None if bit_config is None else [int(b) for b in bits],
        "quantizer": _quantizer_id(quantizer) if bit_config is not None else None,
        "loss": loss_data, "code_version": CODE_VERSION,
    }
    return NetworkStats(layers=out_layers, meta=meta)


def _flops(info: _LayerInfo, module: nn.Module) -> int:
    if info.kind == "conv":
        c_out = module.out_channels
        c_in = module.in_channels // module.groups
        kh, kw = module.kernel_size
        spatial = math.prod(info.output_shape[1:]) if len(info.output_shape) > 1 else 1
        return spatial * c_out * c_in * kh * kw
    positions = math.prod(info.output_shape[:-1]) if len(info.output_shape) > 1 else 1
    return positions * module.in_features * module.out_features
