"""The numeric kernels of the proxy language: one pure function per operator, with its guards, and the
evaluator of a tree in its JSON nested-list form.

Torch, math and the standard library only: ``evoproxy export`` copies this module's source into
standalone proxy modules, and :mod:`evoproxy.ops` (the registry: kinds, types, rendering,
commutativity, sampling weights) points at these functions, so the search, the evaluator and exported proxies
compute with the same code. See :mod:`evoproxy.ops` for the types and the numerical guards.
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
    return torch.softmax(x.reshape(-1), dim=0).reshape(x.shape)


def op_inv(x):
    """1 / (x + s * 1e-12), s = 1 where x >= 0 else -1 (safe reciprocal)"""
    return 1.0 / (x + torch.where(x >= 0, EPS, -EPS))


def op_znorm(x):
    """(x - mean(x)) / (std(x) + 1e-12) over all elements; 0 for a single element"""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std() + EPS)


def op_minmax(x):
    """(x - min(x)) / (max(x) - min(x) + 1e-12)"""
    if x.numel() == 0:
        raise OpError("shape", "minmax of an empty tensor")
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo + EPS)


def op_gram(x):
    """X X^T with X = x reshaped to [d0, -1] (rows: first dim, e.g. samples or output channels); d0 <= 512"""
    rows = _rows(x, "gram")
    return rows @ rows.T


def op_batch_mean(x):
    """mean over the first dimension (samples for activations, output channels for weights); needs >= 2 dims"""
    if x.dim() < 2:
        raise OpError("shape", f"batch_mean needs >= 2 dims, got shape {tuple(x.shape)}")
    return x.mean(dim=0)


def op_batch_std(x):
    """standard deviation (Bessel) over the first dimension; needs >= 2 dims and >= 2 rows"""
    if x.dim() < 2 or x.shape[0] < 2:
        raise OpError("shape", f"batch_std needs >= 2 dims and >= 2 rows, got shape {tuple(x.shape)}")
    return x.std(dim=0)


def op_softmax0(x):
    """softmax along the first dimension (output channels of a weight, samples of an activation), separately for
    every index of the other dims (EMQ's softmax); a 0-d tensor gives 1"""
    if x.dim() == 0:
        return torch.ones_like(x)
    return torch.softmax(x, dim=0)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 0:
        raise OpError("shape", f"{name} of a 0-d tensor")
    if x.shape[0] > GRAM_MAX_ROWS:
        raise OpError("size", f"{name} needs at most {GRAM_MAX_ROWS} rows, got {x.shape[0]}")
    return x.reshape(x.shape[0], -1)


# ------------------------------------------------------------------------------------- binary tensor

def _same_shape(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape and a.numel() != 1 and b.numel() != 1:
        raise OpError("shape", f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")


def op_add(a, b):
    """a + b (equal shapes or a single-element side)"""
    _same_shape(a, b, "add")
    return a + b


def op_sub(a, b):
    """a - b (equal shapes or a single-element side)"""
    _same_shape(a, b, "sub")
    return a - b


def op_mul(a, b):
    """a * b elementwise (equal shapes or a single-element side)"""
    _same_shape(a, b, "mul")
    return a * b


def op_div(a, b):
    """a * inv(b) elementwise (safe division; equal shapes or a single-element side)"""
    _same_shape(a, b, "div")
    return a * op_inv(b)


def op_matmul(a, b):
    """A B^T with A, B = a, b reshaped to [d0, -1]; needs equal row lengths and d0 <= 512 each"""
    ra, rb = _rows(a, "matmul"), _rows(b, "matmul")
    if ra.shape[1] != rb.shape[1]:
        raise OpError("shape", f"matmul: row lengths {ra.shape[1]} and {rb.shape[1]} differ")
    return ra @ rb.T


# ------------------------------------------------------------------------------------- layer reductions

def red_mean(x):
    """mean of all elements (float64)"""
    if x.numel() == 0:
        raise OpError("shape", "mean of an empty tensor")
    return float(x.double().mean())


def red_sum(x):
    """sum of all elements (float64)"""
    return float(x.double().sum())


def red_l1(x):
    """sum of |x| (float64)"""
    return float(x.double().abs().sum())


def red_fro(x):
    """sqrt(sum of x^2) (float64)"""
    return float(x.double().pow(2).sum().sqrt())


def red_std(x):
    """standard deviation of all elements (Bessel; 0 for a single element)"""
    if x.numel() < 2:
        return 0.0
    return float(x.double().std())


def red_numel(x):
    """number of elements"""
    return float(x.numel())


def red_max(x):
    """largest element"""
    if x.numel() == 0:
        raise OpError("shape", "max of an empty tensor")
    return float(x.max())


def red_min(x):
    """smallest element"""
    if x.numel() == 0:
        raise OpError("shape", "min of an empty tensor")
    return float(x.min())


def red_logdet(x):
    """log det(K + 1e-6 (tr K / d0) I), K = X X^T in float64, X = x reshaped to [d0, -1]; nan if not positive"""
    rows = _rows(x, "logdet").double()
    k = rows @ rows.T
    n = k.shape[0]
    ridge = RIDGE * float(torch.trace(k)) / n
    sign, value = torch.linalg.slogdet(k + ridge * torch.eye(n, dtype=k.dtype))
    return float(value) if float(sign) > 0 else math.nan


# ------------------------------------------------------------------------------------- aggregations
# fn(values, weights) with values: one float per layer, weights: each layer's weight numel. Sums are
# numpy's float64 sums to the last bit (numpy_sum), the numbers the library gave when it used numpy;
# layer_meanlog's log is math.log (libm), which differs from numpy's SIMD log by one ulp on about 0.1%
# of values (measured on AVX-512), so its mean can move by an ulp.

def agg_sum(values, weights):
    """sum over layers"""
    return numpy_sum(values)


def agg_mean(values, weights):
    """mean over layers"""
    return _ieee_div(numpy_sum(values), len(values))


def agg_meanlog(values, weights):
    """mean over layers of log(max(|v|, 1e-20))"""
    return _ieee_div(numpy_sum([math.log(max(abs(float(v)), LOG_FLOOR)) for v in values]), len(values))


def agg_pweighted(values, weights):
    """sum over layers of v_l * n_l / sum(n), n_l the layer's weight count"""
    w = [float(n) for n in weights]
    return _ieee_div(numpy_sum([float(v) * n for v, n in zip(values, w)]), numpy_sum(w))


def numpy_sum(values) -> float:
    """The float64 sum of ``values`` rounded exactly as ``numpy.sum`` rounds it: numpy's pairwise
    summation (runs of at most 128 values added with 8 interleaved accumulators, longer runs split in
    halves at multiples of 8), started from 0.0."""
    v = [float(x) for x in values]
    return 0.0 + _pairwise(v, 0, len(v))


def _pairwise(v: list, lo: int, n: int) -> float:
    if n < 8:
        total = 0.0
        for i in range(lo, lo + n):
            total += v[i]
        return total
    if n <= 128:
        acc = v[lo:lo + 8]
        stop = lo + n - n % 8
        for i in range(lo + 8, stop, 8):
            for j in range(8):
                acc[j] += v[i + j]
        total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        for i in range(stop, lo + n):
            total += v[i]
        return total
    half = n // 2
    half -= half % 8
    return _pairwise(v, lo, half) + _pairwise(v, lo + half, n - half)


def _ieee_div(a: float, b: float) -> float:
    """a / b with IEEE results for b = 0 (inf or nan, as numpy divides) instead of ZeroDivisionError."""
    if b != 0:
        return a / b
    if a != a or a == 0:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


# ------------------------------------------------------------------------------------- scalar binary
# the same four functions on layer scalars (ladd ...) and on network scalars (nadd ...)

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
    return a / (b + (EPS if b >= 0 else -EPS))


# ------------------------------------------------------------------------------------- evaluation
# A tree is an operator list [name, child, ...] or a terminal (a primitive name). The typed language
# fixes each node's level: at the root (net) an operator of one argument aggregates over layers and
# one of two combines net scalars; below an aggregation (layer) one argument is a reduction of a
# tensor and two combine layer scalars; below a reduction everything is a tensor operator.

def evaluate_tree(tree, layers, counts, functions, layer_names=None) -> float:
    """The value of ``tree`` on one network.

    ``layers``: one mapping {primitive name: tensor} per layer (forward order); ``counts``: each
    layer's weight count; ``functions``: {operator name: function}; ``layer_names`` name the layers in
    errors. Raises :class:`OpError` when an operator cannot be applied; may return nan/inf."""
    fn = functions[tree[0]]
    if len(tree) == 2:
        if not layers:
            raise OpError("shape", "network without Conv2d/Linear layers")
        names = layer_names if layer_names is not None else [str(i) for i in range(len(layers))]
        with torch.no_grad():
            values = [float(layer_value(tree[1], layer, functions, name)) for layer, name in zip(layers, names)]
        return fn(values, list(counts))
    return float(fn(evaluate_tree(tree[1], layers, counts, functions, layer_names),
                    evaluate_tree(tree[2], layers, counts, functions, layer_names)))


def layer_value(tree, layer, functions, layer_name="?") -> float:
    if len(tree) == 2:
        return functions[tree[0]](tensor_value(tree[1], layer, functions, layer_name))
    return functions[tree[0]](layer_value(tree[1], layer, functions, layer_name),
                              layer_value(tree[2], layer, functions, layer_name))


def tensor_value(tree, layer, functions, layer_name="?") -> torch.Tensor:
    if isinstance(tree, str):
        try:
            t = layer[tree]
        except KeyError:
            raise OpError("missing", f"primitive {tree!r} not extracted for layer {layer_name}") from None
        return t if t.dtype == torch.float32 else t.float()
    return functions[tree[0]](*(tensor_value(c, layer, functions, layer_name) for c in tree[1:]))


# ------------------------------------------------------------------------------------- learned layer weights
# ``evoproxy calibrate``: a tree whose root aggregates over layers is the sum of per-layer terms t_l (the
# aggregation's share of layer l); a calibrated proxy replaces that sum by sum_l w_l t_l, w_l the learned weight
# of the layer's position (``layer_position``; ``default`` for a position without one), so all weights 1 give
# the tree's value.

def layer_position(name, weight_shape) -> str:
    """A layer's position key: its name and weight shape, e.g. ``cells.7.edges.3_1.1:16x16x3x3`` (NAS-Bench-201's
    names give cell x edge, the kernel size the operation), ``layer2.0.conv1:32x16x3x3`` (MQ: the layer index)."""
    return f"{name}:{'x'.join(str(int(d)) for d in weight_shape)}"


def _terms_sum(values, counts):
    return [float(v) for v in values]


def _terms_mean(values, counts):
    return [float(v) / len(values) for v in values]


def _terms_meanlog(values, counts):
    return [math.log(max(abs(float(v)), LOG_FLOOR)) / len(values) for v in values]


def _terms_pweighted(values, counts):
    total = numpy_sum(counts)
    return [float(v) * float(n) / total for v, n in zip(values, counts)]


LAYER_TERMS = {agg_sum: _terms_sum, agg_mean: _terms_mean, agg_meanlog: _terms_meanlog, agg_pweighted: _terms_pweighted}


def layer_terms(tree, layers, counts, functions, layer_names=None) -> list:
    """The per-layer terms t_l of ``tree`` (root: an aggregation over layers), whose sum is the tree's value
    up to float rounding. Raises :class:`OpError` ("structure") for another root."""
    terms = LAYER_TERMS.get(functions.get(tree[0]) if isinstance(tree, list) and len(tree) == 2 else None)
    if terms is None:
        raise OpError("structure", "layer weights need a tree whose root aggregates over layers (layer_sum, ...)")
    if not layers:
        raise OpError("shape", "network without Conv2d/Linear layers")
    names = layer_names if layer_names is not None else [str(i) for i in range(len(layers))]
    with torch.no_grad():
        values = [float(layer_value(tree[1], layer, functions, name)) for layer, name in zip(layers, names)]
    return terms(values, [float(c) for c in counts])


def evaluate_proxy(tree, layers, counts, functions, layer_names=None, weights=None, default=1.0) -> float:
    """:func:`evaluate_tree`, or with ``weights`` ({layer position: weight}) the weighted sum of the root's
    per-layer terms, sum_l w_l t_l (``default`` for a position without a weight); ``layer_names`` are then the
    layers' :func:`layer_position` keys."""
    if weights is None:
        return evaluate_tree(tree, layers, counts, functions, layer_names)
    terms = layer_terms(tree, layers, counts, functions, layer_names)
    return numpy_sum([weights.get(name, default) * t for name, t in zip(layer_names, terms)])
