"""The protocol every scorer's statistics follow: which batch, which seeds, which statistics of an item.

    request = StatsRequest.of(("weight", "weight_grad", "quant_error"), hutchinson_probes=0)
    inputs, targets = batch_for(bench, 64)                    # the protocol's batch of a benchmark
    stats = Workspace(ref, bench).statistics(ids, request)    # applied per item: primitives.workspace

Protocol: one batch ``sample_batch("train", batch, seed=BATCH_SEED, normalization=bench.normalization)``,
extraction seed ``PROXY_SEED``, one torch thread, full tensors, on the CPU unless ``StatsRequest.device``
says otherwise (a non-CPU device enters the disk cache's key). The benchmark says which network an
item is (``network_key`` / ``network``) and which bit configuration, if any (``bit_config``); the
statistics are taken without asking what kind of benchmark it is:

* the statistics of a *network* (every primitive but the quantization ones) are extracted once per
  network key and cached on disk under ``cache_root()/primitives`` (by
  :class:`primitives.workspace.Workspace`, which also keeps the last few in memory), so a second run over
  the same items recomputes nothing;
* the quantization primitives of an item's bit configuration (``weight_q``, ``quant_error``,
  ``bitwidth``, ``size_mb``) are added to the network's statistics with the benchmark's quantizer
  (:func:`with_bit_config`), one quantization per layer and bit-width, sharing the network's tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mqbench.devices import resolve_device
from mqbench.errors import ConfigError
from primitives.core import HESSIAN, QUANT, REGISTRY, LayerStats, NetworkStats

PROXY_SEED = 0  # seed of the proxies' own randomness (noise inputs, probes, power iterations)
BATCH_SEED = 0  # seed of the batch of training images every item is scored on
QUANT_NAMES = tuple(n for n, p in REGISTRY.items() if p.pass_ == QUANT)


def uses_hessian(names) -> bool:
    """Whether any of ``names`` comes from the Hessian pass (so Hutchinson probes matter)."""
    return any(REGISTRY[n].pass_ == HESSIAN for n in names if n in REGISTRY)


def split_names(names) -> tuple[list[str], list[str]]:
    """(network primitives, quantization primitives) of ``names``, each sorted."""
    names = sorted(set(names))
    return [n for n in names if n not in QUANT_NAMES], [n for n in names if n in QUANT_NAMES]


def available_names(bench) -> list[str]:
    """The primitives a benchmark can provide: quantization ones only where items have bit configurations."""
    return [n for n in REGISTRY if bench.quantizer is not None or n not in QUANT_NAMES]


@dataclass(frozen=True)
class StatsRequest:
    """What determines the statistics of an item besides the item itself (hashable, picklable)."""

    names: tuple[str, ...]
    hutchinson_probes: int = 0
    noise_std: float = 0.01
    batch: int = 64
    device: str | None = None  # where networks are extracted: None = the CPU; "cuda"/"cuda:N" (see mqbench.devices)

    @classmethod
    def of(cls, names, hutchinson_probes: int = 0, noise_std: float = 0.01, batch: int = 64,
           device=None) -> "StatsRequest":
        names = tuple(sorted(set(names)))
        device = resolve_device(device)
        return cls(names, int(hutchinson_probes) if uses_hessian(names) else 0, float(noise_std), int(batch),
                   None if device == "cpu" else device)

    def network_kwargs(self) -> dict:
        fp, quant = split_names(self.names)
        if quant:  # the quantization primitives are computed from the weight
            fp = sorted(set(fp) | {"weight"})
        kwargs = dict(names=fp, hutchinson_probes=self.hutchinson_probes, noise_std=self.noise_std, seed=PROXY_SEED)
        if self.device is not None:
            kwargs["device"] = self.device
        return kwargs


def batch_for(bench, batch: int):
    """(inputs, targets) of the protocol's batch for ``bench``, read afresh (a workspace keeps it:
    :meth:`primitives.workspace.Workspace.batch`)."""
    dataset = getattr(bench, "dataset", "cifar10")
    if dataset == "cifar10":  # the built-in protocol (the committed per-item scores were taken on it)
        from mqbench.cifar10 import sample_batch

        return sample_batch("train", int(batch), seed=BATCH_SEED, normalization=bench.normalization)
    # a spec's own data (cifar100=PATH, imagefolder=PATH): the same seeded class-balanced draw
    from mqbench.datasets import load_batch

    return load_batch(dataset, "train", int(batch), BATCH_SEED, normalization=bench.normalization, progress=False)


def check_request(bench, request: StatsRequest) -> None:
    """A one-line error when ``request`` asks for quantization statistics of a benchmark without bit configurations."""
    _, quant = split_names(request.names)
    if quant and bench.quantizer is None:
        raise ConfigError(f"{', '.join(quant)} need a benchmark with bit configurations; {bench.name} has none")


def with_bit_config(fp: NetworkStats, bits, quant_names, quantizer, quantized: dict | None = None) -> NetworkStats:
    """``fp`` with the quantization primitives of bit configuration ``bits`` added, computed by the same
    kernel functions as :func:`primitives.extract` (tensors shared, not copied); ``fp`` itself when ``bits``
    is None. ``quantized`` memoises (layer, bits) -> tensors across configurations of the same network."""
    from types import SimpleNamespace

    from primitives.kernels import LayerCtx

    if bits is None:
        return fp
    if len(bits) != len(fp.layers):
        raise ConfigError(f"bit configuration has {len(bits)} entries for {len(fp.layers)} layers")
    quantized = {} if quantized is None else quantized
    layers = []
    for i, (layer, b) in enumerate(zip(fp.layers, bits)):
        tensors = dict(layer.tensors)
        key = (i, int(b), tuple(quant_names))
        if quant_names and key not in quantized:
            numel = math.prod(layer.weight_shape)
            stub = SimpleNamespace(bias=torch.empty(layer.params - numel))  # what the size formula reads of the module
            ctx = LayerCtx(i, layer.name, layer.kind, stub, layer.tensors["weight"], int(b), quantizer)
            quantized[key] = {n: REGISTRY[n].fn(ctx) for n in quant_names}
        if quant_names:
            tensors.update(quantized[key])
        layers.append(LayerStats(layer.name, layer.kind, layer.weight_shape, layer.input_shape,
                                 layer.output_shape, layer.params, layer.flops, int(b), tensors))
    return NetworkStats(layers, dict(fp.meta))


def model_statistics(model, inputs, targets, request: StatsRequest, bit_configs=None, quantizer=None) -> list[NetworkStats]:
    """The statistics of ``request`` for a network a user holds (this module's protocol: seed ``PROXY_SEED``,
    one thread): the network's statistics once, then the quantization ones per bit configuration, each a
    list of bits per Conv2d/Linear in forward order or a dict layer name -> bits (``quantizer`` defaults to
    the MQ tables' PTQ weight quantizer). One ``NetworkStats`` per configuration; ``[stats]`` without any."""
    from primitives.core import extract

    kwargs = request.network_kwargs()
    kwargs.pop("device", None)  # a user's network is extracted where it is (the batch follows it)
    fp = extract(model, inputs, targets, **kwargs)
    if bit_configs is None:
        return [fp]
    if quantizer is None:
        from mqbench.quant import quantize_weight as quantizer
    _, quant = split_names(request.names)
    quantized: dict = {}
    out = []
    for bits in bit_configs:
        if isinstance(bits, dict):
            missing = [n for n in fp.names if n not in bits]
            if missing:
                raise ConfigError(f"bit_config has no entry for layer(s) {', '.join(missing[:5])}")
            bits = [bits[n] for n in fp.names]
        out.append(with_bit_config(fp, [int(b) for b in bits], quant, quantizer, quantized))
    return out
