"""One scoring path for every kind of proxy, on benchmark items.

    scorers = resolve_scorers(["snip", "runs/a/best.json", my_proxy, my_callable])
    results = score_items(Workspace(ref, bench), ids, scorers, batch=64, jobs=2)   # one {"id","scores","errors","seconds"} per id

A proxy is any of:

* a registered baseline name (``"hawq_v1"``): ``fn(ctx)`` on a :class:`~evoproxy.baselines.ProxyContext`;
* a proxy file (a path ending in ``.json``) or a parsed :class:`~evoproxy.tree.Proxy`: its tree on the
  item's statistics;
* a plain callable ``f(model, inputs, targets, bit_config) -> float`` (higher = predicted better).

Every proxy gets its statistics from the benchmark's :class:`primitives.workspace.Workspace` (network
statistics once per network, disk-cached; quantization statistics per bit configuration), so scoring the same items again
recomputes nothing, and all proxies of a run share one extraction per item. Each item is scored in a
worker (joblib processes when ``jobs`` > 1, each with its own workspace built once) on one torch thread, so scores do not depend on ``jobs``.
An exception or a NaN/inf score marks that (item, proxy) as failed with its reason; it never stops
the run. Per-item seconds: building the network (when a proxy needs it) plus the proxy's own time plus
an equal share of the item's statistics among the proxies that used them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mqbench.devices import device_tag, resolve_device
from mqbench.errors import ConfigError
from primitives.items import PROXY_SEED, QUANT_NAMES, StatsRequest, uses_hessian


@dataclass(frozen=True)
class Scorer:
    """One proxy in the form workers receive (picklable): ``kind`` "baseline", "tree" or "callable"."""

    label: str
    kind: str
    payload: object  # baseline name | proxy JSON document | callable
    needs: tuple[str, ...] = ()  # statistics it reads (prefetched together for the whole run)
    probes: int = 0
    noise_std: float = 0.01
    bench_kind: str | None = None  # "nas"/"mq" when it applies to one kind of benchmark only


def _tree_scorer(proxy, label: str) -> Scorer:
    terminals = tuple(sorted(proxy.tree.terminals()))
    probes = int(proxy.extraction.get("hutchinson_probes", 0)) if uses_hessian(terminals) else 0
    kind = "mq" if set(terminals) & set(QUANT_NAMES) else None
    return Scorer(label, "tree", proxy.to_json(), terminals, probes, float(proxy.extraction.get("noise_std", 0.01)), kind)


def as_scorer(obj, label: str | None = None) -> Scorer:
    """A :class:`Scorer` for a baseline name, a proxy file path, a ``Proxy`` or a callable (ConfigError otherwise)."""
    from evoproxy.tree import Proxy, load_proxy

    if isinstance(obj, Scorer):
        return obj
    if isinstance(obj, Proxy):
        return _tree_scorer(obj, label or obj.source or obj.formula)
    if isinstance(obj, (str, Path)):
        text = str(obj).strip()
        if text.lower().endswith(".json"):
            return _tree_scorer(load_proxy(text), label or text)
        from evoproxy.baselines import get_proxy

        fn = get_proxy(text)
        return Scorer(label or text, "baseline", text, tuple(fn.needs), 0, 0.01, fn.kind)
    if callable(obj):
        return Scorer(label or getattr(obj, "__name__", "callable"), "callable", obj)
    raise ConfigError(f"a proxy must be a registered name, a .json proxy file, a Proxy or a callable; got {type(obj).__name__}")


def resolve_scorers(proxies) -> list[Scorer]:
    """Scorers for ``proxies`` (one or a list), unique labels in the given order; ConfigError when empty."""
    items = [proxies] if isinstance(proxies, (str, Path)) or not hasattr(proxies, "__iter__") else list(proxies)
    out, seen = [], set()
    for obj in items:
        if isinstance(obj, str) and not obj.strip():
            continue
        scorer = as_scorer(obj)
        if scorer.label not in seen:
            seen.add(scorer.label)
            out.append(scorer)
    if not out:
        raise ConfigError("no proxy given")
    return out


def check_compatible(scorers: list[Scorer], bench) -> None:
    """ConfigError naming the proxies that need bit configurations ``bench`` does not have (a proxy of
    networks on an MQ table is allowed: it scores the FP network)."""
    wrong = [s.label for s in scorers if s.bench_kind == "mq" and bench.quantizer is None]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: bit-configuration proxies need an MQ benchmark, not {bench.name}")
    probes = {s.probes for s in scorers if s.kind == "tree" and s.probes}
    noise = {s.noise_std for s in scorers if s.kind == "tree" and any("@" in n for n in s.needs)}
    if len(probes) > 1 or len(noise) > 1:
        raise ConfigError("proxy files scored together must use the same hutchinson_probes and noise_std")


def reason(exc: BaseException) -> str:
    """One line for an exception: its type and (the start of) its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _tree_value(proxy, stats) -> float:
    return proxy.value(stats)


def score_item(workspace, item, scorers: list[Scorer], batch: int = 64, seed: int = PROXY_SEED, progress: bool = False,
               device=None) -> dict:
    """Every scorer on one item of ``workspace``'s benchmark (a :class:`primitives.workspace.Workspace`): {"id", "scores", "errors", "seconds"}; ``progress`` shows a bar
    over the scorers and inside long per-network computations (the network phase of :func:`score_items`).
    ``device`` (cpu | cuda | auto; None: cpu): where statistics are extracted and where baselines and
    callables get the network and the batch."""
    from evoproxy.baselines import ProxyContext, get_proxy
    from evoproxy.tree import parse_proxy
    from primitives.core import fixed_threads

    on = resolve_device(device)
    result = {"id": item, "scores": {}, "errors": {}, "seconds": {}}
    trees = {s.label: parse_proxy(s.payload) for s in scorers if s.kind == "tree"}
    probes = max([s.probes for s in scorers if s.kind == "tree"], default=0)
    noise = next((s.noise_std for s in scorers if s.kind == "tree" and any("@" in n for n in s.needs)), 0.01)
    prefetch = tuple(sorted({n for s in scorers for n in s.needs}))
    spent = {"stats": 0.0, "build": 0.0}

    with fixed_threads(1):
        try:
            bench = workspace.bench
            inputs, targets = workspace.batch(batch)
        except Exception as exc:  # the benchmark itself is unusable: every proxy fails on this item
            for s in scorers:
                result["scores"][s.label], result["errors"][s.label], result["seconds"][s.label] = math.nan, f"build failed: {reason(exc)}", 0.0
            return result

        def stats(names, hutchinson_probes=0, noise_std=noise):
            t0 = time.perf_counter()
            wanted = set(names) | {n for n in prefetch if not uses_hessian([n]) or hutchinson_probes}
            st = workspace.item_statistics(item, StatsRequest.of(wanted, hutchinson_probes, noise_std, batch, device))
            spent["stats"] += time.perf_counter() - t0
            return st

        ctx_box: list = []

        def context():
            if not ctx_box:
                t0 = time.perf_counter()
                model, x, y, network_key = bench.network(item), inputs, targets, bench.network_key(item)
                if on != "cpu":  # and per-network values cached on disk are kept apart from the CPU's
                    model, x, y = model.to(on), inputs.to(on), targets.to(on)
                    network_key = f"{network_key}@{device_tag(on)}"
                ctx_box.append(ProxyContext(model, x, y, bit_config=bench.bit_config(item), seed=seed,
                                            quantizer=bench.quantizer, model_key=network_key,
                                            act_bits=bench.act_bits, stats_source=stats, progress=progress,
                                            network_store=workspace))
                spent["build"] += time.perf_counter() - t0
            return ctx_box[0]

        users = []
        for s in _bar(scorers, f"network {bench.network_key(item)[:40]}", progress):
            before, t0 = dict(spent), time.perf_counter()
            try:
                if s.kind == "tree":
                    value = _tree_value(trees[s.label], stats(s.needs, probes, noise))
                elif s.kind == "baseline":
                    value = float(get_proxy(s.payload)(context()))
                else:
                    ctx = context()
                    value = float(s.payload(ctx.model, ctx.inputs, ctx.targets, ctx.bit_config))
                if not math.isfinite(value):
                    result["errors"][s.label] = f"non-finite score ({value})"
            except Exception as exc:
                value = math.nan
                prefix = "build failed: " if spent["build"] == before["build"] and not ctx_box and s.kind != "tree" else ""
                result["errors"][s.label] = prefix + reason(exc)
            result["scores"][s.label] = value
            own_stats = spent["stats"] - before["stats"]
            result["seconds"][s.label] = time.perf_counter() - t0 - own_stats
            if s.needs or own_stats:
                users.append(s.label)
        share = spent["stats"] / len(users) if users else 0.0
        for label in users:
            result["seconds"][label] += share
    return result


def _bar(items, desc: str, show: bool):
    """``items`` (scorers), with a bar naming the one being scored when ``show``."""
    if not show:
        return items
    import sys

    from tqdm import tqdm

    def labelled():
        bar = tqdm(items, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, unit="proxy")
        for s in bar:
            bar.set_postfix_str(s.label[-40:])
            yield s

    return labelled()


def score_items(workspace, ids, scorers: list[Scorer], batch: int = 64, *, jobs: int = 1, progress: bool = True,
                desc: str = "proxies", device=None) -> list[dict]:
    """:func:`score_item` for every id of ``workspace``'s benchmark, in order (worker processes when ``jobs`` > 1,
    each with its own workspace, :meth:`primitives.workspace.Workspace.setup`), with a progress bar.

    Items that share a network (the configurations of one MQ table) first go through a *network phase*:
    the first item of each shared network is scored in this process with its own progress bars, so the
    per-network work (network statistics, Hessian eigenvalues and traces, ...) is done once, visibly,
    and cached on disk for the workers; then the remaining items are scored."""
    from mqbench.parallel import map_items

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")
    device = resolve_device(device)
    ids = list(ids)
    bench = workspace.bench
    by_network: dict = {}
    for i, item in enumerate(ids):
        by_network.setdefault(bench.network_key(item), []).append(i)
    first = [positions[0] for positions in by_network.values() if len(positions) > 1]
    done = {}
    for k, pos in enumerate(first, start=1):
        if progress:
            import sys

            print(f"{desc}: network phase {k}/{len(first)} (work shared by {len(by_network[bench.network_key(ids[pos])])} items)",
                  file=sys.stderr)
        done[pos] = score_item(workspace, ids[pos], scorers, batch, progress=progress, device=device)
    rest = [i for i in range(len(ids)) if i not in done]
    scored = map_items(score_item, [ids[i] for i in rest], (), (scorers, batch, PROXY_SEED, False, device),
                       jobs=jobs, progress=progress, desc=desc, setup=workspace.setup())
    done.update(zip(rest, scored))
    return [done[i] for i in range(len(ids))]


def callable_scorer(fn: Callable, label: str | None = None) -> Scorer:
    """A scorer for ``fn(model, inputs, targets, bit_config) -> float`` with an explicit label."""
    return as_scorer(fn, label)


def model_statistics(proxy, model, inputs, targets, bit_configs=None, quantizer=None) -> list:
    """The statistics ``proxy`` reads, for one network and its bit configurations (see
    :func:`primitives.items.model_statistics`)."""
    from primitives.items import model_statistics as statistics

    scorer = as_scorer(proxy)
    request = StatsRequest.of(scorer.needs, scorer.probes, scorer.noise_std, batch=len(inputs))
    return statistics(model, inputs, targets, request, bit_configs, quantizer)
