"""The cost of a tree: the tensor elements its operators process, counted by running them on one network.

The screening's cost bound (:mod:`evoproxy.evolution.screening`, ``--screen-cost``) asks :func:`tree_cost` for a
count that depends only on the tree and the shapes of the statistics: the sum, over every (sample, layer) and
every operator application below an aggregation, of :func:`op_cost` — the elements of a tensor operator's output
(``gram``/``matmul``: its multiply-adds, output elements x row length) and the elements a reduction reads
(``logdet``: d0^2 k + d0^3 for its Gram matrix and determinant).

The count comes from running the operators with :class:`CostMeter` wrapping them through the per-network
evaluator here (:func:`evaluate_tree`, :func:`layer_value`: a tree on one network, each layer a batch of one, its
operator functions given), which is also the straightforward reference the tests hold the stacked evaluator
(:mod:`evoproxy.language.vectorised`) to. Calls go one way: this module calls the kernels of
:mod:`evoproxy.language.opkernels`, never the other way round.
"""
from __future__ import annotations

import math

import torch

from evoproxy.language.opkernels import OpError, layer_row, terminal
from evoproxy.language.ops import OPS


def op_cost(name: str, arg_shapes, out_shape) -> int:
    """Tensor elements one application of operator ``name`` processes (see the module docstring); depends on
    the shapes only. ``arg_shapes``: its tensor arguments' shapes; ``out_shape``: its result's (() for a scalar)."""
    kind = OPS[name].kind
    if kind in ("unary", "binary"):
        n = math.prod(out_shape)
        if name in ("gram", "matmul"):
            n *= math.prod(arg_shapes[0][1:])  # row length: multiply-adds of X Y^T
        return int(n)
    if kind == "reduce":
        shape = arg_shapes[0]
        if name == "logdet" and len(shape) > 0:
            d0 = shape[0]
            return int(d0 * d0 * math.prod(shape[1:]) + d0 ** 3)
        return int(math.prod(shape))
    return 0  # layer and network scalars


class CostMeter:
    """Counts :func:`op_cost` over the operators it wraps; passing ``bound`` raises ``OpError("cost")``."""

    def __init__(self, bound: float = math.inf):
        self.bound = bound
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n
        if self.total > self.bound:
            raise OpError("cost", f"over the cost bound of {self.bound:.4g} tensor elements")

    def functions(self) -> dict:
        """{operator name: function} for :func:`evaluate_tree`, tensor operators and reductions wrapped so that
        each application adds its cost (per item of a batch)."""
        out = {}
        for name, op in OPS.items():
            if op.kind in ("unary", "binary", "reduce"):
                out[name] = self._wrap(name, op.fn, op.kind == "reduce")
            else:
                out[name] = op.fn
        return out

    def _wrap(self, name, fn, reduce):
        """``fn`` counting :func:`op_cost` of each item of its batched arguments (computed inline from ``numel``:
        this runs on every operator call)."""
        add = self.add
        if name in ("gram", "matmul"):
            def metered(*args):
                result = fn(*args)
                a = args[0]
                add(result.numel() * (a.numel() // (a.shape[0] * a.shape[1])))
                return result
        elif name == "logdet":
            def metered(x):
                result = fn(x)
                d0 = x.shape[1]
                add(d0 * x.numel() + x.shape[0] * d0 ** 3)
                return result
        elif reduce:
            def metered(x):
                result = fn(x)
                add(x.numel())
                return result
        else:
            def metered(*args):
                result = fn(*args)
                add(result.numel())
                return result
        return metered


def _terminals(tree) -> list:
    return [tree] if isinstance(tree, str) else [t for c in tree[1:] for t in _terminals(c)]


def _aggregations(tree) -> list:
    """The subtrees below the aggregations over layers (a tree's root is an aggregation or a net binary op)."""
    return [tree[1]] if len(tree) == 2 else _aggregations(tree[1]) + _aggregations(tree[2])


# what evaluating a tree may raise: the screening rejects the tree on it, the cost counts such a layer 0
OPERATOR_ERRORS = (OpError, RuntimeError, ValueError, IndexError, ZeroDivisionError, OverflowError, FloatingPointError,
          ArithmeticError, MemoryError)


def tree_cost(tree_json, stats, start: int, stop: int) -> int:
    """The cost of ``tree_json`` on ``stats[start:stop]`` (what a :class:`CostMeter` counts over every sample's
    evaluation when nothing fails), from one evaluation (a batch of one) per aggregation subtree and shape
    signature of its terminals; a layer whose evaluation raises counts 0 (the evaluator rejects that tree on its
    own rule)."""
    total, memo = 0, {}
    for sub in _aggregations(tree_json):
        names = sorted(set(_terminals(sub)))
        for st in stats[start:stop]:
            for layer in st.layers:
                sig = (id(sub), tuple(tuple(layer.tensors[n].shape) if n in layer.tensors else None for n in names))
                if sig not in memo:
                    meter = CostMeter()
                    try:
                        layer_value(sub, layer.tensors, meter.functions(), layer.name)
                        memo[sig] = meter.total
                    except OPERATOR_ERRORS:
                        memo[sig] = 0
                total += memo[sig]
    return total


# ------------------------------------------------------------------------------------- one network
# A tree is an operator list [name, child, ...] or a terminal (a statistic's name); see
# evoproxy.language.opkernels for the levels (net, layer, tensor) and :func:`terminal` / :func:`layer_row`.

def evaluate_tree(tree, layers, counts, functions, layer_names=None) -> float:
    """The value of ``tree`` on one network.

    ``layers``: one mapping {statistic name: tensor} per layer (forward order); ``counts``: each
    layer's weight count; ``functions``: {operator name: function}; ``layer_names`` name the layers in
    errors. Raises :class:`OpError` when an operator cannot be applied; may return nan/inf."""
    with torch.no_grad():
        return float(_net(tree, layers, counts, functions, layer_names)[0])


def _net(tree, layers, counts, functions, layer_names):
    if len(tree) == 3:
        return functions[tree[0]](_net(tree[1], layers, counts, functions, layer_names),
                                  _net(tree[2], layers, counts, functions, layer_names))
    return functions[tree[0]](*layer_matrix(tree[1], layers, counts, functions, layer_names))


def layer_matrix(tree, layers, counts, functions, layer_names=None):
    """:func:`layer_row` of the layer-level ``tree`` on each layer of one network."""
    names = layer_names if layer_names is not None else [str(i) for i in range(len(layers))]
    return layer_row([layer_value(tree, layer, functions, name) for layer, name in zip(layers, names)], counts)


def layer_value(tree, layer, functions, layer_name="?"):
    """[1] float64: the layer-level ``tree`` on one layer ({statistic name: tensor})."""
    if len(tree) == 2:
        return functions[tree[0]](tensor_value(tree[1], layer, functions, layer_name))
    return functions[tree[0]](layer_value(tree[1], layer, functions, layer_name),
                              layer_value(tree[2], layer, functions, layer_name))


def tensor_value(tree, layer, functions, layer_name="?"):
    """[1, *shape] float32: the tensor-level ``tree`` on one layer."""
    if isinstance(tree, str):
        return terminal(layer, tree, layer_name)
    return functions[tree[0]](*(tensor_value(c, layer, functions, layer_name) for c in tree[1:]))
