"""Bit allocation: the bit configuration a proxy prefers within a model-size or BOPs budget.

    from evoproxy.allocation import allocate
    result = allocate("hawq_v2", "resnet20", "uniform-3")          # or "0.1MB", 0.1, "1.2GBOPs"
    result = allocate("runs/mq/best.json", "resnet32", "0.15MB", ptq=True)
    print(result.bits_str, result.size_mb, result.bops_g, result.score, result.optimiser, result.top1)

``proxy``: a registered MQ baseline name (``evoproxy baselines --list``: ``hawq_v2``, ``bit_sum``,
``model_size``, ...), a proxy JSON file (calibrated or not), a parsed :class:`evoproxy.tree.Proxy`, a
:class:`evoproxy.scoring.Scorer` (e.g. ``callable_scorer(f)`` for ``f(model, inputs, targets, bit_config)``),
or an *objective*: a function of the configuration itself (searchable-layer bit tuple -> float); see
:mod:`evoproxy.allocation.scoring`. Higher score = predicted more accurate.
``model``: a model with a committed MQ-Bench table (``resnet20``, ``resnet32``); the allowed bits,
the fixed first/last layers (at 8 bits), the layer sizes/MACs and the PTQ settings come from it.
``budget``: see :mod:`evoproxy.allocation.model` (``"uniform-K"``, ``"0.1MB"``/``"98KB"``/a number
of MB, ``"1.2GBOPs"``).

The score is maximised exactly by dynamic programming when it passes the layer-additivity test,
else by a seeded evolutionary search (:mod:`evoproxy.allocation.optimise`). A configuration on
which the proxy raises or gives a non-finite value counts as failed: if every configuration
scored fails, a one-line ConfigError says so with the first reason; otherwise ``failed`` says how
many. ``ptq=True`` measures the chosen configuration's top-1 with the table's PTQ (minutes on a
CPU; cached per configuration, :mod:`evoproxy.allocation.ptq`).

To allocate several budgets with one proxy, build an :class:`Allocator` once (the proxy's
per-network statistics, e.g. Hessian traces, and every score are then computed once).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evoproxy.allocation.model import BATCH, Budget, ModelInfo, load_model, parse_budget
from evoproxy.allocation.optimise import SEED, maximise
from evoproxy.allocation.scoring import FailureCounter, config_scorer, resolve_target
from evoproxy.errors import ConfigError
from evoproxy.scoring import proxy_label

__all__ = ["Allocation", "Allocator", "Budget", "allocate", "parse_budget"]


@dataclass
class Allocation:
    """The chosen configuration and what is known about it."""

    model: str
    proxy: str
    budget: str  # in words, e.g. "uniform-3 (0.0966 MB)"
    optimiser: str  # "dp" (exact, the proxy is layer-additive) or "evolution"
    config: tuple[int, ...]  # bits of the searchable layers
    bits: list[int]  # bits of every quantizable layer (fixed first/last included)
    layer_names: list[str]
    searchable: list[int]  # indices (into bits / layer_names) of the searchable layers
    size_mb: float
    bops_g: float
    score: float  # the proxy's score of the configuration
    additivity: dict = field(default_factory=dict)
    evaluations: int = 0  # configurations scored by this allocation
    scored: int = 0  # configurations scored by the allocator so far (all budgets)
    failed: int = 0  # of which the proxy failed on
    first_failure: str | None = None
    top1: float | None = None  # PTQ top-1 (%) when requested

    @property
    def bits_str(self) -> str:
        """The searchable layers' bits joined by '-', as in the MQ-Bench tables."""
        return "-".join(str(b) for b in self.config)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["config"] = list(self.config)
        out["bits_str"] = self.bits_str
        return out


class Allocator:
    """One proxy on one model: scores are memoised across budgets (see the module docstring)."""

    def __init__(self, proxy, model: str, *, table: str | Path | None = None, seed: int = SEED, batch: int = BATCH,
                 label: str | None = None, info: ModelInfo | None = None):
        from primitives.core import fixed_threads

        self.info = info if info is not None else load_model(model, table, batch)
        self.label = label or proxy_label(proxy)
        self.seed = int(seed)
        target = resolve_target(proxy)
        with fixed_threads(1):
            self.score = FailureCounter(config_scorer(self.info, target))

    def score_of(self, config) -> float:
        """The proxy's score of one configuration (nan when it fails)."""
        from primitives.core import fixed_threads

        with fixed_threads(1):
            return self.score(config)

    def _check_failures(self, _check=None) -> None:
        s = self.score
        if s.scored and s.failed == s.scored:
            raise ConfigError(f"proxy {self.label} failed on all {s.scored} configurations of {self.info.model} "
                              f"it scored; first: {s.first_reason}")

    def allocate(self, budget) -> Allocation:
        """The configuration within ``budget`` that maximises the proxy's score."""
        from primitives.core import fixed_threads

        info = self.info
        budget = parse_budget(budget)
        weights, limit = info.problem(budget)
        lowest = min(info.allowed)
        if sum(w * lowest for w in weights) > limit:
            smallest = info.uniform(lowest)
            what = (f"{info.bops_g(smallest):.4f} GBOPs" if budget.metric == "bops"
                    else f"{info.size_mb(smallest):.4f} MB")
            raise ConfigError(f"budget {info.describe(budget)} is below the smallest configuration of "
                              f"{info.model} (every searchable layer at {lowest} bits: {what})")
        with fixed_threads(1):
            res = maximise(self.score, weights, limit, info.allowed, self.seed, on_checked=self._check_failures)
        self._check_failures()
        cfg = tuple(int(b) for b in res["config"])
        return Allocation(info.model, self.label, info.describe(budget), res["optimiser"], cfg, info.full_bits(cfg),
                          list(info.meta["layer_names"]), info.searchable, info.size_mb(cfg), info.bops_g(cfg), float(res["value"]),
                          res["additivity"], res["evaluations"], self.score.scored, self.score.failed,
                          self.score.first_reason)

    def ptq(self, allocation: Allocation, cache: str | Path | None = None, progress: bool = False) -> Allocation:
        """Set ``allocation.top1`` to the measured PTQ top-1 of its configuration (cached) and return it."""
        from evoproxy.allocation.ptq import PTQRunner

        runner = PTQRunner(self.info, cache, progress)
        allocation.top1 = runner.run([allocation.config], f"PTQ {self.info.model}")[allocation.config]
        return allocation


def allocate(proxy, model: str, budget, *, ptq: bool = False, ptq_cache: str | Path | None = None,
             table: str | Path | None = None, seed: int = SEED, batch: int = BATCH, progress: bool = False) -> Allocation:
    """The bit configuration of ``model`` within ``budget`` that ``proxy`` scores highest.

    ``ptq``: also measure its top-1 with the table's PTQ (cached in ``ptq_cache``, default
    ``<cache root>/allocation/ptq_cache.csv``); ``table``: an MQ-Bench table other than the committed
    one; ``seed``: of the additivity test and the evolutionary search; ``batch``: CIFAR-10 training
    images the proxy sees (seed 0); ``progress``: a PTQ progress bar.
    """
    parse_budget(budget)  # a bad budget fails before any model is loaded
    allocator = Allocator(proxy, model, table=table, seed=seed, batch=batch)
    result = allocator.allocate(budget)
    if ptq:
        allocator.ptq(result, ptq_cache, progress)
    return result

