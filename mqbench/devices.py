"""``--device cpu|cuda|auto``: where statistics, PTQ and evaluation run.

``cpu`` (the default everywhere) keeps today's numerics bit for bit. ``cuda`` (or ``cuda:N``) runs the
same code on a GPU: results then differ from CPU ones at the float32-rounding level (other kernels,
other summation orders), so whatever caches or identifies results records the device whenever it is
not the CPU (the statistics cache key, an MQ table's identity) and never mixes the two. ``auto`` is
``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.
"""
from __future__ import annotations

import torch

from mqbench.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device=None) -> str:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for ``device`` (None: cpu); one-line ConfigError for an unknown
    name or for CUDA on a machine where torch sees no GPU."""
    text = "cpu" if device is None else str(device).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)} (or cuda:N)")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {text!r} asked for, but torch sees no CUDA GPU on this machine "
                          f"(torch {torch.__version__}, cuda build {torch.version.cuda or 'none'}); use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def device_tag(device) -> str | None:
    """What a cache key or a table identity records for ``device``: None on the CPU (so every key made
    before devices existed stays valid), else the device kind (``"cuda"``: any GPU index gives the same numbers)."""
    text = resolve_device(device)
    return None if text == "cpu" else text.partition(":")[0]
