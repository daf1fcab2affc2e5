"""Hand-designed training-free proxies (the baselines the evolved ones are compared with).

A baseline is a function ``fn(ctx) -> float`` registered with ``@register(name, kind)``; higher
must mean "predicted more accurate" (sensitivities are negated). ``kind`` is ``"nas"`` (scores a
network) or ``"mq"`` (scores a bit configuration of a network; needs ``ctx.bit_config``).

    from evoproxy.baselines import ProxyContext, get_proxy, proxy_names
    ctx = ProxyContext(model, inputs, targets, bit_config=None, seed=0)
    get_proxy("snip")(ctx)

:class:`ProxyContext` gives a proxy what it may use: ``model`` (a fresh deep copy of the network in
the benchmark's train/eval mode on every access, so a proxy may modify it), ``inputs``/``targets``
(the batch), ``bit_config`` (weight bits per Conv2d/Linear in forward order, or None), ``seed``,
``stats(names, probes=0)`` (``primitives.extract`` with the context's quantizer, computed lazily
and cached per context; names listed in ``prefetch`` are extracted together on the first call, so
several proxies share one extraction; the scoring path passes ``stats_source`` instead, which serves
them from the benchmark's :class:`primitives.workspace.Workspace`: network statistics once per network and
disk-cached), ``memo(key, fn)`` (per-context cache, e.g. a Jacobian used by two proxies) and
``network_cached(key, fn)`` (a cache per *network*, on disk and in the ``network_store`` the caller passes
(the scoring path: its workspace): for MQ benchmarks the FP network is the same for every configuration, so
Hessian eigenvalues/traces or layer orthogonality are computed once and reused across configurations).
"""
from __future__ import annotations

import copy
import hashlib
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from evoproxy.errors import ConfigError

KINDS = ("nas", "mq")
_REGISTRY: dict[str, Callable] = {}


def register(name: str, kind: str = "nas", needs=()):
    """Register ``fn(ctx) -> float`` as baseline ``name``.

    ``needs``: the statistic names the function will ask ``ctx.stats`` for (without Hessian
    probes); the evaluator prefetches the union over the proxies of a run in one extraction.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"baseline {name!r} registered twice")
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"baseline {name!r} needs a docstring with its formula and source")
        fn.proxy_name = name
        fn.kind = kind
        fn.needs = tuple(needs)
        _REGISTRY[name] = fn
        return fn

    return wrap


def get_proxy(name: str) -> Callable:
    """The registered baseline ``name`` (ConfigError listing the known names otherwise)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown proxy {name!r}; registered: {', '.join(proxy_names())}")
    return _REGISTRY[name]


def proxy_names(kind: str | None = None) -> list[str]:
    """Registered baseline names (of one kind, when given), in registration order."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return [n for n, fn in _REGISTRY.items() if kind is None or fn.kind == kind]


def describe(name: str) -> str:
    """First line of a baseline's docstring."""
    return (get_proxy(name).__doc__ or "").strip().splitlines()[0]


@dataclass
class ProxyContext:
    """What a baseline sees of one benchmark item (see the module docstring)."""

    base_model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    bit_config: list[int] | None = None
    seed: int = 0
    quantizer: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    model_key: str | None = None  # identifies the weights of base_model; None disables network_cached
    act_bits: int = 8
    prefetch: tuple[str, ...] = ()
    stats_source: Callable | None = None  # (names, probes) -> NetworkStats; the scoring path's shared cache
    network_store: object = None  # keeps network_cached values in memory: recall(key) / remember(key, value) (a Workspace)
    progress: bool = False  # show progress bars inside long per-network computations (see steps())
    extract_seconds: float = 0.0
    _stats: list = field(default_factory=list, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)
    _digest: str | None = field(default=None, repr=False)

    @property
    def model(self) -> nn.Module:
        """A fresh deep copy of the network (same train/eval mode); modify it freely."""
        return copy.deepcopy(self.base_model)

    @property
    def batch_digest(self) -> str:
        if self._digest is None:
            from primitives.many import batch_hash

            self._digest = batch_hash(self.inputs, self.targets)
        return self._digest

    def _quantizer(self):
        if self.quantizer is None:
            from primitives import simple_quantize

            return simple_quantize
        return self.quantizer

    def stats(self, names, probes: int = 0):
        """``primitives.extract`` of ``names`` (plus ``prefetch``) on the batch; cached per context."""
        from primitives import extract
        from primitives.core import HESSIAN, QUANT, REGISTRY

        names = [names] if isinstance(names, str) else list(names)
        if self.stats_source is not None:
            return self.stats_source(names, int(probes))
        wanted = set(names)
        for cached_names, cached_probes, st in self._stats:
            if cached_probes == probes and wanted <= cached_names:
                return st
        extra = {n for n in self.prefetch if n in REGISTRY and REGISTRY[n].pass_ != HESSIAN
                 and (self.bit_config is not None or REGISTRY[n].pass_ != QUANT)}
        full = sorted(wanted | extra)
        start = time.perf_counter()
        st = extract(self.base_model, self.inputs, self.targets, bit_config=self.bit_config, names=full,
                     hutchinson_probes=int(probes), seed=int(self.seed), quantizer=self._quantizer())
        self.extract_seconds += time.perf_counter() - start
        self._stats.append((set(full), probes, st))
        return st

    def memo(self, key, fn: Callable[[], object]):
        """``fn()`` once per context (e.g. a Jacobian shared by jacob_cov and epe_nas)."""
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def steps(self, iterable, desc: str, total: int | None = None):
        """``iterable`` with a progress bar on stderr when this context shows progress (a long per-network loop)."""
        if not self.progress:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)

    def network_cached(self, key, fn: Callable[[], object]):
        """``fn()`` once per network (model_key, batch and seed): on disk under ``cache_root()/network`` so other
        contexts, workers and later runs reuse it, and in ``network_store`` when given; per context without a
        model_key."""
        if self.model_key is None:
            return self.memo(("network", key), fn)
        full = ("baseline network value", self.model_key, self.batch_digest, int(self.seed), key)
        store = self.network_store
        if store is not None and (value := store.recall(full)) is not None:
            return value
        value = self.memo(full, lambda: _disk_cached(full[1:], fn))
        if store is not None:
            store.remember(full, value)
        return value


def _code_digest(fn) -> str:
    """Identifies the code of ``fn`` (and of the functions defined inside it), so edits invalidate disk entries."""
    h = hashlib.sha256()

    def feed(code):
        h.update(code.co_code)
        h.update(repr(code.co_names).encode())
        for c in code.co_consts:
            feed(c) if hasattr(c, "co_code") else h.update(repr(c).encode())

    feed(fn.__code__)
    return h.hexdigest()


def _disk_cached(full: tuple, fn: Callable[[], object]):
    """``fn()``'s value from ``cache_root()/network/<key>.pt`` (our own file, loaded weights-only), else computed and saved."""
    import os

    import numpy as np

    from mqbench.dataroot import cache_root
    from mqbench.errors import DataError

    try:
        folder = cache_root() / "network"
    except DataError:
        return fn()
    path = folder / f"{hashlib.sha256((repr(full) + _code_digest(fn)).encode()).hexdigest()}.pt"
    if path.exists():
        try:
            box = torch.load(path, map_location="cpu", weights_only=True)
            value = box["value"]
            return value.numpy() if box.get("ndarray") else value
        except Exception:  # torn, foreign or old file: recompute
            pass
    value = fn()
    box = {"value": torch.from_numpy(np.array(value)), "ndarray": True} if isinstance(value, np.ndarray) else {"value": value}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(box, tmp)
        os.replace(tmp, path)
    except Exception:  # not storable (an unusual type) or no space: keep the in-process value only
        pass
    return value


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv2d/Linear modules of ``model`` (registration order)."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# register the baselines
from evoproxy.baselines import nas, mq  # noqa: E402,F401,I001

__all__ = ["ProxyContext", "register", "get_proxy", "proxy_names", "describe", "prunable_layers"]
