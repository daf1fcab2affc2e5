"""A proxy's score of one bit configuration of a model: the one place allocation turns proxies into numbers.

:func:`config_scorer` is the narrow entry point: ``config_scorer(info, proxy)`` -> ``score(config)``
(config = bit-widths of the searchable layers; higher = predicted more accurate), for

* a registered MQ baseline name (``hawq_v2``, ``bit_sum``, ...): the baseline on a
  :class:`~evoproxy.baselines.ProxyContext` of the FP network with the configuration's bits, as
  ``evoproxy.scoring.score_item`` builds it (per-network caches such as Hessian traces are paid once);
* a parsed :class:`~evoproxy.tree.Proxy` (or a proxy file's path): FP statistics extracted once,
  quantization statistics (``weight_q``, ``quant_error``, ``bitwidth``, ``size_mb``) added per
  configuration (:func:`primitives.items.with_bit_config`, one quantization per layer and bit-width);
* a callable ``fn(config) -> float`` (a custom objective), used as is.

Protocol as the MQ evaluation: the model's batch (64 training images, seed 0), proxy seed 0, one torch thread.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from evoproxy.errors import ConfigError, EvoproxyError
from evoproxy.scoring import reason
from primitives.items import PROXY_SEED


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
    """An evolved proxy's score: FP statistics once, quantization statistics added per configuration
    (the scoring path's protocol, :func:`evoproxy.scoring.model_statistics`)."""
    import copy

    from evoproxy.scoring import model_statistics
    from mqbench.quant import quantize_weight
    from primitives.items import split_names, with_bit_config

    inputs, targets = info.batch()
    (fp_stats,) = model_statistics(proxy, copy.deepcopy(info.fp_model).eval(), inputs, targets)
    _, quant_names = split_names(proxy.tree.terminals())
    quantized: dict = {}

    def score(config):
        return float(proxy.value(with_bit_config(fp_stats, info.full_bits(config), quant_names, quantize_weight, quantized)))

    return score


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
