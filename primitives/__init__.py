"""Network + batch -> per-layer tensors (weights, gradients, activations, Hessian, quantization).

In this package a *primitive* is a per-layer statistic, the word the rest of the project uses (a proxy
tree's terminals; DEAP's own "primitives" are the proxy language's *operators*, see :mod:`evoproxy.language.space`);
the package keeps its name.

Public API: :func:`extract`, :func:`extract_many`, :class:`LayerStats`, :class:`NetworkStats`,
``PRIMITIVES`` (name -> one-line description) and :func:`simple_quantize`. See ``primitives.core``
for the conventions and ``primitives.many`` for the disk cache.
"""
from primitives.core import (  # noqa: F401
    CODE_VERSION,
    DEFAULT_THREADS,
    PRIMITIVES,
    LayerStats,
    NetworkStats,
    default_names,
    extract,
    fixed_threads,
    resolve_names,
    simple_quantize,
    subsample_indices,
)
from primitives.many import cache_key, extract_many  # noqa: F401

__all__ = ["extract", "extract_many", "LayerStats", "NetworkStats", "PRIMITIVES", "simple_quantize"]
