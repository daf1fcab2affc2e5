"""Quantization: the PTQ weight quantizer, fake-quantized networks, PTQ and AdaRound.

Entry points: :func:`quantize_weight` (:mod:`mqbench.quant.kernels`, torch-only, copied into exported
modules), :func:`mqbench.quant.fakequant.quantize_model` (a network with fake-quantized Conv2d/Linear),
:func:`mqbench.quant.ptq.ptq_top1` (PTQ at one bit configuration and its top-1). ``quantize_weight`` is
named here because benchmark spec files refer to it as ``mqbench.quant:quantize_weight``.
"""
from mqbench.quant.kernels import quantize_weight  # noqa: F401  (the spec files' default quantizer)
