"""The operators of the proxy language: a typed registry of the pure functions of
:mod:`evoproxy.language.opkernels` (one per operator, with its guards, on batches), adding each one's kind, argument and
result types, plain and LaTeX rendering, commutativity and sampling weight.

Values flow through four types::

    tensor (a statistic of one layer)  --unary/binary tensor ops-->  tensor
    tensor  --layer reduction-->  layer scalar  (--layer binary ops-->  layer scalar)
    layer scalar  --aggregation over layers-->  net scalar  (--net binary ops-->  net scalar)

A tensor is a float32 ``torch.Tensor`` (any shape; 0-d for per-layer numbers such as ``bitwidth``
and ``hessian_trace``); a layer scalar is a number computed in float64; a net scalar is a float64
number. Every function takes a batch: tensors ``[items, *shape]``, layer and net scalars ``[n]`` float64,
aggregations the ``[samples, layers]`` matrix of layer values with its mask and weight counts (see
:mod:`evoproxy.language.opkernels`); a single network is a batch of one. Every operator is *total* in the sense of the proxy language: it either returns a
value or raises :class:`OpError` with a short reason (``shape`` for incompatible shapes, ``size``
for a tensor too large for a Gram-type op). Non-finite values are not repaired here; the search's
screening rejects them with a recorded reason.

Numerical guards (part of the definition; exported modules copy the functions' source):

* ``log``: log(max(|x|, 1e-20));  ``sqrt``: sqrt(|x|);  ``exp``: exp(min(x, 30))
* ``inv``: 1 / (x + s * 1e-12) with s = 1 where x >= 0, -1 elsewhere;  ``div``: a * inv(b)
* ``znorm``: (x - mean) / (std + 1e-12) over all elements (std with Bessel's correction; a
  1-element tensor gives 0);  ``minmax``: (x - min) / (max - min + 1e-12)
* ``logdet``: X = x reshaped to [d0, -1], K = X X^T in float64, log det(K + 1e-6 * (tr K / d0) I)
  (``nan`` when that determinant is not positive); d0 <= 512.
* binary elementwise ops need equal shapes, or one side with a single element (broadcast).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from evoproxy.language import opkernels as k
from evoproxy.language.opkernels import EPS, EXP_CLIP, GRAM_MAX_ROWS, LOG_FLOOR, RIDGE, OpError  # noqa: F401  (re-exported)

TENSOR, LAYER, NET = "tensor", "layer", "net"
TYPES = (TENSOR, LAYER, NET)


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


# ------------------------------------------------------------------------------------- operators
# register(name, kind, text, latex, commutative, weight)(function of evoproxy.language.opkernels)

register("abs", "unary", "|{0}|", r"\left|{0}\right|")(k.op_abs)
register("neg", "unary", "-{0}", r"-{0}")(k.op_neg)
register("square", "unary", "{0}^2", r"\left({0}\right)^{{2}}")(k.op_square)
register("sqrt", "unary", "sqrt|{0}|", r"\sqrt{{\left|{0}\right|}}")(k.op_sqrt)
register("log", "unary", "log|{0}|", r"\log\left|{0}\right|")(k.op_log)
register("exp", "unary", "exp({0})", r"e^{{{0}}}")(k.op_exp)
register("relu", "unary", "relu({0})", r"\mathrm{{relu}}\left({0}\right)")(k.op_relu)
register("sign", "unary", "sign({0})", r"\mathrm{{sign}}\left({0}\right)")(k.op_sign)
register("sigmoid", "unary", "sigmoid({0})", r"\sigma\left({0}\right)")(k.op_sigmoid)
register("tanh", "unary", "tanh({0})", r"\tanh\left({0}\right)")(k.op_tanh)
register("softmax", "unary", "softmax({0})", r"\mathrm{{softmax}}\left({0}\right)")(k.op_softmax)
# softmax over output channels (EMQ's softmax): not drawn by searches unless --weights softmax0=1, so the
# default search space (and every committed search) is unchanged
register("softmax0", "unary", "softmax_0({0})", r"\mathrm{{softmax}}_0\left({0}\right)",
         weight=0.0)(k.op_softmax0)
register("inv", "unary", "1/{0}", r"\frac{{1}}{{{0}}}")(k.op_inv)
register("znorm", "unary", "znorm({0})", r"\mathrm{{z}}\left({0}\right)")(k.op_znorm)
register("minmax", "unary", "minmax({0})", r"\mathrm{{mm}}\left({0}\right)")(k.op_minmax)
register("gram", "unary", "gram({0})", r"{0}{0}^{{\top}}")(k.op_gram)
register("batch_mean", "unary", "E_n[{0}]", r"\mathbb{{E}}_n\left[{0}\right]")(k.op_batch_mean)
register("batch_std", "unary", "std_n[{0}]", r"\mathrm{{std}}_n\left[{0}\right]")(k.op_batch_std)
register("add", "binary", "({0} + {1})", r"\left({0} + {1}\right)", commutative=True)(k.op_add)
register("sub", "binary", "({0} - {1})", r"\left({0} - {1}\right)")(k.op_sub)
register("mul", "binary", "({0} * {1})", r"\left({0} \odot {1}\right)", commutative=True)(k.op_mul)
register("div", "binary", "({0} / {1})", r"\frac{{{0}}}{{{1}}}")(k.op_div)
register("matmul", "binary", "({0} @ {1}^T)", r"{0}{1}^{{\top}}")(k.op_matmul)
register("mean", "reduce", "mean({0})", r"\mathrm{{mean}}\left({0}\right)")(k.red_mean)
register("sum", "reduce", "sum({0})", r"\sum\left({0}\right)")(k.red_sum)
register("l1", "reduce", "||{0}||_1", r"\left\|{0}\right\|_1")(k.red_l1)
register("fro", "reduce", "||{0}||_2", r"\left\|{0}\right\|_F")(k.red_fro)
register("std", "reduce", "std({0})", r"\mathrm{{std}}\left({0}\right)")(k.red_std)
register("numel", "reduce", "numel({0})", r"\#\left({0}\right)")(k.red_numel)
register("max", "reduce", "max({0})", r"\max\left({0}\right)")(k.red_max)
register("min", "reduce", "min({0})", r"\min\left({0}\right)")(k.red_min)
register("logdet", "reduce", "logdet({0})", r"\log\det\left({0}\right)")(k.red_logdet)
register("layer_sum", "aggregate", "Σ_l {0}", r"\sum_{{l}} {0}")(k.agg_sum)
register("layer_mean", "aggregate", "mean_l {0}", r"\frac{{1}}{{L}}\sum_{{l}} {0}")(k.agg_mean)
register("layer_meanlog", "aggregate", "mean_l log|{0}|", r"\frac{{1}}{{L}}\sum_{{l}} \log\left|{0}\right|")(k.agg_meanlog)
register("layer_pweighted", "aggregate", "Σ_l (n_l/n) {0}", r"\sum_{{l}} \frac{{n_l}}{{n}} {0}")(k.agg_pweighted)

# the same four scalar functions on layer scalars (ladd ...) and on network scalars (nadd ...)
for _prefix, _kind in (("l", "lbinary"), ("n", "nbinary")):
    _dot = r"\cdot"
    register(f"{_prefix}add", _kind, "({0} + {1})", r"\left({0} + {1}\right)", commutative=True, weight=0.5)(k.s_add)
    register(f"{_prefix}sub", _kind, "({0} - {1})", r"\left({0} - {1}\right)", weight=0.5)(k.s_sub)
    register(f"{_prefix}mul", _kind, "({0} * {1})", r"\left({0} " + _dot + r" {1}\right)", commutative=True, weight=0.5)(k.s_mul)
    register(f"{_prefix}div", _kind, "({0} / {1})", r"\frac{{{0}}}{{{1}}}", weight=0.5)(k.s_div)


