"""Allocation's driver: a proxy's score of one bit configuration of a model.

    target = resolve_target(proxy)           # a Scorer (evoproxy.scoring.as_scorer) or an objective fn(config)
    score = config_scorer(info, target)      # score(config) -> float; config = bits of the searchable layers

What allocation maximises is either

* a :class:`~evoproxy.scoring.Scorer`, the one description of a proxy (a registered MQ baseline name, a proxy
  file, a ``Proxy``, a calibrated proxy, or ``callable_scorer(f)`` for ``f(model, inputs, targets, bit_config)``):
  the driver builds what the scorer's kind reads for the configuration and asks the scorer for its value
  (:meth:`~evoproxy.scoring.Scorer.bind`), as the evaluation driver does for benchmark items:

  - statistics: the FP network's statistics extracted once, the quantization statistics (``weight_q``,
    ``quant_error``, ``bitwidth``, ``size_mb``) added per configuration (:func:`primitives.items.with_bit_config`,
    one quantization per layer and bit-width);
  - a :class:`~evoproxy.baselines.ProxyContext` of the FP network with the configuration's bits (per-network
    caches such as Hessian traces are paid once);

* or an *objective*: a plain callable ``fn(config) -> float`` of the configuration itself (higher = better),
  used as is.

Protocol as the MQ evaluation: the model's batch (64 training images, seed 0), proxy seed 0, one torch thread.
"""
from __future__ import annotations

import math
from typing import Callable

from evoproxy.errors import ConfigError, EvoproxyError
from evoproxy.scoring import CONTEXT, STATISTICS, Scorer, as_scorer, reason
from primitives.items import PROXY_SEED


def resolve_target(proxy):
    """What allocation maximises: an objective (a plain callable ``fn(config)``) as is, else the proxy's
    :class:`Scorer` (:func:`evoproxy.scoring.as_scorer`: ConfigError listing the registered names for an unknown
    one), which must score bit configurations (ConfigError for a baseline of networks)."""
    from evoproxy.baselines import proxy_names

    if callable(proxy):
        return proxy
    scorer = as_scorer(proxy)
    if scorer.kind == "baseline" and scorer.bench_kind == "nas":
        raise ConfigError(f"proxy {scorer.payload!r} scores networks, not bit configurations; "
                          f"MQ proxies: {', '.join(proxy_names('mq'))}")
    return scorer


def config_scorer(info, target) -> Callable[[tuple], float]:
    """``score(config) -> float`` of ``target`` (from :func:`resolve_target`) on ``info``'s model."""
    if not isinstance(target, Scorer):
        return lambda config: float(target(tuple(config)))
    value = target.bind()
    source = SOURCES[target.reads](info, target)
    return lambda config: value(source(config))


def _statistics_source(info, scorer: Scorer) -> Callable[[tuple], object]:
    """config -> the model's NetworkStats with that configuration's quantization statistics: FP statistics once,
    quantization statistics added per configuration (the scoring path's protocol, :func:`evoproxy.scoring.proxy_statistics`)."""
    import copy

    from evoproxy.scoring import proxy_statistics
    from mqbench.quant import quantize_weight
    from primitives.items import split_names, with_bit_config

    inputs, targets = info.batch()
    (fp_stats,) = proxy_statistics(scorer, copy.deepcopy(info.fp_model).eval(), inputs, targets)
    _, quant_names = split_names(scorer.needs)
    quantized: dict = {}
    return lambda config: with_bit_config(fp_stats, info.full_bits(config), quant_names, quantize_weight, quantized)


def _context_source(info, scorer: Scorer) -> Callable[[tuple], object]:
    """config -> a ProxyContext of the FP network with that configuration's bits, as the evaluation driver builds it."""
    from evoproxy.baselines import ProxyContext
    from mqbench.quant import quantize_weight

    inputs, targets = info.batch()
    prefetch = tuple(sorted(scorer.needs))
    return lambda config: ProxyContext(info.fp_model, inputs, targets, bit_config=info.full_bits(config), seed=PROXY_SEED,
                                       quantizer=quantize_weight, model_key=info.model_key, act_bits=info.act_bits,
                                       prefetch=prefetch)


SOURCES = {STATISTICS: _statistics_source, CONTEXT: _context_source}  # what a scorer's kind reads, per configuration


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
