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
* ``virtual_grad`` (EMQ, only on request): its own pass, like an input pass but on ``torch.ones`` of the
  batch's shape with the objective sum(logits) instead of the loss (labels unused); one gradient per layer in
  forward order (not EMQ's reversed list: the proxy language pairs a layer's tensors with each other), fresh
  (EMQ's ``backward`` without ``zero_grad`` accumulates across calls), signs kept (no SynFlow ``abs``).
* Layout: with ``channels_last=True`` (default) 4-d inputs of the data/noise/perturb passes are
  converted to channels_last, which mkldnn convolutions then propagate; the model's weights are
  not touched. Measured on NB201 (batch 64, 1 thread, 8 architectures): cheap pass 0.39 vs 0.71
  CPU-s, eznas passes 0.84 vs 1.40 CPU-s. The price is float32 accuracy of weight gradients
  (convs before train-mode BN sum 65k cancelling terms): median per-layer relative error vs a
  float64 reference 1.0% with channels_last vs 0.18% contiguous (activations ~1e-5 either way).
  Pass ``channels_last=False`` when that matters; it is part of the cache key.
* Richer statistics (only on request, ``default=False``; formulas, shapes and papers in
  :mod:`primitives.richkernels`): ``act_sign`` / ``hamming_kernel`` (NWOT), ``grad_absmean`` /
  ``grad_std`` (ZiCo, 2 mini-batches), ``input_jacobian`` (jacob_cov; per network, on every layer),
  ``graph_*`` (autograd-graph depth, paths, residual branch, longest/shortest input-output path).
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
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from mqbench.errors import ConfigError
from mqbench.kernels import layer_macs_of
from mqbench.kernels import layer_size_mb  # noqa: F401  (re-exported: the tables' per-layer size)
from primitives import kernels, passes
from primitives import richkernels as rk
from primitives.kernels import (  # noqa: F401  (re-exported)
    BLOCK_PROBE_TAG, DATA, FD_REL_STEP, GRAD_PASSES, HESSIAN, INPUT_PASSES, NOISE, PASS_ORDER, PERTURB, QUANT, STATIC,
    VIRTUAL, Capture,
    ExtractionError, LayerCtx, LayerInfo, block_param_counts, derive_seed, fixed_threads, generator,
    layer_candidates, layer_contexts, owned, p_act_grad, p_act_in, p_act_out, p_act_x_grad, p_bitwidth, p_fisher,
    p_hessian_block_trace, p_hessian_diag, p_hessian_trace, p_params, p_quant_error, p_size_mb, p_weight,
    p_weight_grad, p_weight_q, prepare_batch)

CODE_VERSION = "primitives-1"
DEFAULT_THREADS = 1
STATE_FORMAT = "evoproxy.primitives/1"

HESSIAN_METHODS = ("exact", "fd", "fd_central")


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
@dataclass(frozen=True)
class Primitive:
    name: str
    description: str
    pass_: str
    needs: frozenset  # what its pass records (Capture.values keys): act_in, act_out, out, wgrad, ograd; hdiag, ...
    fn: Callable  # a kernel function: fn(Capture) for a pass's primitive, fn(LayerCtx) for a static/quant one
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


primitive("weight", "W: the layer's weight tensor", STATIC)(p_weight)
primitive("params", "the layer's trainable parameter count with its block's (weight, bias, the BatchNorm "
                    "registered after it); sums to the network's count over layers (0-d)", STATIC)(p_params)

_WHERE = {DATA: "on the batch", NOISE: "on N(0,1) noise inputs of the batch's shape",
          PERTURB: "on the batch plus noise_std * N(0,1)"}
_SUFFIX = {DATA: "", NOISE: "@noise", PERTURB: "@perturb"}

for _pass in INPUT_PASSES:
    _s, _w = _SUFFIX[_pass], _WHERE[_pass]
    primitive(f"weight_grad{_s}", f"G: gradient of the mean cross-entropy w.r.t. W, {_w}", _pass, ("wgrad",))(p_weight_grad)
    if _pass == DATA:
        primitive("act_in", "layer input activations, spatial mean per sample: [N, C_in]", DATA, ("act_in",))(p_act_in)
    primitive(f"act_out{_s}", f"layer output activations, spatial mean per sample: [N, C_out], {_w}", _pass, ("act_out",))(p_act_out)
    primitive(f"act_grad{_s}", f"gradient of the loss w.r.t. the layer output, spatial mean per sample: [N, C_out], {_w}",
              _pass, ("ograd",))(p_act_grad)
    if _pass == DATA:
        primitive("fisher", "Fisher (Turner et al. 2020): 0.5 * sum_n (sum_spatial a * dL/da)^2 per output channel: [C_out]",
                  DATA, ("out", "ograd"))(p_fisher)
        primitive("act_x_grad", "a * dL/da on the layer output, mean over samples and spatial positions: [C_out]",
                  DATA, ("out", "ograd"))(p_act_x_grad)

primitive("hessian_diag", "H: Hutchinson estimate of the diagonal of the loss Hessian w.r.t. W (needs hutchinson_probes > 0)",
          HESSIAN, ("hdiag",))(p_hessian_diag)
primitive("hessian_trace", "Hutchinson trace of the layer's Hessian block: sum of hessian_diag (0-d tensor)", HESSIAN,
          ("hdiag",))(p_hessian_trace)
primitive("hessian_block_trace", "Tr(H_l) by Hutchinson with probes on this layer's weights only (HAWQ-V2; "
                                 "one Hessian-vector product per layer and probe; 0-d tensor)",
          HESSIAN, ("hblock",), default=False)(p_hessian_block_trace)
primitive("weight_q", "W_q: the weight quantized to the layer's bit-width (needs bit_config)", QUANT)(p_weight_q)
primitive("quant_error", "W - W_q: the quantization error of the weight (needs bit_config)", QUANT)(p_quant_error)
primitive("bitwidth", "the layer's weight bit-width as a 0-d int tensor (needs bit_config)", QUANT)(p_bitwidth)
primitive("size_mb", "the layer's storage in MB at its bit-width: weights at b bits, bias at 32 bits (0-d float64; "
                     "needs bit_config)", QUANT)(p_size_mb)

# ---- EMQ (issue 15): the virtual gradient of EMQ's published proxy (see docs/emq_published_proxy.md)
primitive("virtual_grad", "Gv: gradient w.r.t. W of the sum of the logits for an all-ones input of the batch's shape "
                          "(EMQ's virtual_grad; no loss, no labels; the model's mode as given)",
          VIRTUAL, ("wgrad",), default=False)(p_weight_grad)
# ---- end EMQ


# ---- richer statistics (issue 14; formulas and papers in primitives/richkernels.py), only on request
primitive("act_sign", "NWOT codes (Mellor et al. 2021): 1[x > 0] of the layer input, spatial mean per sample "
                      "(fraction of on units per channel): [N, C_in]", DATA, ("sign",), default=False)(rk.p_act_sign)
primitive("hamming_kernel", "NWOT kernel: K_ij = units where the input codes 1[x > 0] of samples i, j agree "
                            "(N_A - Hamming distance, full resolution): [N, N]", DATA, ("hkernel",), default=False)(rk.p_hamming_kernel)
primitive("grad_absmean", "ZiCo (Li et al. 2023): mean over 2 mini-batches of |dL_i/dW|: shape of W", DATA, ("zico",),
          default=False)(rk.p_grad_absmean)
primitive("grad_std", "ZiCo (Li et al. 2023): std (population) over 2 mini-batches of dL_i/dW: shape of W", DATA,
          ("zico",), default=False)(rk.p_grad_std)
primitive("input_jacobian", "jacob_cov (Mellor et al.): d(sum of logits)/dx per sample, flattened: [N, D]; the same "
                            "network tensor on every layer", DATA, ("jacobian",), default=False)(rk.p_input_jacobian)
for _key, _what in (("depth", "most Conv/Linear layers on an input path to the layer, itself included (0: unreached)"),
                    ("paths", "number of input-to-logits paths through the layer"),
                    ("residual", "1 when some input-to-logits path bypasses the layer (residual/parallel branch), else 0"),
                    ("io_paths", "number of input-to-logits paths of the network (0: disconnected; on every layer)"),
                    ("longest", "most Conv/Linear layers on an input-to-logits path (0 if none; on every layer)"),
                    ("shortest", "fewest Conv/Linear layers on an input-to-logits path (0 if none; on every layer)")):
    primitive(f"graph_{_key}", f"autograd-graph feature: {_what} (0-d float64)", DATA, ("graph",),
              default=False)(getattr(rk, f"p_graph_{_key}"))


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
        raise ConfigError(f"unknown statistic name(s) {', '.join(map(repr, bad))}; valid: {', '.join(REGISTRY)}")
    wanted = set(names)
    if hutchinson_probes <= 0 and any(REGISTRY[n].pass_ == HESSIAN for n in wanted):
        raise ConfigError("hessian_diag/hessian_trace/hessian_block_trace need hutchinson_probes > 0")
    if bit_config is None and any(REGISTRY[n].pass_ == QUANT for n in wanted):
        raise ConfigError("weight_q/quant_error/bitwidth need a bit_config")
    return [n for n in REGISTRY if n in wanted]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def subsample_indices(seed: int, layer_index: int, numel: int, max_elements: int) -> torch.Tensor:
    """The sorted flat indices kept when a tensor of ``numel`` elements of layer ``layer_index``
    is capped at ``max_elements`` (int64 [max_elements])."""
    gen = generator("subsample", int(seed), int(layer_index), int(numel))
    return torch.randperm(numel, generator=gen)[:max_elements].sort().values


def _quantizer_id(quantizer) -> str:
    if quantizer is simple_quantize:
        return "simple_quantize"
    mod = getattr(quantizer, "__module__", None) or type(quantizer).__module__
    qual = getattr(quantizer, "__qualname__", None) or type(quantizer).__qualname__
    return f"{mod}.{qual}"


def validate_bit_values(bit_config) -> None:
    """Type/range checks of a bit configuration that do not need the layer list (one-line ConfigError)."""
    with _user_errors():
        kernels.validate_bit_values(bit_config)


@contextlib.contextmanager
def _user_errors():
    """Turn the kernels' ExtractionError (a bad model, batch or bit configuration) into a ConfigError."""
    try:
        yield
    except ExtractionError as exc:
        raise ConfigError(str(exc)) from None


def block_hessian_traces(model, weights, x, y, probes: int, probe_seed: int) -> list[float]:
    """:func:`primitives.passes.block_hessian_traces` (HAWQ-V2's estimator), ConfigError for a bad model."""
    with _user_errors():
        return passes.block_hessian_traces(model, weights, x, y, probes, probe_seed)


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


def compute(prim: Primitive, ctx: LayerCtx, captures: Mapping) -> torch.Tensor:
    """Primitive ``prim`` of one layer: its function on the layer (static, quantization primitives) or on what
    its pass recorded for the layer."""
    return prim.fn(ctx) if prim.pass_ in (STATIC, QUANT) else prim.fn(captures[prim.pass_][ctx.index])


def pass_needs(names) -> dict[str, set]:
    """{pass: what it must record} for the primitives ``names`` ({} when only static/quantization ones)."""
    passes: dict[str, set] = {}
    for n in names:
        prim = REGISTRY[n]
        if prim.pass_ in GRAD_PASSES:
            passes.setdefault(prim.pass_, set()).update(prim.needs)
    for n in names:
        if REGISTRY[n].pass_ == HESSIAN:
            passes.setdefault(HESSIAN, set()).update(REGISTRY[n].needs)  # "hdiag" (joint) / "hblock" (per layer)
    return passes


def _extract(model, inputs, targets, bit_config, wanted, probes, max_elements, seed, float16, quantizer,
             noise_std, threads, channels_last, hessian_method="exact", fd_step=None) -> NetworkStats:
    with _user_errors():
        candidates = layer_candidates(model)
        x, y = prepare_batch(model, inputs, targets)
        layers, captures, loss_data = passes.run_passes(model, candidates, x, y, pass_needs(wanted), probes, seed,
                                                        noise_std, channels_last, hessian_method, fd_step)
        bits = kernels.bits_per_layer(bit_config, [l.name for l in layers])

    index_cache: dict[tuple[int, int], torch.Tensor] = {}
    out_layers = []
    for ctx, info in zip(layer_contexts(model, layers, bits, quantizer), layers):
        li, module = ctx.index, info.module
        tensors = {}
        for n in wanted:
            prim = REGISTRY[n]
            t = compute(prim, ctx, captures)
            if max_elements is not None and t.numel() > max_elements:
                key = (li, t.numel())
                if key not in index_cache:
                    index_cache[key] = subsample_indices(seed, li, t.numel(), max_elements).to(t.device)
                t = t.reshape(-1)[index_cache[key]]
            if float16 and t.is_floating_point():
                t = t.to(torch.float16)
            tensors[n] = owned(t)
        bias = getattr(module, "bias", None)
        params = module.weight.numel() + (bias.numel() if isinstance(bias, torch.Tensor) else 0)
        out_layers.append(LayerStats(
            name=info.name, kind=info.kind, weight_shape=tuple(module.weight.shape),
            input_shape=info.input_shape, output_shape=info.output_shape, params=int(params),
            flops=layer_macs_of(module, info.output_shape), bits=bits[li], tensors=tensors,
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
