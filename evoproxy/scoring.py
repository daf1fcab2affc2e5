"""The Scorer: one description of a proxy, and the evaluation driver over benchmark items.

    scorers = resolve_scorers(["snip", "runs/a/best.json", my_proxy, my_callable])
    results = score_items(Workspace(ref, bench), ids, scorers, batch=64, jobs=2)   # one {"id","scores","errors","seconds"} per id

A user's proxy is any of (:func:`as_scorer` turns it into a :class:`Scorer`, named by :func:`proxy_label`):

* a registered baseline name (``"hawq_v1"``): kind ``baseline``, ``fn(ctx)`` on a
  :class:`~evoproxy.baselines.ProxyContext`;
* a proxy file (a path) or a parsed :class:`~evoproxy.tree.Proxy`: kind ``tree``, its tree on the item's
  statistics, or kind ``calibrated`` when the file has learned ``layer_weights`` (``evoproxy calibrate``): the
  tree's per-layer terms weighted by them;
* a plain callable ``f(model, inputs, targets, bit_config) -> float``: kind ``callable``, on the context's
  network, batch and bit configuration (higher = predicted better).

Each kind is one entry of :data:`SCORER_KINDS`: what it reads (the item's statistics or a ProxyContext) and
its value on that. Drivers only build what the kind reads and ask the Scorer for its value: :func:`score_item`
over benchmark items (here), :func:`evoproxy.allocation.scoring.config_scorer` over the bit configurations of
one model.

Every proxy gets its statistics from the benchmark's :class:`primitives.workspace.Workspace` (network
statistics once per network, disk-cached; quantization statistics per bit configuration), so scoring the same items again
recomputes nothing, and all proxies of a run share one extraction per item. Each item is scored in a
worker (joblib processes when ``jobs`` > 1, each with its own workspace built once) on one torch thread, so scores
do not depend on ``jobs``.
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


STATISTICS, CONTEXT = "statistics", "context"  # what a kind of Scorer reads: NetworkStats or a ProxyContext


@dataclass(frozen=True)
class ScorerKind:
    """One kind of :class:`Scorer`: what it reads (``STATISTICS`` or ``CONTEXT``) and ``bind(payload)`` -> its
    ``value(what it reads) -> float``."""

    name: str
    reads: str
    bind: Callable[[object], Callable[[object], float]]


SCORER_KINDS: dict[str, ScorerKind] = {}


def scorer_kind(name: str, reads: str):
    """Register ``bind(payload) -> value`` as the Scorer kind ``name`` reading ``reads``."""

    def wrap(bind):
        SCORER_KINDS[name] = ScorerKind(name, reads, bind)
        return bind

    return wrap


@scorer_kind("tree", STATISTICS)
def _tree_value(document):
    """orientation * the tree on the statistics (:func:`evoproxy.tree.tree_value`)."""
    from evoproxy.tree import parse_proxy, tree_value

    proxy = parse_proxy(document)
    return lambda stats: proxy.orientation * tree_value(proxy.tree, stats)


@scorer_kind("calibrated", STATISTICS)
def _calibrated_value(document):
    """orientation * sum_l w_p(l) t_l: the tree's per-layer terms weighted by its learned layer weights
    (:func:`evoproxy.tree.calibrated_value`)."""
    from evoproxy.tree import calibrated_value, parse_proxy

    proxy = parse_proxy(document)
    return lambda stats: proxy.orientation * calibrated_value(proxy.tree, stats, proxy.layer_weights)


@scorer_kind("baseline", CONTEXT)
def _baseline_value(name):
    """The registered baseline ``fn(ctx)``."""
    from evoproxy.baselines import get_proxy

    fn = get_proxy(name)
    return lambda ctx: float(fn(ctx))


@scorer_kind("callable", CONTEXT)
def _callable_value(fn):
    """``fn(model, inputs, targets, bit_config)`` on the context's network copy, batch and bit configuration."""
    return lambda ctx: float(fn(ctx.model, ctx.inputs, ctx.targets, ctx.bit_config))


@dataclass(frozen=True)
class Scorer:
    """One proxy in the form workers receive (picklable): a ``kind`` of :data:`SCORER_KINDS` and its payload."""

    label: str
    kind: str
    payload: object  # baseline name | proxy JSON document | callable
    needs: tuple[str, ...] = ()  # statistics it reads (prefetched together for the whole run)
    probes: int = 0
    noise_std: float = 0.01
    bench_kind: str | None = None  # "nas"/"mq" when it applies to one kind of benchmark only

    @property
    def reads(self) -> str:
        """``STATISTICS`` (its value is a function of the item's NetworkStats) or ``CONTEXT`` (of a ProxyContext)."""
        return SCORER_KINDS[self.kind].reads

    def bind(self) -> Callable[[object], float]:
        """Its ``value(what it reads) -> float`` (payload parsed once: bind once per worker, call per item)."""
        return SCORER_KINDS[self.kind].bind(self.payload)


def proxy_label(obj) -> str:
    """How results name a proxy: a baseline's name or a proxy file's path (as given), a ``Proxy``'s source file or
    formula, a function's ``__name__`` (an object's type name when it has none)."""
    from evoproxy.tree import Proxy

    if isinstance(obj, Scorer):
        return obj.label
    if isinstance(obj, Proxy):
        return obj.source or obj.formula
    if isinstance(obj, (str, Path)):
        return str(obj).strip()
    return getattr(obj, "__name__", type(obj).__name__)


def is_proxy_file(text: str) -> bool:
    """Whether a proxy given as text (not a registered name) names a proxy file: ends in .json, has a path
    separator or is an existing file."""
    return text.lower().endswith(".json") or "/" in text or Path(text).is_file()


def _tree_scorer(proxy, label: str) -> Scorer:
    terminals = tuple(sorted(proxy.tree.terminals()))
    probes = int(proxy.extraction.get("hutchinson_probes", 0)) if uses_hessian(terminals) else 0
    bench_kind = "mq" if set(terminals) & set(QUANT_NAMES) else None
    kind = "tree" if proxy.layer_weights is None else "calibrated"
    return Scorer(label, kind, proxy.to_json(), terminals, probes, float(proxy.extraction.get("noise_std", 0.01)),
                  bench_kind)


def as_scorer(obj, label: str | None = None) -> Scorer:
    """The one resolution of a user's proxy: a :class:`Scorer` for a registered baseline name, a proxy file path
    (:func:`is_proxy_file`), a ``Proxy`` or a callable, labelled ``label`` or by :func:`proxy_label`
    (ConfigError otherwise; an unknown name lists the registered ones)."""
    from evoproxy.baselines import get_proxy, proxy_names
    from evoproxy.tree import Proxy, load_proxy

    if isinstance(obj, Scorer):
        return obj
    label = label or proxy_label(obj)
    if isinstance(obj, Proxy):
        return _tree_scorer(obj, label)
    if isinstance(obj, (str, Path)):
        text = str(obj).strip()
        if isinstance(obj, Path) or (text not in proxy_names() and is_proxy_file(text)):
            return _tree_scorer(load_proxy(text), label)
        fn = get_proxy(text)
        return Scorer(label, "baseline", text, tuple(fn.needs), 0, 0.01, fn.kind)
    if callable(obj):
        return Scorer(label, "callable", obj)
    raise ConfigError(f"a proxy must be a registered name, a proxy file, a Proxy or a callable; got {type(obj).__name__}")


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
    probes = {s.probes for s in scorers if s.reads == STATISTICS and s.probes}
    noise = {s.noise_std for s in scorers if s.reads == STATISTICS and any("@" in n for n in s.needs)}
    if len(probes) > 1 or len(noise) > 1:
        raise ConfigError("proxy files scored together must use the same hutchinson_probes and noise_std")


def reason(exc: BaseException) -> str:
    """One line for an exception: its type and (the start of) its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def score_item(workspace, item, scorers: list[Scorer], batch: int = 64, seed: int = PROXY_SEED, progress: bool = False,
               device=None) -> dict:
    """Every scorer on one item of ``workspace``'s benchmark (a :class:`primitives.workspace.Workspace`):
    {"id", "scores", "errors", "seconds"}; ``progress`` shows a bar
    over the scorers and inside long per-network computations (the network phase of :func:`score_items`).
    ``device`` (cpu | cuda | auto; None: cpu): where statistics are extracted and where baselines and
    callables get the network and the batch. Each scorer's value is asked of its kind (:meth:`Scorer.bind`) on
    what it reads: the item's statistics or a ProxyContext of the item's network."""
    from evoproxy.baselines import ProxyContext
    from primitives.core import fixed_threads

    on = resolve_device(device)
    result = {"id": item, "scores": {}, "errors": {}, "seconds": {}}
    values = {s.label: s.bind() for s in scorers}
    on_stats = [s for s in scorers if s.reads == STATISTICS]
    probes = max([s.probes for s in on_stats], default=0)
    noise = next((s.noise_std for s in on_stats if any("@" in n for n in s.needs)), 0.01)
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

        reads = {STATISTICS: lambda s: stats(s.needs, probes, noise), CONTEXT: lambda s: context()}
        users = []
        for s in _bar(scorers, f"network {bench.network_key(item)[:40]}", progress):
            before, t0 = dict(spent), time.perf_counter()
            try:
                value = values[s.label](reads[s.reads](s))
                if not math.isfinite(value):
                    result["errors"][s.label] = f"non-finite score ({value})"
            except Exception as exc:
                value = math.nan
                prefix = "build failed: " if spent["build"] == before["build"] and not ctx_box and s.reads == CONTEXT else ""
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


def proxy_statistics(proxy, model, inputs, targets, bit_configs=None, quantizer=None) -> list:
    """The statistics ``proxy`` (anything :func:`as_scorer` takes) reads, for one network and its bit configurations
    (:func:`primitives.items.model_statistics` with the scorer's request)."""
    from primitives.items import model_statistics

    scorer = as_scorer(proxy)
    request = StatsRequest.of(scorer.needs, scorer.probes, scorer.noise_std, batch=len(inputs))
    return model_statistics(model, inputs, targets, request, bit_configs, quantizer)
