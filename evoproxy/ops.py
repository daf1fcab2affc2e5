"""The operators of the proxy language: a typed registry, one pure function per operator.

Values flow through four types::

    tensor (a primitive of one layer)  --unary/binary tensor ops-->  tensor
    tensor  --layer reduction-->  layer scalar  (--layer binary ops-->  layer scalar)
    layer scalar  --aggregation over layers-->  net scalar  (--net binary ops-->  net scalar)

A tensor is a float32 ``torch.Tensor`` (any shape; 0-d for per-layer numbers such as ``bitwidth``
and ``hessian_trace``); a layer scalar is a Python float computed in float64; a net scalar is a
Python float. Every operator is *total* in the sense of the proxy language: it either returns a
value or raises :class:`OpError` with a short reason (``shape`` for incompatible shapes, ``size``
for a tensor too large for a Gram-type op). Non-finite values are not repaired here; the engine's
screening rejects them with a recorded reason.

Numerical guards (they are part of the definition, the exported Python function repeats them):

* ``log``: log(max(|x|, 1e-20));  ``sqrt``: sqrt(|x|);  ``exp``: exp(min(x, 30))
* ``inv``: 1 / (x + s * 1e-12) with s = 1 where x >= 0, -1 elsewhere;  ``div``: a * inv(b)
* ``znorm``: (x - mean) / (std + 1e-12) over all elements (std with Bessel's correction; a
  1-element tensor gives 0);  ``minmax``: (x - min) / (max - min + 1e-12)
* ``logdet``: X = x reshaped to [d0, -1], K = X X^T in float64, log det(K + 1e-6 * (tr K / d0) I)
  (``nan`` when that determinant is not positive); d0 <= 512.
* binary elementwise ops need equal shapes, or one side with a single element (broadcast).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

TENSOR, LAYER, NET = "tensor", "layer", "net"
TYPES = (TENSOR, LAYER, NET)
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


@dataclass(frozen=True)
class Op:
    """One operator: ``fn(*args)`` maps values of ``in_types`` to a value of ``out_type``.

    ``kind``: unary / binary (tensor), reduce (tensor -> layer), lbinary (layer, layer -> layer),
    aggregate (layer values of all layers -> net), nbinary (net, net -> net). ``text``/``latex`` are
    format strings over the arguments' renderings ({0}, {1}); ``commutative`` lets the canonical form
    sort the arguments; ``weight`` is the default sampling weight.
    """

    name: str
    kind: str
    in_types: tuple[str, ...]
    out_type: str
    fn: Callable
    text: str
    latex: str
    doc: str
    commutative: bool = False
    weight: float = 1.0

    @property
    def arity(self) -> int:
        return len(self.in_types)


OPS: dict[str, Op] = {}
KIND_TYPES = {
    "unary": ((TENSOR,), TENSOR),
    "binary": ((TENSOR, TENSOR), TENSOR),
    "reduce": ((TENSOR,), LAYER),
    "lbinary": ((LAYER, LAYER), LAYER),
    "aggregate": ((LAYER,), NET),
    "nbinary": ((NET, NET), NET),
}


def register(name: str, kind: str, text: str, latex: str, commutative: bool = False, weight: float = 1.0):
    """Register ``fn`` as operator ``name`` of ``kind`` (its docstring is the operator's definition)."""
    in_types, out_type = KIND_TYPES[kind]

    def wrap(fn):
        if name in OPS:
            raise ValueError(f"operator {name!r} registered twice")
        OPS[name] = Op(name, kind, in_types, out_type, fn, text, latex, (fn.__doc__ or "").strip(),
                       commutative, weight)
        return fn

    return wrap


def ops_of(kind: str) -> list[Op]:
    return [op for op in OPS.values() if op.kind == kind]


# ------------------------------------------------------------------------------------- unary tensor

@register("abs", "unary", "|{0}|", r"\left|{0}\right|")
def op_abs(x):
    """|x|"""
    return x.abs()


@register("neg", "unary", "-{0}", r"-{0}")
def op_neg(x):
    """-x"""
    return -x


@register("square", "unary", "{0}^2", r"\left({0}\right)^{{2}}")
def op_square(x):
    """x^2"""
    return x * x


@register("sqrt", "unary", "sqrt|{0}|", r"\sqrt{{\left|{0}\right|}}")
def op_sqrt(x):
    """sqrt(|x|)"""
    return x.abs().sqrt()


@register("log", "unary", "log|{0}|", r"\log\left|{0}\right|")
def op_log(x):
    """log(max(|x|, 1e-20))"""
    return x.abs().clamp_min(LOG_FLOOR).log()


@register("exp", "unary", "exp({0})", r"e^{{{0}}}")
def op_exp(x):
    """exp(min(x, 30))"""
    return x.clamp_max(EXP_CLIP).exp()


@register("relu", "unary", "relu({0})", r"\mathrm{{relu}}\left({0}\right)")
def op_relu(x):
    """max(x, 0)"""
    return x.clamp_min(0)


@register("sign", "unary", "sign({0})", r"\mathrm{{sign}}\left({0}\right)")
def op_sign(x):
    """sign(x) in {-1, 0, 1}"""
    return x.sign()


@register("sigmoid", "unary", "sigmoid({0})", r"\sigma\left({0}\right)")
def op_sigmoid(x):
    """1 / (1 + exp(-x))"""
    return torch.sigmoid(x)


@register("tanh", "unary", "tanh({0})", r"\tanh\left({0}\right)")
def op_tanh(x):
    """tanh(x)"""
    return torch.tanh(x)


@register("softmax", "unary", "softmax({0})", r"\mathrm{{softmax}}\left({0}\right)")
def op_softmax(x):
    """softmax over all elements (shape kept)"""
    return torch.softmax(x.reshape(-1), dim=0).reshape(x.shape)


@register("inv", "unary", "1/{0}", r"\frac{{1}}{{{0}}}")
def op_inv(x):
    """1 / (x + s * 1e-12), s = 1 where x >= 0 else -1 (safe reciprocal)"""
    return 1.0 / (x + torch.where(x >= 0, EPS, -EPS))


@register("znorm", "unary", "znorm({0})", r"\mathrm{{z}}\left({0}\right)")
def op_znorm(x):
    """(x - mean(x)) / (std(x) + 1e-12) over all elements; 0 for a single element"""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std() + EPS)


@register("minmax", "unary", "minmax({0})", r"\mathrm{{mm}}\left({0}\right)")
def op_minmax(x):
    """(x - min(x)) / (max(x) - min(x) + 1e-12)"""
    if x.numel() == 0:
        raise OpError("shape", "minmax of an empty tensor")
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo + EPS)


@register("gram", "unary", "gram({0})", r"{0}{0}^{{\top}}")
def op_gram(x):
    """X X^T with X = x reshaped to [d0, -1] (rows: first dim, e.g. samples or output channels); d0 <= 512"""
    rows = _rows(x, "gram")
    return rows @ rows.T


@register("batch_mean", "unary", "E_n[{0}]", r"\mathbb{{E}}_n\left[{0}\right]")
def op_batch_mean(x):
    """mean over the first dimension (samples for activations, output channels for weights); needs >= 2 dims"""
    if x.dim() < 2:
        raise OpError("shape", f"batch_mean needs >= 2 dims, got shape {tuple(x.shape)}")
    return x.mean(dim=0)


@register("batch_std", "unary", "std_n[{0}]", r"\mathrm{{std}}_n\left[{0}\right]")
def op_batch_std(x):
    """standard deviation (Bessel) over the first dimension; needs >= 2 dims and >= 2 rows"""
    if x.dim() < 2 or x.shape[0] < 2:
        raise OpError("shape", f"batch_std needs >= 2 dims and >= 2 rows, got shape {tuple(x.shape)}")
    return x.std(dim=0)


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


@register("add", "binary", "({0} + {1})", r"\left({0} + {1}\right)", commutative=True)
def op_add(a, b):
    """a + b (equal shapes or a single-element side)"""
    _same_shape(a, b, "add")
    return a + b


@register("sub", "binary", "({0} - {1})", r"\left({0} - {1}\right)")
def op_sub(a, b):
    """a - b (equal shapes or a single-element side)"""
    _same_shape(a, b, "sub")
    return a - b


@register("mul", "binary", "({0} * {1})", r"\left({0} \odot {1}\right)", commutative=True)
def op_mul(a, b):
    """a * b elementwise (equal shapes or a single-element side)"""
    _same_shape(a, b, "mul")
    return a * b


@register("div", "binary", "({0} / {1})", r"\frac{{{0}}}{{{1}}}")
def op_div(a, b):
    """a * inv(b) elementwise (safe division; equal shapes or a single-element side)"""
    _same_shape(a, b, "div")
    return a * op_inv(b)


@register("matmul", "binary", "({0} @ {1}^T)", r"{0}{1}^{{\top}}")
def op_matmul(a, b):
    """A B^T with A, B = a, b reshaped to [d0, -1]; needs equal row lengths and d0 <= 512 each"""
    ra, rb = _rows(a, "matmul"), _rows(b, "matmul")
    if ra.shape[1] != rb.shape[1]:
        raise OpError("shape", f"matmul: row lengths {ra.shape[1]} and {rb.shape[1]} differ")
    return ra @ rb.T


# ------------------------------------------------------------------------------------- layer reductions

@register("mean", "reduce", "mean({0})", r"\mathrm{{mean}}\left({0}\right)")
def red_mean(x):
    """mean of all elements (float64)"""
    if x.numel() == 0:
        raise OpError("shape", "mean of an empty tensor")
    return float(x.double().mean())


@register("sum", "reduce", "sum({0})", r"\sum\left({0}\right)")
def red_sum(x):
    """sum of all elements (float64)"""
    return float(x.double().sum())


@register("l1", "reduce", "||{0}||_1", r"\left\|{0}\right\|_1")
def red_l1(x):
    """sum of |x| (float64)"""
    return float(x.double().abs().sum())


@register("fro", "reduce", "||{0}||_2", r"\left\|{0}\right\|_F")
def red_fro(x):
    """sqrt(sum of x^2) (float64)"""
    return float(x.double().pow(2).sum().sqrt())


@register("std", "reduce", "std({0})", r"\mathrm{{std}}\left({0}\right)")
def red_std(x):
    """standard deviation of all elements (Bessel; 0 for a single element)"""
    if x.numel() < 2:
        return 0.0
    return float(x.double().std())


@register("numel", "reduce", "numel({0})", r"\#\left({0}\right)")
def red_numel(x):
    """number of elements"""
    return float(x.numel())


@register("max", "reduce", "max({0})", r"\max\left({0}\right)")
def red_max(x):
    """largest element"""
    if x.numel() == 0:
        raise OpError("shape", "max of an empty tensor")
    return float(x.max())


@register("min", "reduce", "min({0})", r"\min\left({0}\right)")
def red_min(x):
    """smallest element"""
    if x.numel() == 0:
        raise OpError("shape", "min of an empty tensor")
    return float(x.min())


@register("logdet", "reduce", "logdet({0})", r"\log\det\left({0}\right)")
def red_logdet(x):
    """log det(K + 1e-6 (tr K / d0) I), K = X X^T in float64, X = x reshaped to [d0, -1]; nan if not positive"""
    rows = _rows(x, "logdet").double()
    k = rows @ rows.T
    n = k.shape[0]
    ridge = RIDGE * float(torch.trace(k)) / n
    sign, value = torch.linalg.slogdet(k + ridge * torch.eye(n, dtype=k.dtype))
    return float(value) if float(sign) > 0 else math.nan


# ------------------------------------------------------------------------------------- aggregations
# fn(values, weights) with values: float64 array over layers, weights: each layer's weight numel

@register("layer_sum", "aggregate", "Σ_l {0}", r"\sum_{{l}} {0}")
def agg_sum(values, weights):
    """sum over layers"""
    return float(np.sum(values))


@register("layer_mean", "aggregate", "mean_l {0}", r"\frac{{1}}{{L}}\sum_{{l}} {0}")
def agg_mean(values, weights):
    """mean over layers"""
    return float(np.mean(values))


@register("layer_meanlog", "aggregate", "mean_l log|{0}|", r"\frac{{1}}{{L}}\sum_{{l}} \log\left|{0}\right|")
def agg_meanlog(values, weights):
    """mean over layers of log(max(|v|, 1e-20))"""
    return float(np.mean(np.log(np.maximum(np.abs(values), LOG_FLOOR))))


@register("layer_pweighted", "aggregate", "Σ_l (n_l/n) {0}", r"\sum_{{l}} \frac{{n_l}}{{n}} {0}")
def agg_pweighted(values, weights):
    """sum over layers of v_l * n_l / sum(n), n_l the layer's weight count"""
    w = np.asarray(weights, dtype=float)
    return float(np.sum(values * w) / np.sum(w))


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


for _prefix, _kind in (("l", "lbinary"), ("n", "nbinary")):
    _dot = r"\cdot"
    register(f"{_prefix}add", _kind, "({0} + {1})", r"\left({0} + {1}\right)", commutative=True, weight=0.5)(s_add)
    register(f"{_prefix}sub", _kind, "({0} - {1})", r"\left({0} - {1}\right)", weight=0.5)(s_sub)
    register(f"{_prefix}mul", _kind, "({0} * {1})", r"\left({0} " + _dot + r" {1}\right)", commutative=True, weight=0.5)(s_mul)
    register(f"{_prefix}div", _kind, "({0} / {1})", r"\frac{{{0}}}{{{1}}}", weight=0.5)(s_div)


