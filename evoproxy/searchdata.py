"""Primitives of benchmark items, as the engine and the proxy-file evaluator consume them.

    recipe = DataRecipe.for_bench("nb201-cifar10", ids, names, hutchinson_probes=0)
    stats = load_stats(recipe, jobs=2)          # one primitives.NetworkStats per id, disk-cached

Protocol (the same as :mod:`evoproxy.evaluate`): one batch ``sample_batch("train", batch,
seed=BATCH_SEED, normalization=bench.normalization)``, extraction seed ``PROXY_SEED``, one torch
thread, full tensors (no subsampling).

* NAS-Bench-201: ``primitives.extract_many`` over the ids (network init seed = id), cached on disk
  under ``cache_root()/primitives``.
* MQ tables: the FP network is the same for every configuration, so its primitives (everything
  but the quantization ones) are extracted once and cached; ``weight_q`` / ``quant_error`` /
  ``bitwidth`` of each configuration are then added per layer with the table's PTQ weight quantizer
  (``mqbench.quant.quantize_weight``), exactly as ``extract(..., bit_config, quantizer)`` computes
  them (one quantization per layer and bit-width, shared by all configurations).

Workers of a parallel search call :func:`load_stats` with the same recipe; it is memoised per
process and reads the disk cache, so the primitives are computed once.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from evoproxy.evaluate import BATCH_SEED, PROXY_SEED, BenchSpec, is_mq, load_bench
from primitives.core import QUANT, REGISTRY

QUANT_NAMES = tuple(n for n, p in REGISTRY.items() if p.pass_ == QUANT)
_LOADED: dict = {}


@dataclass(frozen=True)
class DataRecipe:
    """Everything that determines the primitives of a list of benchmark items (hashable, picklable)."""

    spec: BenchSpec
    ids: tuple
    names: tuple[str, ...]
    hutchinson_probes: int = 0
    noise_std: float = 0.01
    batch: int = 64
    cache_dir: str | None = None

    @classmethod
    def for_bench(cls, spec: BenchSpec, ids, names, hutchinson_probes: int = 0, noise_std: float = 0.01,
                  batch: int = 64, cache_dir=None) -> "DataRecipe":
        if cache_dir is None:
            from mqbench.dataroot import cache_root

            cache_dir = cache_root() / "primitives"
        return cls(spec, tuple(ids), tuple(sorted(set(names))), int(hutchinson_probes), float(noise_std),
                   int(batch), str(cache_dir))


def _build_nas(spec: BenchSpec, item):
    bench = load_bench(spec)
    model, _ = bench.build(item)
    return model, bench.model_key(item)


def _build_fp(spec: BenchSpec, item):
    bench = load_bench(spec)
    model, _ = bench.build(bench.ids[0])
    return model, bench.model_key(bench.ids[0])


def load_stats(recipe: DataRecipe, jobs: int = 1, progress: bool = True) -> list:
    """One ``NetworkStats`` per id of the recipe (memoised per process)."""
    if recipe in _LOADED:
        return _LOADED[recipe]
    from mqbench.cifar10 import sample_batch
    from primitives import extract_many

    bench = load_bench(recipe.spec)
    inputs, targets = sample_batch("train", recipe.batch, seed=BATCH_SEED, normalization=bench.normalization)
    plain = [n for n in recipe.names if n not in QUANT_NAMES]
    common = dict(hutchinson_probes=recipe.hutchinson_probes if any(n.startswith("hessian") for n in plain) else 0,
                  noise_std=recipe.noise_std, seed=PROXY_SEED, cache_dir=recipe.cache_dir, progress=progress)
    if not is_mq(bench):
        if len(plain) != len(recipe.names):
            from evoproxy.errors import ConfigError

            raise ConfigError(f"{', '.join(QUANT_NAMES)} need an MQ benchmark")
        stats = extract_many(list(recipe.ids), functools.partial(_build_nas, recipe.spec),
                             (inputs, targets, BATCH_SEED), jobs=jobs, names=plain, **common)
    else:
        fp_names = sorted(set(plain) | {"weight"})
        (fp,) = extract_many(["fp"], functools.partial(_build_fp, recipe.spec), (inputs, targets, BATCH_SEED),
                             jobs=1, names=fp_names, **common)
        stats = with_bit_configs(fp, [bench.table.full_bits(i) for i in recipe.ids],
                                 [n for n in recipe.names if n in QUANT_NAMES], keep=set(recipe.names))
    _LOADED.clear()  # one recipe per process at a time (the search's); keeps memory bounded
    _LOADED[recipe] = stats
    return stats


def with_bit_configs(fp, bit_configs, quant_names, keep=None, quantizer=None) -> list:
    """Copies of ``fp`` (NetworkStats of the FP network) with the quantization primitives of each bit
    configuration added (weights quantized once per layer and bit-width); tensors are shared, not copied."""
    from primitives.core import LayerStats, NetworkStats, layer_size_mb

    if quantizer is None:
        from mqbench.quant import quantize_weight as quantizer
    quantized: dict = {}
    out = []
    for bits in bit_configs:
        if len(bits) != len(fp.layers):
            from evoproxy.errors import ConfigError

            raise ConfigError(f"bit configuration has {len(bits)} entries for {len(fp.layers)} layers")
        layers = []
        for i, (layer, b) in enumerate(zip(fp.layers, bits)):
            tensors = {k: v for k, v in layer.tensors.items() if keep is None or k in keep}
            if quant_names:
                w = layer.tensors["weight"]
                if (i, b) not in quantized:
                    wq = quantizer(w, int(b)).detach().to(w.dtype)
                    quantized[(i, b)] = (wq, w - wq)
                wq, err = quantized[(i, b)]
                numel = math.prod(layer.weight_shape)
                extra = {"weight_q": wq, "quant_error": err, "bitwidth": torch.tensor(int(b), dtype=torch.int32),
                         "size_mb": torch.tensor(layer_size_mb(numel, layer.params - numel, int(b)), dtype=torch.float64)}
                tensors.update({k: extra[k] for k in quant_names})
            layers.append(LayerStats(layer.name, layer.kind, layer.weight_shape, layer.input_shape,
                                     layer.output_shape, layer.params, layer.flops, int(b), tensors))
        out.append(NetworkStats(layers, dict(fp.meta)))
    return out
