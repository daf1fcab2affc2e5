"""AdaRound learned rounding with block-wise output reconstruction (the ``--ptq adaround`` method).

Written from the formulas of Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization" (ICML 2020) and Li et al., "BRECQ: Pushing the Limit of Post-Training Quantization by
Block Reconstruction" (ICLR 2021):

* The weight grid is the RTN pipeline's: per output channel, symmetric, scale ``s`` from the same
  MSE clip search as :func:`mqbench.quant.kernels.quantize_weight` (:func:`mqbench.quant.kernels.weight_scale` is its chosen scale),
  so AdaRound only decides, per weight, between ``floor(w/s)`` and ``floor(w/s) + 1``.
* Soft weight ``s * clamp(floor(w/s) + h(V), qmin, qmax)`` with the rectified sigmoid
  ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, zeta = 1.1, gamma = -0.1; ``V`` starts
  where ``h(V)`` equals the fractional part of ``w/s`` (the soft weight starts at the FP weight).
* Loss per unit: reconstruction error (squared error summed over channels, averaged over batch and
  positions, as BRECQ's) + ``reg`` * sum_i (1 - |2 h(V_i) - 1|^beta), the regulariser off for the
  first ``warmup`` fraction of the iterations, then beta annealed linearly from 20 to 2.
  Adam on the ``V`` of the unit's layers; afterwards each weight is rounded up where ``h(V) >= 0.5``.
* Units, in forward order (BRECQ's blocks): each residual block (the outermost module that is an
  element of an ``nn.Sequential``, e.g. ``layer2.1``) holds all its quantized layers; a quantized
  layer outside such a block (the stem conv, the classifier) is a unit of its own. The target is the
  FP model's output of the unit on the calibration images; the unit's input comes from the quantized
  model, whose preceding units are already rounded. Activations stay in float during reconstruction
  (they are calibrated afterwards by the RTN pipeline), BatchNorm in eval mode with its FP statistics.

Deterministic on CPU for a given seed and torch thread count (``torch.manual_seed`` draws the batches).
BRECQ ran 20,000 iterations per block on a GPU; the default here is far fewer (see
:class:`mqbench.quant.ptq.PTQSettings`) so that one ResNet-20 configuration takes about a minute on one core.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import functional_call

from mqbench.errors import ConfigError, DataError
from mqbench.quant.kernels import weight_levels, weight_scale
from mqbench.quant.fakequant import QuantLayer

ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END = 20.0, 2.0


@dataclass(frozen=True)
class AdaRoundConfig:
    iters: int = 200
    batch: int = 32
    lr: float = 5e-2
    reg: float = 0.01
    warmup: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.iters < 1 or self.batch < 1:
            raise ConfigError(f"AdaRound needs iters >= 1 and batch >= 1, got iters={self.iters}, batch={self.batch}")
        if not 0.0 <= self.warmup < 1.0 or self.lr <= 0 or self.reg < 0:
            raise ConfigError(f"AdaRound needs 0 <= warmup < 1, lr > 0, reg >= 0; got warmup={self.warmup}, lr={self.lr}, reg={self.reg}")


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def beta_at(step: int, iters: int, warmup: float) -> float | None:
    """Annealed beta of the rounding regulariser at ``step`` (None during the warm-up: no regulariser)."""
    start = int(warmup * iters)
    if step < start:
        return None
    rel = (step - start) / max(1, iters - start)
    return BETA_END + (BETA_START - BETA_END) * max(0.0, 1.0 - rel)


class RoundingVariable:
    """The learned rounding of one QuantLayer's weight: grid (scale, floor), V, soft and hard weights."""

    def __init__(self, layer: QuantLayer, mse_clip: bool = True):
        self.layer = layer
        self.qmin, self.qmax = weight_levels(layer.weight_bits)
        w = layer.fp_weight
        shape = (-1,) + (1,) * (w.dim() - 1)
        self.scale = weight_scale(w, layer.weight_bits, mse_clip).reshape(shape)
        scaled = w / self.scale
        self.floor = torch.floor(scaled)
        rest = (scaled - self.floor).clamp(1e-6, 1 - 1e-6)
        # h(V) = rest  <=>  sigmoid(V) = (rest - gamma) / (zeta - gamma)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def soft_weight(self) -> torch.Tensor:
        return self.scale * torch.clamp(self.floor + rectified_sigmoid(self.v), self.qmin, self.qmax)

    def hard_weight(self) -> torch.Tensor:
        with torch.no_grad():
            up = (self.v >= 0).to(self.floor.dtype)  # h(V) >= 0.5 exactly where V >= 0
            return self.scale * torch.clamp(self.floor + up, self.qmin, self.qmax)

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * rectified_sigmoid(self.v) - 1).abs().pow(beta)).sum()


def reconstruction_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the reconstruction units of a quantized model, in forward order (module docstring)."""
    owners: dict[str, nn.Module] = {}
    modules = dict(model.named_modules())
    for name, module in model.named_modules():
        if not isinstance(module, QuantLayer):
            continue
        parts = name.split(".")
        unit = name
        for depth in range(1, len(parts)):
            if isinstance(modules[".".join(parts[:depth - 1])], nn.Sequential):
                unit = ".".join(parts[:depth])
                break
        owners.setdefault(unit, modules[unit])
    return list(owners.items())


class _Stop(Exception):
    pass


def _unit_inputs(model: nn.Module, module: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    """The input of ``module`` inside ``model`` on ``images`` (each forward stops there)."""
    got: list[torch.Tensor] = []

    def hook(mod, args):
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise ConfigError(f"AdaRound units must take one tensor input; {type(mod).__name__} takes {len(args)}")
        got.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch):
                try:
                    model(images[start:start + batch])
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.cat(got)


def _unit_outputs(model: nn.Module, modules: dict[str, nn.Module], images: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """The output of every module of ``modules`` (name -> module inside ``model``) on ``images``, in one pass."""
    got: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: got[name].append(out.detach()))
               for name, m in modules.items()]
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch):
                model(images[start:start + batch])
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts) for name, parts in got.items()}


def _recon_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the channel dimension, averaged over the rest (BRECQ's lp_loss, p=2)."""
    return (pred - target).pow(2).sum(1).mean()


def reconstruct_unit(unit: nn.Module, inputs: torch.Tensor, target: torch.Tensor, cfg: AdaRoundConfig,
                     mse_clip: bool = True, generator: torch.Generator | None = None) -> dict:
    """Learn the rounding of every QuantLayer in ``unit`` to reproduce ``target`` from ``inputs``; fix it in place.

    Returns {"layers", "rtn_mse", "soft_mse", "hard_mse", "soft_fraction"} measured on all of ``inputs``
    (mse: :func:`_recon_error`; soft_fraction: share of h(V) not yet 0 or 1 before hard rounding)."""
    layers = [m for m in unit.modules() if isinstance(m, QuantLayer)]
    if not layers:
        raise ConfigError(f"AdaRound unit {type(unit).__name__} holds no quantized layer")
    names = {id(m): n for n, m in unit.named_modules()}
    rvars = [RoundingVariable(layer, mse_clip) for layer in layers]
    keys = [(f"{names[id(layer)]}.layer.weight" if names[id(layer)] else "layer.weight") for layer in layers]

    def forward(x, weights):
        return functional_call(unit, dict(zip(keys, weights)), (x,))

    def full_error(weights) -> float:
        with torch.no_grad():
            return float(sum(_recon_error(forward(inputs[i:i + 256], weights), target[i:i + 256]) * min(256, inputs.shape[0] - i)
                             for i in range(0, inputs.shape[0], 256)) / inputs.shape[0])

    rtn = full_error([layer.layer.weight.detach() for layer in layers])
    optimizer = torch.optim.Adam([rv.v for rv in rvars], lr=cfg.lr)
    n = inputs.shape[0]
    for step in range(cfg.iters):
        idx = torch.randint(n, (min(cfg.batch, n),), generator=generator)
        loss = _recon_error(forward(inputs[idx], [rv.soft_weight() for rv in rvars]), target[idx])
        beta = beta_at(step, cfg.iters, cfg.warmup)
        if beta is not None and cfg.reg > 0:
            loss = loss + cfg.reg * sum(rv.regulariser(beta) for rv in rvars)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        soft = full_error([rv.soft_weight() for rv in rvars])
        h = torch.cat([rectified_sigmoid(rv.v).reshape(-1) for rv in rvars])
        soft_fraction = float(((h > 0) & (h < 1)).float().mean())
        for rv, layer in zip(rvars, layers):
            layer.layer.weight.copy_(rv.hard_weight())
    hard = full_error([layer.layer.weight.detach() for layer in layers])
    return {"layers": len(layers), "rtn_mse": rtn, "soft_mse": soft, "hard_mse": hard, "soft_fraction": soft_fraction}


def adaround_model(qmodel: nn.Module, fp_model: nn.Module, calib_images: torch.Tensor, cfg: AdaRoundConfig,
                   mse_clip: bool = True, batch: int = 256) -> list[dict]:
    """Replace the RTN weights of ``qmodel`` (from :func:`mqbench.quant.fakequant.quantize_model`, not yet calibrated)
    by AdaRound's, unit by unit in forward order; returns one :func:`reconstruct_unit` report per unit."""
    fp_modules = dict(fp_model.named_modules())
    fp_model.eval()
    qmodel.eval()
    for layer in qmodel.modules():
        if isinstance(layer, QuantLayer) and (layer.act_quant is not None or layer.calibrating):
            raise ConfigError("AdaRound runs before activation calibration; got a calibrated model")
    for param in qmodel.parameters():  # gradients flow only into the rounding variables
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    units = reconstruction_units(qmodel)
    missing = [name for name, _ in units if name not in fp_modules]
    if missing:
        raise ConfigError(f"AdaRound: the FP model has no module {missing[0]!r}")
    # FP targets of all units in one pass (ResNet-20, 1024 images: about 340 MB); the quantized
    # inputs unit by unit, since each depends on the units rounded before it.
    targets = _unit_outputs(fp_model, {name: fp_modules[name] for name, _ in units}, calib_images, batch)
    reports = []
    for name, unit in units:
        inputs = _unit_inputs(qmodel, unit, calib_images, batch)
        target = targets.pop(name)
        if not math.isfinite(float(target.abs().sum())):
            raise DataError(f"AdaRound: the FP output of unit {name!r} is not finite")
        with torch.enable_grad():
            rep = reconstruct_unit(unit, inputs, target, cfg, mse_clip, generator)
        rep["unit"] = name
        reports.append(rep)
    return reports


__all__ = ["AdaRoundConfig", "RoundingVariable", "adaround_model", "beta_at", "reconstruct_unit",
           "reconstruction_units", "rectified_sigmoid", "weight_scale"]
