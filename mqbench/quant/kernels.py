"""Numeric kernels of the MQ benchmarks: the PTQ weight quantizer and the size / BOPs formulas.

Torch, math and the standard library only: ``evoproxy export`` copies this module's source into
standalone proxy modules, and ``mqbench.quant.fakequant``, ``primitives`` and the MQ baselines import these
functions, so the tables, the statistics and exported proxies share one implementation.
"""
from __future__ import annotations

import math

import torch

CLIP_GRID = torch.linspace(0.30, 1.0, 36)  # clipping ratios searched per channel (weights) / per tensor (activations)


def weight_levels(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _clip_search(weight: torch.Tensor, bits: int, mse_clip: bool):
    """Candidate fake-quantized weights [R, C, K], their scales [R, C] and the MSE-best candidate per channel [C]."""
    qmin, qmax = weight_levels(bits)
    w = weight.detach().reshape(weight.shape[0], -1)
    wmax = w.abs().amax(dim=1).clamp_min(1e-12)  # [C]
    ratios = CLIP_GRID.to(w) if mse_clip else torch.ones(1, dtype=w.dtype)
    scales = (ratios[:, None] * wmax[None, :]) / qmax if qmax > 0 else ratios[:, None] * wmax[None, :]
    q = torch.clamp(torch.round(w[None] / scales[..., None]), qmin, qmax) * scales[..., None]  # [R, C, K]
    err = (q - w[None]).pow(2).sum(dim=2)  # [R, C]
    return q, scales, err.argmin(dim=0)


def quantize_weight(weight: torch.Tensor, bits: int, mse_clip: bool = True) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization of ``weight`` at ``bits`` bits."""
    if bits >= 32:
        return weight.clone()
    q, _, best = _clip_search(weight, bits, mse_clip)
    return q[best, torch.arange(weight.shape[0])].reshape(weight.shape)


def weight_scale(weight: torch.Tensor, bits: int, mse_clip: bool = True) -> torch.Tensor:
    """The per-output-channel scale [C] that :func:`quantize_weight` chooses (learned rounding keeps this grid)."""
    _, scales, best = _clip_search(weight, bits, mse_clip)
    return scales[best, torch.arange(weight.shape[0])]


def storage_bits(weight_numel, bias_numel, bits):
    """Bits one layer stores: its weights at ``bits``, its biases at 32 bit."""
    return weight_numel * bits + bias_numel * 32


def bits_to_mb(total_bits) -> float:
    """Bits -> MB (2^20 bytes)."""
    return total_bits / 8 / 2 ** 20


def layer_size_mb(weight_numel: int, bias_numel: int, bits: int) -> float:
    """Storage of one layer in MB (2^20 bytes): weights at ``bits``, biases at 32 bit (the MQ tables' size_mb per layer)."""
    return bits_to_mb(storage_bits(int(weight_numel), int(bias_numel), int(bits)))


def model_size_mb(weight_numels: list[int], bias_numels: list[int], bits: list[int]) -> float:
    """Weights at their bit-widths plus 32-bit biases, in MB (2^20 bytes): the MQ tables' size_mb."""
    return bits_to_mb(sum(storage_bits(w, bias, b) for w, bias, b in zip(weight_numels, bias_numels, bits)))


def layer_macs_of(module, output_shape) -> int:
    """Multiply-accumulates per image of a Conv2d (``output_shape`` [C_out, *spatial]) or a Linear
    (``output_shape`` [..., F]: every leading position counts)."""
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        spatial = math.prod(output_shape[1:]) if len(output_shape) > 1 else 1
        return int(spatial * module.out_channels * (module.in_channels // module.groups) * kh * kw)
    positions = math.prod(output_shape[:-1]) if len(output_shape) > 1 else 1
    return int(positions * module.in_features * module.out_features)


def bops(macs: list[int], bits: list[int], act_bits: int = 8) -> float:
    """Bit operations: sum over layers of MACs x weight bits x activation bits (per image)."""
    return float(sum(m * b * act_bits for m, b in zip(macs, bits)))
