"""Score proxy files (JSON trees) on benchmark items, for the evaluator.

Same protocol as the baselines and the search (batch ``sample_batch("train", batch, seed=0)``,
extraction seed 0, one torch thread, full tensors). Each item is handled in a worker that extracts
only the primitives the proxies' trees use, scores every tree and returns the scores, so memory
stays flat however many items are scored. On MQ benchmarks the FP network's primitives are
extracted once per worker process and the quantization primitives are added per configuration
(:func:`evoproxy.searchdata.with_bit_configs`). An operator error or a non-finite score marks that
(item, proxy) as failed with its reason.
"""
from __future__ import annotations

import math
import time

from evoproxy.evaluate import PROXY_SEED, BenchSpec, _reason, is_mq, load_bench

_FP_CACHE: dict = {}


def needed(proxies) -> tuple[list[str], int, float]:
    """(primitive names, Hutchinson probes, noise_std) that scoring ``proxies`` needs."""
    from evoproxy.errors import ConfigError

    names = sorted(set().union(*(p.tree.terminals() for p in proxies)))
    probes = {p.primitives.get("hutchinson_probes", 0) for p in proxies if any(t.startswith("hessian") for t in p.tree.terminals())}
    noise = {p.primitives.get("noise_std", 0.01) for p in proxies
             if any("@" in t for t in p.tree.terminals())}
    if len(probes) > 1 or len(noise) > 1:
        raise ConfigError("proxy files scored together must use the same hutchinson_probes and noise_std")
    return names, (probes.pop() if probes else 0), (noise.pop() if noise else 0.01)


def _stats_for(spec: BenchSpec, item, names, probes, noise_std, inputs, targets):
    from evoproxy.searchdata import QUANT_NAMES, with_bit_configs
    from primitives import extract

    bench = load_bench(spec)
    plain = [n for n in names if n not in QUANT_NAMES]
    if not is_mq(bench):
        model, _ = bench.build(item)
        return extract(model, inputs, targets, names=plain, hutchinson_probes=probes if any(
            n.startswith("hessian") for n in plain) else 0, noise_std=noise_std, seed=PROXY_SEED)
    fp_names = tuple(sorted(set(plain) | {"weight"}))
    key = (spec, bench.model_key(item), fp_names, probes, noise_std)
    if key not in _FP_CACHE:
        _FP_CACHE.clear()
        model, _ = bench.build(item)
        _FP_CACHE[key] = extract(model, inputs, targets, names=list(fp_names), hutchinson_probes=probes if any(
            n.startswith("hessian") for n in fp_names) else 0, noise_std=noise_std, seed=PROXY_SEED)
    (st,) = with_bit_configs(_FP_CACHE[key], [bench.table.full_bits(item)],
                             [n for n in names if n in QUANT_NAMES], keep=set(names))
    return st


def score_item(spec: BenchSpec, item, labels: list[str], proxies_json: list, names, probes, noise_std,
               inputs, targets) -> dict:
    """Every proxy file on one item: {"id", "scores", "errors", "seconds"} (like the baselines')."""
    from evoproxy.ops import OpError
    from evoproxy.tree import parse_proxy
    from primitives.core import fixed_threads

    result = {"id": item, "scores": {}, "errors": {}, "seconds": {}}
    proxies = [parse_proxy(p) for p in proxies_json]
    with fixed_threads(1):
        start = time.perf_counter()
        try:
            stats = _stats_for(spec, item, names, probes, noise_std, inputs, targets)
        except Exception as exc:  # the item cannot be built or extracted: every proxy fails on it
            for label in labels:
                result["scores"][label] = math.nan
                result["errors"][label] = f"primitives failed: {_reason(exc)}"
                result["seconds"][label] = time.perf_counter() - start
            return result
        share = (time.perf_counter() - start) / len(labels)
        for label, proxy in zip(labels, proxies):
            t0 = time.perf_counter()
            try:
                value = proxy.score(stats)
                if not math.isfinite(value):
                    result["errors"][label] = f"non-finite score ({value})"
            except (OpError, ArithmeticError, RuntimeError, ValueError) as exc:
                value = math.nan
                result["errors"][label] = _reason(exc)
            result["scores"][label] = value
            result["seconds"][label] = share + time.perf_counter() - t0
    return result

