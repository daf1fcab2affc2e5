"""Post-training quantization of a pretrained network at one bit configuration, and its top-1.

Pipeline (per configuration): quantize weights (per channel, MSE clip) -> re-estimate BatchNorm
statistics on the calibration images (cumulative average, float activations) -> calibrate the 8-bit
per-tensor activation quantizers on the first ``act_calib_images`` calibration images -> fold BN
into the preceding convs (exact in eval mode, for speed) -> top-1 on the evaluation set.

The weight rounding is a *method* (``PTQSettings.method``, looked up in ``ROUNDING``): ``"rtn"``
(round to nearest on the MSE-clipped grid; the committed tables) or ``"adaround"`` (learned rounding
on the same grid with block-wise output reconstruction, :mod:`mqbench.quant.adaround`), applied right
after the weights are quantized; everything after it is the same pipeline.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
import torch.nn as nn

from mqbench.errors import ConfigError
from mqbench.quant.fakequant import activation_scale, fold_batchnorm, quant_layers, quantize_model


def _on(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``t`` on ``model``'s device (the tensor itself when it is there already: no copy on the CPU)."""
    device = next(model.parameters()).device
    return t if t.device == device else t.to(device)


def _copy_to(model: nn.Module, device) -> nn.Module:
    """A deep copy of ``model``, moved to ``device`` when one is given."""
    model = copy.deepcopy(model)
    return model if device is None else model.to(device)


@dataclass(frozen=True)
class PTQSettings:
    calib_images: int = 1024
    calib_seed: int = 0
    act_bits: int = 8
    act_calib_images: int = 256
    bn_batch: int = 256
    eval_batch: int = 100
    mse_clip: bool = True
    # Rounding method (a key of ROUNDING). Fields with metadata "method" belong to that method only:
    # as_dict() leaves them out for other methods, and leaves out "method" itself for "rtn", so an RTN
    # setting has exactly the identity of the tables built before methods existed.
    method: str = "rtn"
    adaround_iters: int = field(default=200, metadata={"method": "adaround"})
    adaround_batch: int = field(default=32, metadata={"method": "adaround"})
    adaround_lr: float = field(default=5e-2, metadata={"method": "adaround"})
    adaround_reg: float = field(default=0.01, metadata={"method": "adaround"})
    adaround_warmup: float = field(default=0.2, metadata={"method": "adaround"})
    adaround_seed: int = field(default=0, metadata={"method": "adaround"})

    def __post_init__(self):
        if self.method not in ROUNDING:
            raise ConfigError(f"unknown PTQ method {self.method!r}; known: {', '.join(sorted(ROUNDING))}")
        if self.method == "adaround":
            self.adaround_config()  # validates

    def as_dict(self) -> dict:
        out = asdict(self)
        for f in fields(self):
            owner = f.metadata.get("method")
            if owner is not None and owner != self.method:
                del out[f.name]
        if self.method == "rtn":
            del out["method"]
        return out

    def adaround_config(self):
        from mqbench.quant.adaround import AdaRoundConfig

        return AdaRoundConfig(self.adaround_iters, self.adaround_batch, self.adaround_lr, self.adaround_reg,
                              self.adaround_warmup, self.adaround_seed)


def round_to_nearest(model: nn.Module, fp_model: nn.Module, calib_images: torch.Tensor, settings: PTQSettings) -> None:
    """RTN: :func:`mqbench.quant.fakequant.quantize_model` already rounded every weight to the nearest grid point."""


def adaround(model: nn.Module, fp_model: nn.Module, calib_images: torch.Tensor, settings: PTQSettings) -> None:
    """AdaRound with block-wise reconstruction on the calibration images (:mod:`mqbench.quant.adaround`)."""
    from mqbench.quant.adaround import adaround_model

    adaround_model(model, fp_model, calib_images, settings.adaround_config(), settings.mse_clip, settings.bn_batch)


# method -> fn(quantized model, FP model, calibration images, settings): fixes the weight rounding in place
ROUNDING: dict[str, Callable[..., None]] = {"rtn": round_to_nearest, "adaround": adaround}


def reestimate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int) -> None:
    """Replace every BN's running statistics by their cumulative average over ``images``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, images.shape[0], batch):
            model(_on(model, images[start:start + batch]).contiguous(memory_format=torch.channels_last))
    model.eval()


def calibrate_activations(model: nn.Module, images: torch.Tensor, bits: int, batch: int) -> None:
    layers = quant_layers(model)
    for layer in layers:
        layer.calibrating = True
        layer.calibration_inputs = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch):
            model(_on(model, images[start:start + batch]))
    for layer in layers:
        inputs = torch.cat(layer.calibration_inputs)
        layer.calibration_inputs = []
        layer.calibrating = False
        layer.act_quant = activation_scale(inputs, bits)


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 100) -> float:
    """Top-1 accuracy in percent (channels_last, inference mode)."""
    model = model.to(memory_format=torch.channels_last).eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch):
            x = _on(model, images[start:start + batch]).contiguous(memory_format=torch.channels_last)
            correct += int((model(x).argmax(dim=1) == _on(model, labels[start:start + batch])).sum())
    return 100.0 * correct / images.shape[0]


def quantize_and_calibrate(fp_model: nn.Module, full_bits: list[int], calib_images: torch.Tensor,
                           settings: PTQSettings = PTQSettings(), device=None) -> nn.Module:
    """A calibrated fake-quantized copy of ``fp_model`` (BN re-estimated), ready for evaluation, on
    ``device`` (None: where ``fp_model`` is; batches follow the model)."""
    model = quantize_model(_copy_to(fp_model, device), list(full_bits), settings.act_bits, settings.mse_clip)
    reference = fp_model if device is None else _copy_to(fp_model, device)  # learned rounding runs on the model's device
    ROUNDING[settings.method](model, reference, _on(model, calib_images), settings)
    model = model.to(memory_format=torch.channels_last)
    reestimate_batchnorm(model, calib_images, settings.bn_batch)
    calibrate_activations(model, calib_images[: settings.act_calib_images], settings.act_bits, settings.bn_batch)
    return model


def ptq_top1(fp_model: nn.Module, full_bits: list[int], calib_images: torch.Tensor,
             test_images: torch.Tensor, test_labels: torch.Tensor, settings: PTQSettings = PTQSettings(),
             device=None) -> float:
    """Top-1 (%) of ``fp_model`` after PTQ at ``full_bits`` (one weight bit-width per Conv2d/Linear)."""
    model = quantize_and_calibrate(fp_model, full_bits, calib_images, settings, device)
    fold_batchnorm(model)
    return top1(model, test_images, test_labels, settings.eval_batch)


def fp_top1(fp_model: nn.Module, calib_images: torch.Tensor | None, test_images: torch.Tensor,
            test_labels: torch.Tensor, settings: PTQSettings = PTQSettings(), device=None) -> float:
    """Full-precision top-1, with BN re-estimated on the calibration images when they are given."""
    model = _copy_to(fp_model, device)
    if calib_images is not None:
        reestimate_batchnorm(model, calib_images, settings.bn_batch)
    return top1(model, test_images, test_labels, settings.eval_batch)
