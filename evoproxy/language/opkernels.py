"""The numeric kernels of the proxy language: one pure function per operator, with its guards, each taking
a batch of items at once, and the pieces of a tree's value on one network (a batch of one).

Tensor operators take and return ``[items, *shape]`` float32 tensors (an item is one layer's tensor; every
item of a batch has one shape); reductions return ``[items]`` float64, computed in float64 from the float32
tensors; scalar binary operators work on ``[n]`` float64; aggregations map ``values`` ``[samples, layers]``
float64 (0 past a sample's last layer), ``mask`` ``[samples, layers]`` bool (a prefix of each row: the
sample's layers) and the weight ``counts`` ``[samples, layers]`` float64 to ``[samples]``. Shape errors are
:class:`OpError`, raised for the whole batch (they depend on the items' shape only).

Torch, math and the standard library only: ``evoproxy export`` copies the functions a proxy uses from
this module's source into its standalone module, and :mod:`evoproxy.language.ops` (the registry: kinds, types, rendering,
commutativity, sampling weights) points at these functions, so the search's stacked evaluator
(:mod:`evoproxy.language.vectorised`), the library and exported proxies compute with the same code. See
:mod:`evoproxy.language.ops` for the types and the numerical guards.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-12
LOG_FLOOR = 1e-20
EXP_CLIP = 30.0
GRAM_MAX_ROWS = 512
RIDGE = 1e-6


class OpError(ArithmeticError):
    """An operator cannot be applied to these values; ``reason`` is a short rejection category."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[items, *shape] -> [items, elements of one item]"""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


# ------------------------------------------------------------------------------------- unary tensor

def op_abs(x):
    """|x|"""
    return x.abs()


def op_neg(x):
    """-x"""
    return -x


def op_square(x):
    """x^2"""
    return x * x


def op_sqrt(x):
    """sqrt(|x|)"""
    return x.abs().sqrt()


def op_log(x):
    """log(max(|x|, 1e-20))"""
    return x.abs().clamp_min(LOG_FLOOR).log()


def op_exp(x):
    """exp(min(x, 30))"""
    return x.clamp_max(EXP_CLIP).exp()


def op_relu(x):
    """max(x, 0)"""
    return x.clamp_min(0)


def op_sign(x):
    """sign(x) in {-1, 0, 1}"""
    return x.sign()


def op_sigmoid(x):
    """1 / (1 + exp(-x))"""
    return torch.sigmoid(x)


def op_tanh(x):
    """tanh(x)"""
    return torch.tanh(x)


def op_softmax(x):
    """softmax over all elements (shape kept)"""
    return torch.softmax(_flat(x), dim=1).reshape(x.shape)


def op_inv(x):
    """1 / (x + s * 1e-12), s = 1 where x >= 0 else -1 (safe reciprocal)"""
    return 1.0 / (x + torch.where(x >= 0, EPS, -EPS))


def op_znorm(x):
    """(x - mean(x)) / (std(x) + 1e-12) over all elements; 0 for a single element"""
    f = _flat(x)
    if f.shape[1] < 2:
        return torch.zeros_like(x)
    return ((f - f.mean(dim=1, keepdim=True)) / (f.std(dim=1, keepdim=True) + EPS)).reshape(x.shape)


def op_minmax(x):
    """(x - min(x)) / (max(x) - min(x) + 1e-12)"""
    f = _flat(x)
    if f.shape[1] == 0:
        raise OpError("shape", "minmax of an empty tensor")
    lo, hi = f.amin(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)
    return ((f - lo) / (hi - lo + EPS)).reshape(x.shape)


def op_gram(x):
    """X X^T with X = x reshaped to [d0, -1] (rows: first dim, e.g. samples or output channels); d0 <= 512"""
    rows = _rows(x, "gram")
    return torch.bmm(rows, rows.transpose(1, 2))


def op_batch_mean(x):
    """mean over the first dimension (samples for activations, output channels for weights); needs >= 2 dims"""
    if x.dim() < 3:
        raise OpError("shape", f"batch_mean needs >= 2 dims, got shape {tuple(x.shape[1:])}")
    return x.mean(dim=1)


def op_batch_std(x):
    """standard deviation (Bessel) over the first dimension; needs >= 2 dims and >= 2 rows"""
    if x.dim() < 3 or x.shape[1] < 2:
        raise OpError("shape", f"batch_std needs >= 2 dims and >= 2 rows, got shape {tuple(x.shape[1:])}")
    return x.std(dim=1)


def op_softmax0(x):
    """softmax along the first dimension (output channels of a weight, samples of an activation), separately for
    every index of the other dims (EMQ's softmax); a 0-d tensor gives 1"""
    if x.dim() == 1:
        return torch.ones_like(x)
    return torch.softmax(x, dim=1)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """[items, d0, *rest] -> [items, d0, elements of rest] (OpError for 0-d items or d0 > GRAM_MAX_ROWS)"""
    if x.dim() == 1:
        raise OpError("shape", f"{name} of a 0-d tensor")
    if x.shape[1] > GRAM_MAX_ROWS:
        raise OpError("size", f"{name} needs at most {GRAM_MAX_ROWS} rows, got {x.shape[1]}")
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


# ------------------------------------------------------------------------------------- binary tensor

def _broadcast(a: torch.Tensor, b: torch.Tensor, name: str):
    """a, b viewed so that each item pair broadcasts: equal shapes, or one side with a single element (against
    the other's shape; both single: the higher rank's shape, b's on a tie). Shapes are computed here:
    torch.broadcast_shapes imports sympy on first use."""
    sa, sb = tuple(a.shape[1:]), tuple(b.shape[1:])
    if sa == sb:
        return a, b
    na, nb = math.prod(sa), math.prod(sb)
    if na != 1 and nb != 1:
        raise OpError("shape", f"{name}: shapes {sa} and {sb} differ")
    rank = max(len(sa), len(sb))
    if na == 1 and (nb != 1 or len(sa) <= len(sb)):
        return a.reshape(a.shape[0], *([1] * rank)), b.reshape(b.shape[0], *([1] * (rank - len(sb))), *sb)
    return a.reshape(a.shape[0], *([1] * (rank - len(sa))), *sa), b.reshape(b.shape[0], *([1] * rank))


def op_add(a, b):
    """a + b (equal shapes or a single-element side)"""
    a, b = _broadcast(a, b, "add")
    return a + b


def op_sub(a, b):
    """a - b (equal shapes or a single-element side)"""
    a, b = _broadcast(a, b, "sub")
    return a - b


def op_mul(a, b):
    """a * b elementwise (equal shapes or a single-element side)"""
    a, b = _broadcast(a, b, "mul")
    return a * b


def op_div(a, b):
    """a * inv(b) elementwise (safe division; equal shapes or a single-element side)"""
    a, b = _broadcast(a, b, "div")
    return a * op_inv(b)


def op_matmul(a, b):
    """A B^T with A, B = a, b reshaped to [d0, -1]; needs equal row lengths and d0 <= 512 each"""
    ra, rb = _rows(a, "matmul"), _rows(b, "matmul")
    if ra.shape[2] != rb.shape[2]:
        raise OpError("shape", f"matmul: row lengths {ra.shape[2]} and {rb.shape[2]} differ")
    return torch.bmm(ra, rb.transpose(1, 2))


# ------------------------------------------------------------------------------------- layer reductions

def _nonempty(f: torch.Tensor, name: str) -> torch.Tensor:
    if f.shape[1] == 0:
        raise OpError("shape", f"{name} of an empty tensor")
    return f


def red_mean(x):
    """mean of all elements (float64)"""
    return _nonempty(_flat(x), "mean").double().mean(dim=1)


def red_sum(x):
    """sum of all elements (float64)"""
    return _flat(x).double().sum(dim=1)


def red_l1(x):
    """sum of |x| (float64)"""
    return _flat(x).double().abs().sum(dim=1)


def red_fro(x):
    """sqrt(sum of x^2) (float64)"""
    return _flat(x).double().pow(2).sum(dim=1).sqrt()


def red_std(x):
    """standard deviation of all elements (Bessel; 0 for a single element)"""
    f = _flat(x)
    if f.shape[1] < 2:
        return torch.zeros(f.shape[0], dtype=torch.float64)
    return f.double().std(dim=1)


def red_numel(x):
    """number of elements"""
    return torch.full((x.shape[0],), float(math.prod(x.shape[1:])), dtype=torch.float64)


def red_max(x):
    """largest element"""
    return _nonempty(_flat(x), "max").amax(dim=1).double()


def red_min(x):
    """smallest element"""
    return _nonempty(_flat(x), "min").amin(dim=1).double()


def red_logdet(x):
    """log det(K + 1e-6 (tr K / d0) I), K = X X^T in float64, X = x reshaped to [d0, -1]; nan if not positive"""
    # With m < d0 columns, by Sylvester's determinant identity from the smaller Gram X^T X [m, m] (same trace,
    # same nonzero eigenvalues): log det(X^T X + r I_m) + (d0 - m) log r. Items whose K is not finite or not
    # positive (nan there) take the d0 x d0 way.
    rows = _rows(x, "logdet").double()
    n, m = rows.shape[1], rows.shape[2]
    if m >= n or rows.shape[0] == 0:
        return _logdet_full(rows)
    small = torch.bmm(rows.transpose(1, 2), rows)
    trace = small.diagonal(dim1=1, dim2=2).sum(dim=1)
    ridge = RIDGE * trace / n
    sign, value = torch.linalg.slogdet(small + ridge[:, None, None] * torch.eye(m, dtype=small.dtype))
    value = value + (n - m) * ridge.log()
    good = torch.isfinite(trace) & (ridge > 0) & (sign > 0) & torch.isfinite(value)
    if not bool(good.all()):
        bad = (~good).nonzero().flatten()
        value[bad] = _logdet_full(rows[bad])
    return value


def _logdet_full(rows: torch.Tensor) -> torch.Tensor:
    """log det(K + r I) of K = X X^T for float64 ``rows`` X [items, n, m] (nan where not positive)."""
    kk = torch.bmm(rows, rows.transpose(1, 2))
    n = kk.shape[1]
    ridge = RIDGE * kk.diagonal(dim1=1, dim2=2).sum(dim=1) / n
    sign, value = torch.linalg.slogdet(kk + ridge[:, None, None] * torch.eye(n, dtype=kk.dtype))
    return torch.where(sign > 0, value, torch.full_like(value, math.nan))


# ------------------------------------------------------------------------------------- aggregations
# fn(values, mask, counts) -> [samples] (see the module docstring). Sums are numpy's float64 sums to the last
# bit (numpy_sum, per row), the numbers the library gave when it used numpy; layer_meanlog's log is torch's.

def agg_sum(values, mask, counts):
    """sum over layers"""
    return masked_sum(values, mask)


def agg_mean(values, mask, counts):
    """mean over layers"""
    return masked_sum(values, mask) / mask.sum(dim=1)


def agg_meanlog(values, mask, counts):
    """mean over layers of log(max(|v|, 1e-20))"""
    return masked_sum(values.abs().clamp_min(LOG_FLOOR).log(), mask) / mask.sum(dim=1)


def agg_pweighted(values, mask, counts):
    """sum over layers of v_l * n_l / sum(n), n_l the layer's weight count"""
    return masked_sum(values * counts, mask) / masked_sum(counts, mask)


def masked_sum(values, mask):
    """[samples] float64: :func:`numpy_sum` of each row's first ``mask.sum()`` values (``mask`` a prefix per row)."""
    n = mask.sum(dim=1)
    out = torch.empty(values.shape[0], dtype=torch.float64)
    for k in n.unique().tolist():
        rows = (n == k).nonzero().flatten()
        out[rows] = numpy_sum(values[rows, :k])
    return out


def numpy_sum(values):
    """[rows, n] float64 -> [rows]: each row's sum rounded exactly as ``numpy.sum`` rounds it: numpy's pairwise
    summation (runs of at most 128 values added with 8 interleaved accumulators, longer runs split in halves at
    multiples of 8), started from 0.0."""
    return 0.0 + _pairwise(values, 0, values.shape[1])


def _pairwise(v, lo: int, n: int):
    if n < 8:
        total = torch.zeros(v.shape[0], dtype=torch.float64)
        for i in range(lo, lo + n):
            total = total + v[:, i]
        return total
    if n <= 128:
        acc = v[:, lo:lo + 8].clone()
        stop = lo + n - n % 8
        for i in range(lo + 8, stop, 8):
            acc += v[:, i:i + 8]
        a = acc.unbind(1)
        total = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
        for i in range(stop, lo + n):
            total = total + v[:, i]
        return total
    half = n // 2
    half -= half % 8
    return _pairwise(v, lo, half) + _pairwise(v, lo + half, n - half)


# ------------------------------------------------------------------------------------- scalar binary
# the same four functions on layer scalars (ladd ...) and on network scalars (nadd ...), [n] float64

def s_add(a, b):
    """a + b"""
    return a + b


def s_sub(a, b):
    """a - b"""
    return a - b


def s_mul(a, b):
    """a * b"""
    return a * b


def s_div(a, b):
    """a / (b + s 1e-12), s = sign(b) (1 for b = 0)"""
    return a / torch.where(b >= 0, b + EPS, b - EPS)  # in b's dtype (a where() of two numbers would be float32)


# ------------------------------------------------------------------------------------- one network
# A tree is an operator list [name, child, ...] or a terminal (a statistic's name). The typed language fixes each
# node's level: at the root (net) an operator of one argument aggregates over layers and one of two combines net
# scalars; below an aggregation (layer) one argument is a reduction of a tensor and two combine layer scalars;
# below a reduction everything is a tensor operator. One network is a batch of one: each layer's tensors go
# through the operators as [1, *shape] (the search's evaluator, evoproxy.language.vectorised, batches many; an exported
# proxy module states its tree as straight-line code over ``terminal`` and ``layer_row``; the per-network evaluator
# that runs a tree through given operator functions, for the cost meter, is evoproxy.language.cost.evaluate_tree).

def terminal(layer, name, layer_name="?"):
    """[1, *shape] float32: statistic ``name`` of one layer ({statistic name: tensor}) as a batch of one."""
    try:
        t = layer[name]
    except KeyError:
        raise OpError("missing", f"statistic {name!r} not extracted for layer {layer_name}") from None
    return (t if t.dtype == torch.float32 else t.float())[None]


def layer_row(values, counts):
    """The aggregations' arguments for one network from its layer values (``values``: [1] float64 per layer, forward
    order) and weight counts: (values [1, layers] float64, mask [1, layers] (all true), counts [1, layers] float64)."""
    if not values:
        raise OpError("shape", "network without Conv2d/Linear layers")
    c = torch.tensor([[float(n) for n in counts]], dtype=torch.float64)
    return torch.cat(values).to(torch.float64)[None], torch.ones(1, len(values), dtype=torch.bool), c


# ------------------------------------------------------------------------------------- learned layer weights
# ``evoproxy calibrate``: a tree whose root aggregates over layers is the sum of per-layer terms t_l (the
# aggregation's share of layer l); a calibrated proxy replaces that sum by sum_l w_l t_l, w_l the learned weight
# of the layer's position (``layer_position``; ``default`` for a position without one), so all weights 1 give
# the tree's value. Terms: fn(values, mask, counts) -> [samples, layers] float64 (0 past a sample's last layer).

def layer_position(name, weight_shape) -> str:
    """A layer's position key: its name and weight shape, e.g. ``cells.7.edges.3_1.1:16x16x3x3`` (NAS-Bench-201's
    names give cell x edge, the kernel size the operation), ``layer2.0.conv1:32x16x3x3`` (MQ: the layer index)."""
    return f"{name}:{'x'.join(str(int(d)) for d in weight_shape)}"


def terms_sum(values, mask, counts):
    return torch.where(mask, values, 0.0)


def terms_mean(values, mask, counts):
    return torch.where(mask, values, 0.0) / mask.sum(dim=1, keepdim=True)


def terms_meanlog(values, mask, counts):
    return torch.where(mask, values.abs().clamp_min(LOG_FLOOR).log(), 0.0) / mask.sum(dim=1, keepdim=True)


def terms_pweighted(values, mask, counts):
    return torch.where(mask, values * counts, 0.0) / masked_sum(counts, mask)[:, None]


LAYER_TERMS = {agg_sum: terms_sum, agg_mean: terms_mean, agg_meanlog: terms_meanlog, agg_pweighted: terms_pweighted}


def terms_of(tree, functions):
    """The per-layer terms function of ``tree``'s root aggregation; OpError ("structure") for another root."""
    terms = LAYER_TERMS.get(functions.get(tree[0]) if isinstance(tree, list) and len(tree) == 2 else None)
    if terms is None:
        raise OpError("structure", "layer weights need a tree whose root aggregates over layers (layer_sum, ...)")
    return terms


def position_weights(weights, keys, default=1.0):
    """[len(keys)] float64: the weight of each layer position key (``default`` for a key without one)."""
    return torch.tensor([float(weights.get(k, default)) for k in keys], dtype=torch.float64)


def weighted_sum(terms, mask, weights):
    """[samples]: sum_l w_l t_l (numpy's rounding) of ``terms`` and ``weights`` [samples, layers] float64."""
    return masked_sum(weights * terms, mask)
