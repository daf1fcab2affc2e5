"""The batched operators of the vectorised scoring path (:mod:`evoproxy.vectorised`): each operator of
the proxy language applied to a stack of items at once, equal to its kernel function
(:mod:`evoproxy.opkernels`) applied to every item, within float rounding.

Tensor operators take and return ``[items, *shape]`` float32 tensors (each item is one layer's tensor);
reductions return ``[items]`` float64; scalar binary operators work on ``[n]`` float64; aggregations map
``[samples, layers]`` float64 values (0 past a sample's last layer), the mask and the weight counts to
``[samples]``. An operator without a batched form loops over the items with its kernel function
(:func:`batched_op`). Shape errors are the kernels' :class:`OpError`, raised for the whole stack (every
item of a stack has one shape).
"""
from __future__ import annotations

import math

import torch

from evoproxy import opkernels as k
from evoproxy.opkernels import OpError

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
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


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
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


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
    """a, b viewed so that each item broadcasts as the per-sample operator's one does (equal shapes, or one
    side with a single element; shapes computed here: torch.broadcast_shapes imports sympy on first use)."""
    sa, sb = a.shape[1:], b.shape[1:]
    if sa == sb:
        return a, b
    na, nb = math.prod(sa), math.prod(sb)
    if na != 1 and nb != 1:
        raise OpError("shape", f"{name}: shapes {tuple(sa)} and {tuple(sb)} differ")
    rank = max(len(sa), len(sb))
    if na == 1 and (nb != 1 or len(sa) <= len(sb)):  # a single element against b (or both single: b's rank wins)
        return a.reshape(a.shape[0], *([1] * rank)), b.reshape(b.shape[0], *([1] * (rank - len(sb))), *sb)
    return a.reshape(a.shape[0], *([1] * (rank - len(sa))), *sa), b.reshape(b.shape[0], *([1] * rank))


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
    return torch.full((x.shape[0],), float(math.prod(x.shape[1:])), dtype=torch.float64)


@batched("max")
def _red_max(x):
    return _nonempty(_flat(x), "max").amax(dim=1).double()


@batched("min")
def _red_min(x):
    return _nonempty(_flat(x), "min").amin(dim=1).double()


@batched("logdet")
def _red_logdet(x):
    """log det(K + r I), K = X X^T [n, n], r = 1e-6 tr(K) / n. With m < n columns, by Sylvester's determinant
    identity from the smaller Gram X^T X [m, m] (same trace, same nonzero eigenvalues): log det(X^T X + r I_m)
    + (n - m) log r. Items whose K is not finite or not positive (nan there) take the n x n way."""
    rows = _rows(x, "logdet").double()
    n, m = rows.shape[1], rows.shape[2]
    if m >= n or rows.shape[0] == 0:
        return _logdet_full(rows)
    small = torch.bmm(rows.transpose(1, 2), rows)
    trace = small.diagonal(dim1=1, dim2=2).sum(dim=1)
    ridge = k.RIDGE * trace / n
    sign, value = torch.linalg.slogdet(small + ridge[:, None, None] * torch.eye(m, dtype=small.dtype))
    value = value + (n - m) * ridge.log()
    good = torch.isfinite(trace) & (ridge > 0) & (sign > 0) & torch.isfinite(value)
    if not bool(good.all()):
        bad = (~good).nonzero().flatten()
        value[bad] = _logdet_full(rows[bad])
    return value


def _logdet_full(rows: torch.Tensor) -> torch.Tensor:
    """log det(K + r I) of K = X X^T for float64 ``rows`` X [items, n, m] (the kernel's way; nan if not positive)."""
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
