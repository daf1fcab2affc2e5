"""A proxy's score of one bit configuration of a model: the one place allocation turns proxies into numbers.

:func:`config_scorer` is the narrow entry point: ``config_scorer(info, proxy)`` -> ``score(config)``
(config = bit-widths of the searchable layers; higher = predicted more accurate), for

* a registered MQ baseline name (``hawq_v2``, ``bit_sum``, ...): the baseline on a
  :class:`~evoproxy.baselines.ProxyContext` of the FP network with the configuration's bits, as
  ``evaluate.score_item`` builds it (per-network caches such as Hessian traces are paid once);
* a parsed :class:`~evoproxy.tree.Proxy` (or a proxy file's path): FP primitives extracted once,
  quantization primitives (``weight_q``, ``quant_error``, ``bitwidth``, ``size_mb``) added per
  configuration by :func:`evoproxy.searchdata.with_bit_configs` with a memoised PTQ weight quantizer;
* a callable ``fn(config) -> float`` (a custom objective), used as is.

Protocol as the MQ evaluation: the model's batch (64 training images, seed 0), proxy seed 0, one torch thread.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from evoproxy.errors import ConfigError, EvoproxyError

PROXY_SEED = 0


def proxy_label(proxy) -> str:
    """How results name a proxy: the baseline name, the file path, the formula or the function name."""
    from evoproxy.tree import Proxy

    if isinstance(proxy, Proxy):
        return proxy.source or proxy.formula
    if isinstance(proxy, (str, Path)):
        return str(proxy)
    return getattr(proxy, "__name__", type(proxy).__name__)


def resolve_proxy(proxy):
    """A registered MQ baseline's name, a parsed Proxy or a callable (ConfigError otherwise)."""
    from evoproxy.baselines import get_proxy, proxy_names
    from evoproxy.tree import Proxy, load_proxy

    if isinstance(proxy, Proxy) or (callable(proxy) and not isinstance(proxy, (str, Path))):
        return proxy
    if isinstance(proxy, str) and proxy in proxy_names("mq"):
        return proxy
    if isinstance(proxy, Path) or (isinstance(proxy, str) and (proxy.endswith(".json") or "/" in proxy
                                                               or Path(proxy).is_file())):
        return load_proxy(proxy)
    if isinstance(proxy, str):
        if proxy in proxy_names("nas"):
            raise ConfigError(f"proxy {proxy!r} scores networks, not bit configurations; "
                              f"MQ proxies: {', '.join(proxy_names('mq'))}")
        get_proxy(proxy)  # unknown name: ConfigError listing the registered ones
    raise ConfigError(f"proxy must be an MQ baseline name, a proxy file or a Proxy, got {proxy!r}")


def config_scorer(info, proxy) -> Callable[[tuple], float]:
    """``score(config) -> float`` of ``proxy`` (already resolved by :func:`resolve_proxy`) on ``info``'s model."""
    if isinstance(proxy, str):
        return _baseline_scorer(info, proxy)
    from evoproxy.tree import Proxy

    if isinstance(proxy, Proxy):
        return _proxy_scorer(info, proxy)
    return lambda config: float(proxy(tuple(config)))


class CachedQuantizer:
    """``quantize_weight`` memoised per (weight tensor, bits): the FP weights never change here."""

    def __init__(self):
        from mqbench.quant import quantize_weight

        self.fn = quantize_weight
        self.cache: dict = {}
        self.__module__ = quantize_weight.__module__
        self.__qualname__ = quantize_weight.__qualname__

    def __call__(self, weight, bits: int):
        key = (id(weight), int(bits))
        if key not in self.cache:
            self.cache[key] = (weight, self.fn(weight, int(bits)))  # keeps the weight alive: id stays unique
        return self.cache[key][1]


def _baseline_scorer(info, name: str) -> Callable[[tuple], float]:
    """Registered MQ baseline ``name`` on a configuration, through ProxyContext as evaluate.score_item does."""
    from evoproxy.baselines import ProxyContext, get_proxy
    from mqbench.quant import quantize_weight

    fn = get_proxy(name)
    inputs, targets = info.batch()

    def score(config):
        ctx = ProxyContext(info.fp_model, inputs, targets, bit_config=info.full_bits(config), seed=PROXY_SEED,
                           quantizer=quantize_weight, model_key=info.model_key, act_bits=info.act_bits,
                           prefetch=tuple(sorted(fn.needs)))
        return float(fn(ctx))

    return score


def _proxy_scorer(info, proxy) -> Callable[[tuple], float]:
    """An evolved proxy's score: FP primitives extracted once, quantization primitives added per configuration."""
    import copy

    from evoproxy.searchdata import QUANT_NAMES, with_bit_configs
    from primitives import extract

    terminals = proxy.tree.terminals()
    names = sorted(terminals)
    fp_names = sorted((set(terminals) - set(QUANT_NAMES)) | {"weight"})
    quant_names = [n for n in names if n in QUANT_NAMES]
    probes = int(proxy.primitives.get("hutchinson_probes", 0)) if any(n.startswith("hessian") for n in fp_names) else 0
    inputs, targets = info.batch()
    fp_stats = extract(copy.deepcopy(info.fp_model).eval(), inputs, targets, names=fp_names, hutchinson_probes=probes,
                       noise_std=float(proxy.primitives.get("noise_std", 0.01)), seed=PROXY_SEED, threads=1)
    quantizer = CachedQuantizer()

    def score(config):
        (st,) = with_bit_configs(fp_stats, [info.full_bits(config)], quant_names, keep=set(names), quantizer=quantizer)
        return float(proxy.score(st))

    return score


def reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class FailureCounter:
    """Wraps ``score``: memoised per configuration, an exception or non-finite value counts as a failure (nan)."""

    def __init__(self, score: Callable[[tuple], float]):
        self.score = score
        self.memo: dict[tuple, float] = {}
        self.failed = 0
        self.first_reason: str | None = None

    def __call__(self, config) -> float:
        config = tuple(int(b) for b in config)
        if config not in self.memo:
            try:
                value = float(self.score(config))
                problem = None if math.isfinite(value) else f"non-finite score ({value})"
            except (EvoproxyError, MemoryError):  # the user's setup, not the proxy
                raise
            except Exception as exc:  # a proxy that cannot be computed on this configuration
                value, problem = math.nan, reason(exc)
            if problem is not None:
                self.failed += 1
                self.first_reason = self.first_reason or problem
                value = math.nan
            self.memo[config] = value
        return self.memo[config]

    @property
    def scored(self) -> int:
        return len(self.memo)
