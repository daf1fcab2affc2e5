"""Vectorised scoring: a tree evaluated over all search samples at once, equal to the per-sample
evaluator (:func:`evoproxy.opkernels.evaluate_tree`) within float rounding.

    result = evaluate(tree.to_json(), stack(stats), 0, len(stats))   # stack(): once per list of NetworkStats
    result.values, result.error          # float64 scores of samples start..; (sample, OpError) of the first raise

**Stacking.** The (sample, layer) pairs of all samples are grouped by their *signature*, the shapes of
every primitive tensor of the layer, so that in one group every primitive has one shape and every
tensor expression of a tree has one result shape. Per group and primitive the distinct tensors (by
identity: MQ configurations share the network's FP tensors, and quantized weights per bit-width) are
stacked once into one ``[U, *shape]`` float32 tensor; each pair keeps its index into it. Pairs are
ordered by (sample, layer), so a range of samples is a contiguous slice of every group.

**Evaluating** a tree on a sample range: per group, the distinct combinations of the tree's
terminals' tensors are the items (NAS-Bench-201: every pair; MQ: the few distinct bit-widths of a
layer, the FP tensors once); the tree's tensor part runs once per group on ``[items, *shape]``
batches with the batched operators of :data:`BATCHED` (an operator without one loops over the items
with its own function), reduces to float64 layer scalars, which are scattered into a ``[samples,
layers]`` matrix; the aggregations are masked row operations over it. Reductions compute in float64
from the float32 tensors, like the per-sample ones.

**Errors.** Every :class:`OpError` of the language depends only on shapes, so a first pass evaluates
each group's tree on one item and finds the first (sample, aggregation subtree, layer) that raises,
in the per-sample evaluator's order; values are then computed only for the samples before it, so a
caller can reject on a non-finite earlier score first, exactly as the per-sample loop does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from evoproxy import opkernels as k
from evoproxy.opkernels import OpError

BATCHED: dict = {}  # operator name -> function of batched arguments ([items, *shape] tensors, or [n] float64 scalars)


def batched(*names):
    """Register the batched form of operators ``names`` (used as a decorator)."""

    def wrap(fn):
        for name in names:
            BATCHED[name] = fn
        return fn

    return wrap


# ------------------------------------------------------------------------------------- tensor operators
# elementwise unary operators: the kernel functions themselves work on a stack
for _name, _fn in (("abs", k.op_abs), ("neg", k.op_neg), ("square", k.op_square), ("sqrt", k.op_sqrt),
                   ("log", k.op_log), ("exp", k.op_exp), ("relu", k.op_relu), ("sign", k.op_sign),
                   ("sigmoid", k.op_sigmoid), ("tanh", k.op_tanh), ("inv", k.op_inv)):
    batched(_name)(_fn)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[items, *shape] -> [items, numel of one item]"""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


@batched("softmax")
def _softmax(x):
    return torch.softmax(_flat(x), dim=1).reshape(x.shape)


batched("softmax0")(lambda x: torch.ones_like(x) if x.dim() == 1 else torch.softmax(x, dim=1))  # per item's dim 0


@batched("znorm")
def _znorm(x):
    f = _flat(x)
    if f.shape[1] < 2:
        return torch.zeros_like(x)
    mean = f.mean(dim=1, keepdim=True)
    std = f.std(dim=1, keepdim=True)
    return ((f - mean) / (std + k.EPS)).reshape(x.shape)


@batched("minmax")
def _minmax(x):
    f = _flat(x)
    if f.shape[1] == 0:
        raise OpError("shape", "minmax of an empty tensor")
    lo, hi = f.amin(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)
    return ((f - lo) / (hi - lo + k.EPS)).reshape(x.shape)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 1:
        raise OpError("shape", f"{name} of a 0-d tensor")
    if x.shape[1] > k.GRAM_MAX_ROWS:
        raise OpError("size", f"{name} needs at most {k.GRAM_MAX_ROWS} rows, got {x.shape[1]}")
    return x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)))


@batched("gram")
def _gram(x):
    rows = _rows(x, "gram")
    return torch.bmm(rows, rows.transpose(1, 2))


@batched("batch_mean")
def _batch_mean(x):
    if x.dim() < 3:
        raise OpError("shape", f"batch_mean needs >= 2 dims, got shape {tuple(x.shape[1:])}")
    return x.mean(dim=1)


@batched("batch_std")
def _batch_std(x):
    if x.dim() < 3 or x.shape[1] < 2:
        raise OpError("shape", f"batch_std needs >= 2 dims and >= 2 rows, got shape {tuple(x.shape[1:])}")
    return x.std(dim=1)


def _broadcast(a: torch.Tensor, b: torch.Tensor, name: str):
    """a, b viewed so that each item broadcasts as the per-sample operator's one does."""
    sa, sb = a.shape[1:], b.shape[1:]
    if sa == sb:
        return a, b
    if sa.numel() != 1 and sb.numel() != 1:
        raise OpError("shape", f"{name}: shapes {tuple(sa)} and {tuple(sb)} differ")
    out = torch.broadcast_shapes(sa, sb)
    return tuple(t.reshape(t.shape[0], *([1] * (len(out) - len(s))), *s) for t, s in ((a, sa), (b, sb)))


@batched("add")
def _add(a, b):
    a, b = _broadcast(a, b, "add")
    return a + b


@batched("sub")
def _sub(a, b):
    a, b = _broadcast(a, b, "sub")
    return a - b


@batched("mul")
def _mul(a, b):
    a, b = _broadcast(a, b, "mul")
    return a * b


@batched("div")
def _div(a, b):
    a, b = _broadcast(a, b, "div")
    return a * k.op_inv(b)


@batched("matmul")
def _matmul(a, b):
    ra, rb = _rows(a, "matmul"), _rows(b, "matmul")
    if ra.shape[2] != rb.shape[2]:
        raise OpError("shape", f"matmul: row lengths {ra.shape[2]} and {rb.shape[2]} differ")
    return torch.bmm(ra, rb.transpose(1, 2))


# ------------------------------------------------------------------------------------- reductions -> [items] float64

def _nonempty(f: torch.Tensor, name: str) -> torch.Tensor:
    if f.shape[1] == 0:
        raise OpError("shape", f"{name} of an empty tensor")
    return f


@batched("mean")
def _red_mean(x):
    return _nonempty(_flat(x), "mean").double().mean(dim=1)


@batched("sum")
def _red_sum(x):
    return _flat(x).double().sum(dim=1)


@batched("l1")
def _red_l1(x):
    return _flat(x).double().abs().sum(dim=1)


@batched("fro")
def _red_fro(x):
    return _flat(x).double().pow(2).sum(dim=1).sqrt()


@batched("std")
def _red_std(x):
    f = _flat(x)
    if f.shape[1] < 2:
        return torch.zeros(f.shape[0], dtype=torch.float64)
    return f.double().std(dim=1)


@batched("numel")
def _red_numel(x):
    return torch.full((x.shape[0],), float(np.prod(x.shape[1:], dtype=np.int64)), dtype=torch.float64)


@batched("max")
def _red_max(x):
    return _nonempty(_flat(x), "max").amax(dim=1).double()


@batched("min")
def _red_min(x):
    return _nonempty(_flat(x), "min").amin(dim=1).double()


@batched("logdet")
def _red_logdet(x):
    rows = _rows(x, "logdet").double()
    kk = torch.bmm(rows, rows.transpose(1, 2))
    n = kk.shape[1]
    ridge = k.RIDGE * kk.diagonal(dim1=1, dim2=2).sum(dim=1) / n
    sign, value = torch.linalg.slogdet(kk + ridge[:, None, None] * torch.eye(n, dtype=kk.dtype))
    return torch.where(sign > 0, value, torch.full_like(value, float("nan")))


# ------------------------------------------------------------------------------------- scalar binary ([n] float64)

@batched("ladd", "nadd")
def _s_add(a, b):
    return a + b


@batched("lsub", "nsub")
def _s_sub(a, b):
    return a - b


@batched("lmul", "nmul")
def _s_mul(a, b):
    return a * b


@batched("ldiv", "ndiv")
def _s_div(a, b):
    return a / (b + torch.where(b >= 0, k.EPS, -k.EPS))


# ------------------------------------------------------------------------------------- aggregations
# fn(values [samples, layers] float64 (0 past a sample's last layer), mask, counts [samples, layers]) -> [samples]

@batched("layer_sum")
def _agg_sum(v, mask, counts):
    return v.sum(dim=1)


@batched("layer_mean")
def _agg_mean(v, mask, counts):
    return v.sum(dim=1) / mask.sum(dim=1)


@batched("layer_meanlog")
def _agg_meanlog(v, mask, counts):
    logs = v.abs().clamp_min(k.LOG_FLOOR).log()
    return torch.where(mask, logs, 0.0).sum(dim=1) / mask.sum(dim=1)


@batched("layer_pweighted")
def _agg_pweighted(v, mask, counts):
    return (v * counts).sum(dim=1) / counts.sum(dim=1)


def _fallback(name: str):
    """The per-item loop of an operator without a batched form (its kernel function on each item)."""
    from evoproxy.ops import OPS

    op = OPS[name]
    if op.kind in ("unary", "binary"):
        return lambda *args: torch.stack([op.fn(*(a[i] for a in args)) for i in range(args[0].shape[0])])
    if op.kind == "reduce":
        return lambda x: torch.tensor([float(op.fn(x[i])) for i in range(x.shape[0])], dtype=torch.float64)
    if op.kind == "aggregate":
        return lambda v, mask, counts: torch.tensor(
            [op.fn(v[i][mask[i]].tolist(), counts[i][mask[i]].tolist()) for i in range(v.shape[0])], dtype=torch.float64)
    return lambda a, b: torch.tensor([float(op.fn(float(x), float(y))) for x, y in zip(a.tolist(), b.tolist())],
                                     dtype=torch.float64)


def batched_op(name: str):
    fn = BATCHED.get(name)
    return fn if fn is not None else _fallback(name)


# ------------------------------------------------------------------------------------- the stacked statistics

@dataclass
class Group:
    """The (sample, layer) pairs of one signature, ordered by (sample, layer), and their stacked tensors."""

    sample: np.ndarray  # [pairs] sample index of each pair
    layer: np.ndarray  # [pairs] layer index
    stores: dict  # primitive name -> [distinct tensors, *shape] float32
    index: dict  # primitive name -> [pairs] index into stores[name]

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

    def __post_init__(self):
        self.nbytes = sum(t.numel() * t.element_size() for g in self.groups for t in g.stores.values())


def stack(stats) -> Stacked:
    """Stack ``stats`` (a list of :class:`primitives.NetworkStats`); see the module docstring."""
    members: dict = {}  # signature -> [(sample, layer, tensors)]
    for s, net in enumerate(stats):
        for i, layer in enumerate(net.layers):
            sig = tuple(sorted((n, tuple(t.shape)) for n, t in layer.tensors.items()))
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
    return Stacked(groups, n_layers, counts, mask)


@dataclass
class _Part:
    """One group's share of a sample range, for the terminals of one tree."""

    group: Group
    lo: int
    hi: int
    select: dict  # name -> slice or LongTensor into the group's store
    inverse: torch.Tensor | None  # [pairs] item of each pair (None: item i is pair i)
    flat: torch.Tensor  # [pairs] (sample - start) * max layers + layer: each pair's place in the values matrix
    gathered: dict | None = None

    def env(self, first_only: bool = False) -> dict:
        stores = self.group.stores
        if first_only:
            return {n: stores[n][s][:1] if isinstance(s, slice) else stores[n][s[:1]] for n, s in self.select.items()}
        if self.gathered is None:  # views for slices; gathered (copied) distinct items kept with the plan
            self.gathered = {n: stores[n][s] for n, s in self.select.items()}
        return self.gathered


def _plan(st: Stacked, names: frozenset, start: int, stop: int) -> list:
    key = (names, start, stop)
    if key in st.plans:
        return st.plans[key]
    parts = []
    for g in st.groups:
        lo, hi = int(np.searchsorted(g.sample, start)), int(np.searchsorted(g.sample, stop))
        if hi <= lo:
            continue
        used = sorted(n for n in names if n in g.stores)
        if all(g.is_identity(n) for n in used):
            select, inverse = {n: slice(lo, hi) for n in used}, None
        elif used:
            code = np.zeros(hi - lo, dtype=np.int64)  # mixed-radix number of each pair's combination
            for n in used:
                code = code * g.stores[n].shape[0] + g.index[n][lo:hi]
            _, first, inv = np.unique(code, return_index=True, return_inverse=True)
            select = {n: torch.as_tensor(g.index[n][lo:hi][first]) for n in used}
            inverse = torch.as_tensor(inv.reshape(-1))
        else:  # no terminal of the tree in this group: evaluation raises "missing" on one item
            select, inverse = {}, torch.zeros(hi - lo, dtype=torch.long)
        flat = torch.as_tensor((g.sample[lo:hi] - start) * st.counts.shape[1] + g.layer[lo:hi])
        parts.append(_Part(g, lo, hi, select, inverse, flat))
    if len(st.plans) > 512:
        st.plans.clear()
    st.plans[key] = parts
    return parts


# ------------------------------------------------------------------------------------- evaluation

def _tensor(tree, env: dict) -> torch.Tensor:
    if isinstance(tree, str):
        t = env.get(tree)
        if t is None:
            raise OpError("missing", f"primitive {tree!r} not extracted for this layer")
        return t
    return batched_op(tree[0])(*(_tensor(c, env) for c in tree[1:]))


def _layer(tree, env: dict) -> torch.Tensor:
    """[items] float64 layer scalars of a layer-level tree."""
    if len(tree) == 2:
        return batched_op(tree[0])(_tensor(tree[1], env))
    return batched_op(tree[0])(_layer(tree[1], env), _layer(tree[2], env))


def _terminals(tree) -> frozenset:
    return frozenset([tree]) if isinstance(tree, str) else frozenset().union(*(_terminals(c) for c in tree[1:]))


@dataclass
class Result:
    """Scores of samples ``start .. start + len(values) - 1`` and the first error after them."""

    values: np.ndarray
    error: tuple | None = None  # (sample index, OpError): the first sample whose evaluation raises


def _first(errors: list, st: Stacked, start: int, stop: int):
    """(sample, OpError) of the first raising sample in the per-sample evaluator's order (aggregation
    subtrees left to right, layers in order), from ``errors`` [(subtree index, part, OpError)], or None."""
    best = None  # (sample, subtree, layer, error)
    empty = np.flatnonzero(st.n_layers[start:stop] == 0)
    if len(empty):
        best = (start + int(empty[0]), -1, -1, OpError("shape", "network without Conv2d/Linear layers"))
    for a, part, exc in errors:
        samples = part.group.sample[part.lo:part.hi]
        first = int(samples[0])
        layer = int(part.group.layer[part.lo + int(np.searchsorted(samples, first))])
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
    """[stop - start] float64 values of a net-level tree (errors in ``scan["errors"]``; see evaluate)."""
    if len(tree) == 3:
        return batched_op(tree[0])(_net(tree[1], st, start, stop, scan), _net(tree[2], st, start, stop, scan))
    sub, memo = tree[1], scan["memo"]
    key = repr(sub)
    a = scan["subtrees"] = scan["subtrees"] + 1
    if key not in memo:
        values = torch.zeros(stop - start, st.counts.shape[1], dtype=torch.float64)
        for part in _plan(st, _terminals(sub), start, stop):  # a part that raises is recorded, left 0
            try:
                v = _layer_chunked(sub, part.env(scan["first_only"]))
            except OpError as exc:
                scan["errors"].append((a, part, exc))
                continue
            if not scan["first_only"]:
                values.view(-1).index_copy_(0, part.flat, v if part.inverse is None else v[part.inverse])
        memo[key] = values
    return batched_op(tree[0])(memo[key], st.mask[start:stop], st.counts[start:stop])


PROBE_BYTES = 64 << 20  # stacks larger than this find errors on one item per group first


def evaluate(tree, st: Stacked, start: int, stop: int, probe: bool | None = None) -> Result:
    """The values of ``tree`` (JSON form, net level) on samples ``start .. stop - 1`` of ``st``, up to
    the first sample that raises (see :class:`Result`); may be nan/inf. ``probe``: find the errors on
    one item per group before computing values (default: for stacks over ``PROBE_BYTES``), so that a
    rejected tree costs little; else one pass computes everything and keeps the values before the error."""
    probe = st.nbytes > PROBE_BYTES if probe is None else probe
    with torch.no_grad():
        scan = {"memo": {}, "errors": [], "subtrees": -1, "first_only": probe}
        values = _net(tree, st, start, stop, scan)
        err = _first(scan["errors"], st, start, stop)
        end = stop if err is None else err[0]
        if probe:
            scan = {"memo": {}, "errors": [], "subtrees": -1, "first_only": False}
            values = _net(tree, st, start, end, scan) if end > start else values[:0]
        values = values[:end - start]
    return Result(values.numpy(), err)
