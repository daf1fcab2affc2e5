"""The one evaluator of proxy trees: a tree evaluated over many networks at once (a single network is a
stack of one), with the operators of :mod:`evoproxy.opkernels` on batches.

    st = stack(stats)                                   # once per list of NetworkStats
    result = tree_values(tree.to_json(), st, 0, len(stats))
    result.values, result.error          # float64 scores of samples start..; (sample, OpError) of the first raise
    layer_terms(tree_json, stack([net], positions=True), 0, 1)   # per-layer terms (calibration, calibrated proxies)

**Stacking.** The (sample, layer) pairs of all samples are grouped by their *signature*, the shapes of
every statistic's tensor of the layer (of ``names`` only, when given), so that in one group every statistic
has one shape and every tensor expression of a tree has one result shape. Per group and statistic the
distinct tensors (by identity: MQ configurations share the network's FP tensors, and quantized weights per
bit-width) are stacked once into one ``[U, *shape]`` float32 tensor; each pair keeps its index into it.
Pairs are ordered by (sample, layer), so a range of samples is a contiguous slice of every group.

**Evaluating** a tree on a sample range: per group, the distinct combinations of the group's
statistics' tensors are the items (NAS-Bench-201: every pair, as views; MQ: the few distinct bit-widths of a
layer, gathered once per range and kept); the tree's tensor part runs once per group on ``[items, *shape]``
batches with the registered operator functions (:data:`evoproxy.ops.OPS`, the kernels), reduces to float64
layer scalars, which are scattered into a ``[samples, layers]`` matrix; the aggregations are masked row
operations over it. :func:`layer_terms` gives the root aggregation's per-layer terms instead, whose sum is the
tree's value: what ``evoproxy calibrate`` weighs, and what a calibrated proxy's learned weights multiply
(:func:`evoproxy.tree.calibrated_value`).

**Errors.** Every :class:`OpError` of the language depends only on shapes, so a first pass evaluates
each group's tree on one item and finds the first (sample, aggregation subtree, layer) that raises,
in the order of a network's own evaluation (aggregation subtrees left to right, layers in order); values
are then computed only for the samples before it, so a caller can reject on a non-finite earlier score
first, exactly as a loop over the samples would.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from evoproxy.opkernels import OpError, layer_position, terms_of
from evoproxy.ops import OPS


def _fn(name: str):
    """The operator's function (every registered operator takes batched arguments)."""
    return OPS[name].fn


# ------------------------------------------------------------------------------------- the stacked statistics

@dataclass
class Group:
    """The (sample, layer) pairs of one signature, ordered by (sample, layer), and their stacked tensors."""

    sample: np.ndarray  # [pairs] sample index of each pair
    layer: np.ndarray  # [pairs] layer index
    stores: dict  # statistic name -> [distinct tensors, *shape] float32
    index: dict  # statistic name -> [pairs] index into stores[name]

    def is_identity(self, name: str) -> bool:
        return self.stores[name].shape[0] == len(self.sample)


@dataclass
class Stacked:
    """The statistics of a list of networks, stacked per signature group (see the module docstring)."""

    groups: list
    n_layers: np.ndarray  # [samples]
    counts: torch.Tensor  # [samples, max layers] float64 weight counts, 0 past a sample's last layer
    mask: torch.Tensor  # [samples, max layers] bool
    plans: dict = field(default_factory=dict)
    nbytes: int = 0  # bytes held by the stacked tensors
    memo: dict = field(default_factory=dict)  # (subtree, start, stop, first_only) -> (layer values, errors); LRU order
    memo_bytes: int = 0
    positions: list | None = None  # per sample, its layers' evoproxy.opkernels.layer_position keys (stack(positions=True))

    def __post_init__(self):
        self.nbytes = sum(t.numel() * t.element_size() for g in self.groups for t in g.stores.values())


def stack(stats, names=None, positions: bool = False) -> Stacked:
    """Stack ``stats`` (a list of :class:`primitives.NetworkStats`): all statistics, or those in ``names``
    (the terminals of the trees to evaluate); ``positions``: keep the layers' position keys (for layer weights)."""
    members: dict = {}  # signature -> [(sample, layer, tensors)]
    for s, net in enumerate(stats):
        for i, layer in enumerate(net.layers):
            sig = tuple(sorted((n, tuple(t.shape)) for n, t in layer.tensors.items() if names is None or n in names))
            members.setdefault(sig, []).append((s, i, layer.tensors))
    groups = []
    for sig, items in members.items():
        stores, index = {}, {}
        for name, _ in sig:
            seen: dict = {}
            tensors = []
            idx = np.empty(len(items), dtype=np.int64)
            for j, (_, _, ts) in enumerate(items):
                t = ts[name]
                if id(t) not in seen:
                    seen[id(t)] = len(tensors)
                    tensors.append(t if t.dtype == torch.float32 else t.float())
                idx[j] = seen[id(t)]
            stores[name] = torch.stack(tensors)
            index[name] = idx
        groups.append(Group(np.array([m[0] for m in items], dtype=np.int64),
                            np.array([m[1] for m in items], dtype=np.int64), stores, index))
    n_layers = np.array([len(net.layers) for net in stats], dtype=np.int64)
    width = max(1, int(n_layers.max(initial=0)))
    counts = torch.zeros(len(stats), width, dtype=torch.float64)
    for s, net in enumerate(stats):
        for i, layer in enumerate(net.layers):
            counts[s, i] = float(np.prod(layer.weight_shape, dtype=np.int64))
    mask = torch.arange(width)[None, :] < torch.as_tensor(n_layers)[:, None]
    keys = [[layer_position(l.name, l.weight_shape) for l in net.layers] for net in stats] if positions else None
    return Stacked(groups, n_layers, counts, mask, positions=keys)


@dataclass
class _Part:
    """One group's share of a sample range: its items (the distinct combinations of all of the group's
    statistics' tensors) and where each pair's layer value goes."""

    group: Group
    lo: int
    hi: int
    env: dict  # name -> [items, *shape] float32: views of the store where item i is pair i, else gathered copies
    inverse: torch.Tensor | None  # [pairs] item of each pair (None: item i is pair i)
    flat: torch.Tensor  # [pairs] (sample - start) * max layers + layer: each pair's place in the values matrix

    def items(self, names: frozenset, first_only: bool = False) -> dict:
        """The tensors of ``names`` present in the group (all items, or the first only)."""
        if first_only:
            return {n: t[:1] for n, t in self.env.items() if n in names}
        return {n: t for n, t in self.env.items() if n in names}


def _plan(st: Stacked, start: int, stop: int) -> list:
    """The parts of samples ``start .. stop - 1`` (built once per range and kept; at most 8 ranges)."""
    key = (start, stop)
    if key in st.plans:
        return st.plans[key]
    parts = []
    for g in st.groups:
        lo, hi = int(np.searchsorted(g.sample, start)), int(np.searchsorted(g.sample, stop))
        if hi <= lo:
            continue
        inverse = None
        if all(g.is_identity(n) for n in g.stores):
            env = {n: t[lo:hi] for n, t in g.stores.items()}
        else:
            code = np.zeros(hi - lo, dtype=np.int64)  # mixed-radix number of each pair's combination
            for n, t in g.stores.items():
                code = code * t.shape[0] + g.index[n][lo:hi]
            _, first, inv = np.unique(code, return_index=True, return_inverse=True)
            if len(first) == hi - lo:  # every pair distinct: items in pair order
                first = np.arange(hi - lo)
            else:
                inverse = torch.as_tensor(inv.reshape(-1))
            env = {n: t[lo:hi] if g.is_identity(n) and inverse is None else t[torch.as_tensor(g.index[n][lo:hi][first])]
                   for n, t in g.stores.items()}
        flat = torch.as_tensor((g.sample[lo:hi] - start) * st.counts.shape[1] + g.layer[lo:hi])
        parts.append(_Part(g, lo, hi, env, inverse, flat))
    if len(st.plans) >= 8:
        st.plans.clear()
    st.plans[key] = parts
    return parts


def plan_nbytes(st: Stacked) -> int:
    """Bytes of the gathered (copied) items of the plans built so far (views of the stacked tensors excluded)."""
    return sum(t.numel() * t.element_size() for parts in st.plans.values() for p in parts for t in p.env.values()
               if t._base is None)


# ------------------------------------------------------------------------------------- evaluation

def _tensor(tree, env: dict) -> torch.Tensor:
    if isinstance(tree, str):
        t = env.get(tree)
        if t is None:
            raise OpError("missing", f"statistic {tree!r} not extracted for this layer")
        return t
    return _fn(tree[0])(*(_tensor(c, env) for c in tree[1:]))


def _layer(tree, env: dict) -> torch.Tensor:
    """[items] float64 layer scalars of a layer-level tree."""
    if len(tree) == 2:
        if tree[0] == "numel" and env:  # depends on the shape only, which every item of a group shares: one item
            one = _tensor(tree[1], {n: t[:1] for n, t in env.items()})
            return torch.full((len(next(iter(env.values()))),), float(one[0].numel()), dtype=torch.float64)
        return _fn(tree[0])(_tensor(tree[1], env))
    return _fn(tree[0])(_layer(tree[1], env), _layer(tree[2], env))


def _terminals(tree) -> frozenset:
    return frozenset([tree]) if isinstance(tree, str) else frozenset().union(*(_terminals(c) for c in tree[1:]))


@dataclass
class Result:
    """Scores of samples ``start .. start + len(values) - 1`` and the first error after them."""

    values: np.ndarray
    error: tuple | None = None  # (sample index, OpError): the first sample whose evaluation raises


def _first(errors: list, st: Stacked, start: int, stop: int):
    """(sample, OpError) of the first raising sample in a network's own evaluation order (aggregation
    subtrees left to right, layers in order), from ``errors`` [(subtree index, sample, layer, OpError)], or None."""
    best = None  # (sample, subtree, layer, error)
    empty = np.flatnonzero(st.n_layers[start:stop] == 0)
    if len(empty):
        best = (start + int(empty[0]), -1, -1, OpError("shape", "network without Conv2d/Linear layers"))
    for a, first, layer, exc in errors:
        if best is None or (first, a, layer) < best[:3]:
            best = (first, a, layer, exc)
    return None if best is None else (best[0], best[3])


CHUNK_BYTES = 1 << 20  # items of a group are evaluated in chunks of about this many bytes per terminal (cache-sized)


def _layer_chunked(sub, env: dict) -> torch.Tensor:
    n = len(next(iter(env.values()))) if env else 1
    step = max(1, CHUNK_BYTES // max(4 * max((t[:1].numel() for t in env.values()), default=0), 1))
    if step >= n:
        return _layer(sub, env)
    return torch.cat([_layer(sub, {k: v[i:i + step] for k, v in env.items()}) for i in range(0, n, step)])


def _net(tree, st: Stacked, start: int, stop: int, scan: dict) -> torch.Tensor:
    """[stop - start] float64 values of a net-level tree (errors in ``scan["errors"]``; see tree_values)."""
    if len(tree) == 3:
        return _fn(tree[0])(_net(tree[1], st, start, stop, scan), _net(tree[2], st, start, stop, scan))
    sub = tree[1]
    a = scan["subtrees"] = scan["subtrees"] + 1
    values, errors = _layer_values(sub, st, start, stop, scan["first_only"])
    scan["errors"] += [(a, *e) for e in errors]
    return _fn(tree[0])(values, st.mask[start:stop], st.counts[start:stop])


MEMO_BYTES = 64 << 20  # layer values of recent layer-level subtrees kept per stacked set (least recently used go)


def _layer_values(sub, st: Stacked, start: int, stop: int, first_only: bool):
    """([samples, max layers] float64 values of the layer-level tree ``sub``, 0 where it raises or past a sample's
    last layer (all 0 when ``first_only``); [(sample, layer, OpError)] of the first pair of each group that raises),
    memoised per stacked set: subtrees recur across the trees of a population and within a tree."""
    key = (repr(sub), start, stop, first_only)
    hit = st.memo.pop(key, None)
    if hit is None:
        values = torch.zeros(stop - start, st.counts.shape[1], dtype=torch.float64)
        errors = []
        names = _terminals(sub)
        for part in _plan(st, start, stop):  # a part that raises is recorded, left 0
            try:
                v = _layer_chunked(sub, part.items(names, first_only))
            except OpError as exc:  # the part's first pair: its first sample's first layer in the group
                errors.append((int(part.group.sample[part.lo]), int(part.group.layer[part.lo]), exc))
                continue
            if not first_only:
                values.view(-1).index_copy_(0, part.flat, v if part.inverse is None else v[part.inverse])
        hit = (values, errors)
        st.memo_bytes += values.numel() * 8
        while st.memo and st.memo_bytes > MEMO_BYTES:
            st.memo_bytes -= st.memo.pop(next(iter(st.memo)))[0].numel() * 8
    st.memo[key] = hit  # (re)inserted last: the dict's order is the recency order
    return hit


PROBE_BYTES = 64 << 20  # stacks larger than this find errors on one item per group first


def tree_values(tree, st: Stacked, start: int, stop: int, probe: bool | None = None) -> Result:
    """The values of ``tree`` (JSON form, net level) on samples ``start .. stop - 1`` of ``st``, up to
    the first sample that raises (see :class:`Result`); may be nan/inf. ``probe``: find the errors on
    one item per group before computing values (default: for stacks over ``PROBE_BYTES``), so that a
    rejected tree costs little; else one pass computes everything and keeps the values before the error."""
    probe = st.nbytes > PROBE_BYTES if probe is None else probe
    with torch.no_grad():
        scan = {"errors": [], "subtrees": -1, "first_only": probe}
        values = _net(tree, st, start, stop, scan)
        err = _first(scan["errors"], st, start, stop)
        end = stop if err is None else err[0]
        if probe:
            scan = {"errors": [], "subtrees": -1, "first_only": False}
            values = _net(tree, st, start, end, scan) if end > start else values[:0]
        values = values[:end - start]
    return Result(values.numpy(), err)




def layer_terms(tree, st: Stacked, start: int, stop: int) -> Result:
    """The per-layer terms of ``tree`` (its root an aggregation over layers; OpError "structure" otherwise) on
    samples ``start .. stop - 1``: ``values`` [samples, max layers] (0 past a sample's last layer), up to the
    first sample that raises, as :func:`tree_values`."""
    terms = terms_of(tree, {tree[0]: _fn(tree[0])} if isinstance(tree, list) else {})
    with torch.no_grad():
        values, errors = _layer_values(tree[1], st, start, stop, False)
        err = _first([(0, *e) for e in errors], st, start, stop)
        end = stop if err is None else err[0]
        out = terms(values[:end - start], st.mask[start:end], st.counts[start:end])
    return Result(out.numpy(), err)
