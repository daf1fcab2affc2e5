"""Fake quantization of Conv2d/Linear layers.

- Weights: per output channel, symmetric, signed integers in [-2^(b-1), 2^(b-1)-1], with the
  clipping range chosen per channel by a grid search that minimises the mean squared error
  (``quantize_weight``, defined with the size / BOPs formulas in :mod:`mqbench.quant.kernels`).
- Activations: the input of every quantized layer, per tensor, 8 bit by default; unsigned when the
  calibration inputs are non-negative (after ReLU), signed otherwise; clipping by MSE search.

A *bit configuration* gives one weight bit-width per quantizable layer in forward order. Layers
listed in ``fixed`` (by default the first conv and the last linear) stay at ``fixed_bits``; the
others are the *searchable* layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from mqbench.errors import ConfigError
from mqbench.quant.kernels import CLIP_GRID, bops, layer_macs_of, model_size_mb, quantize_weight, weight_levels  # noqa: F401  (re-exported)

ALLOWED_WEIGHT_BITS = tuple(range(2, 9))


def activation_scale(x: torch.Tensor, bits: int, max_elements: int = 1 << 16, seed: int = 0) -> tuple[float, int, int]:
    """(scale, qmin, qmax) for per-tensor fake quantization of activations like ``x`` (MSE-searched clip)."""
    flat = x.detach().reshape(-1).float()
    if flat.numel() > max_elements:
        gen = torch.Generator().manual_seed(seed)
        flat = flat[torch.randint(flat.numel(), (max_elements,), generator=gen)]
    unsigned = bool(flat.min() >= 0)
    qmin, qmax = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    top = flat.abs().max().clamp_min(1e-8)
    best_scale, best_err = None, None
    for ratio in CLIP_GRID.tolist():
        scale = ratio * top / qmax
        err = (torch.clamp(torch.round(flat / scale), qmin, qmax) * scale - flat).pow(2).mean()
        if best_err is None or err < best_err:
            best_scale, best_err = scale, err
    return float(best_scale), qmin, qmax


class QuantLayer(nn.Module):
    """Wraps a Conv2d/Linear: fake-quantized input (per tensor) and fake-quantized weight."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, weight_bits: int, act_bits: int, mse_clip: bool = True):
        super().__init__()
        self.layer = layer
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.fp_weight = layer.weight.detach().clone()
        with torch.no_grad():
            layer.weight.copy_(quantize_weight(self.fp_weight, weight_bits, mse_clip))
        self.act_quant = None  # (scale, qmin, qmax) once calibrated
        self.calibrating = False
        self.calibration_inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.calibration_inputs.append(x.detach())
        elif self.act_quant is not None:
            scale, qmin, qmax = self.act_quant
            # div/round/clamp/mul: the same rounding as torch.fake_quantize_per_tensor_affine
            # (half to even), about 10x faster on CPU in inference.
            x = x.div(scale).round_().clamp_(qmin, qmax).mul_(scale)
        return self.layer(x)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d/Linear in registration order (forward order for our networks)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@dataclass(frozen=True)
class BitLayout:
    """Which layers of a model are searchable and what the fixed ones get."""

    layer_names: tuple[str, ...]
    fixed: tuple[int, ...]  # indices into layer_names that stay at fixed_bits
    fixed_bits: int = 8
    act_bits: int = 8
    allowed: tuple[int, ...] = (2, 3, 4)

    @property
    def searchable(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.layer_names)) if i not in self.fixed)

    def full_config(self, searchable_bits) -> list[int]:
        """Weight bits for every quantizable layer, from the bits of the searchable ones (validated)."""
        bits = list(searchable_bits)
        want = len(self.searchable)
        if len(bits) != want:
            raise ConfigError(f"bit configuration has {len(bits)} entries, expected {want} (one per searchable layer)")
        for b in bits:
            if not isinstance(b, int) or isinstance(b, bool) or b not in ALLOWED_WEIGHT_BITS:
                raise ConfigError(f"bit-width {b!r} not allowed; weight bits must be integers in {ALLOWED_WEIGHT_BITS[0]}..{ALLOWED_WEIGHT_BITS[-1]}")
        out = [self.fixed_bits] * len(self.layer_names)
        for i, b in zip(self.searchable, bits):
            out[i] = b
        return out


def default_bit_layout(model: nn.Module, keep_first_last: bool = True, **kw) -> BitLayout:
    names = tuple(n for n, _ in quantizable_layers(model))
    fixed = (0, len(names) - 1) if keep_first_last else ()
    return BitLayout(names, fixed, **kw)


BitSpec, default_bit_spec = BitLayout, default_bit_layout  # deprecated names


def quantize_model(model: nn.Module, full_bits: list[int], act_bits: int = 8, mse_clip: bool = True) -> nn.Module:
    """Replace each Conv2d/Linear of ``model`` (in place) with a QuantLayer at the given weight bits."""
    layers = quantizable_layers(model)
    if len(full_bits) != len(layers):
        raise ConfigError(f"bit configuration has {len(full_bits)} entries for {len(layers)} quantizable layers")
    for (name, layer), bits in zip(layers, full_bits):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLayer(layer, bits, act_bits, mse_clip))
    return model


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    return [m for m in model.modules() if isinstance(m, QuantLayer)]


def layer_macs(model: nn.Module, image_shape=(3, 32, 32)) -> list[int]:
    """Multiply-accumulates per image of each Conv2d/Linear, in quantizable_layers order."""
    macs: dict[str, int] = {}
    hooks = []
    for name, layer in quantizable_layers(model):
        def hook(mod, inp, out, name=name):
            macs[name] = layer_macs_of(mod, tuple(out.shape[1:]))
        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *image_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return [macs[n] for n, _ in quantizable_layers(model)]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a (quantized) conv into it, in place.

    Exact in eval mode up to float rounding: conv(x, W) then BN equals conv(x, W * g/s) + (b - m g/s)
    (a rounding difference can flip a rare rounding decision of the next 8-bit activation quantizer,
    which moves top-1 by at most a few hundredths of a point on 10k images). Used only for
    fast evaluation after BN statistics are final. Works on modules named ``convN``/``bnN`` pairs.
    """
    for module in model.modules():
        for child_name, child in list(module.named_children()):
            if not child_name.startswith("bn") or not isinstance(child, nn.BatchNorm2d):
                continue
            conv_name = "conv" + child_name[2:]
            conv = getattr(module, conv_name, None)
            target = conv.layer if isinstance(conv, QuantLayer) else conv
            if not isinstance(target, nn.Conv2d):
                continue
            factor = child.weight / torch.sqrt(child.running_var + child.eps)
            with torch.no_grad():
                target.weight.mul_(factor.reshape(-1, 1, 1, 1))
                bias = target.bias if target.bias is not None else torch.zeros_like(child.running_mean)
                new_bias = (bias - child.running_mean) * factor + child.bias
                target.bias = nn.Parameter(new_bias.detach())
            setattr(module, child_name, nn.Identity())
    return model


__all__ = [
    "ALLOWED_WEIGHT_BITS", "BitLayout", "QuantLayer", "activation_scale", "bops", "default_bit_layout",
    "fold_batchnorm", "layer_macs", "model_size_mb", "quant_layers", "quantizable_layers",
    "quantize_model", "quantize_weight",
]
