"""The one scorer: every batched operator equals a plain-torch reference written here, item by item; the stacked
evaluator over many networks equals each network evaluated alone, layer by layer (same rejection reason, scores
within 1e-5 relative), on random valid and invalid trees of both structures (synthetic statistics, no data files)."""
import math
import random

import numpy as np
import pytest
import torch

import evoproxy.language.vectorised as vectorised
from experiments.tools.fuzz import synthetic_stats
from evoproxy.language.cost import OPERATOR_ERRORS, evaluate_tree as evaluate_json
from evoproxy.language.opkernels import OpError
from evoproxy.language.ops import OPS
from evoproxy.evolution.screening import _is_constant, _rejected, score_range
from evoproxy.language.space import SearchSpace
from evoproxy.language.tree import parse_tree, tree_value
from primitives import PRIMITIVES


@pytest.fixture(scope="module")
def stats():
    torch.manual_seed(0)
    return synthetic_stats(seed=0, networks=4, batch=8, probes=1)


# ------------------------------------------------------------------------------------- operators

def _sdiv(a, b):
    return a / (b + (1e-12 if b >= 0 else -1e-12))


def _rows(x):
    return x.reshape(x.shape[0], -1)


def _logdet(x):
    k = _rows(x).double() @ _rows(x).double().T
    sign, value = torch.linalg.slogdet(k + 1e-6 * torch.trace(k) / k.shape[0] * torch.eye(k.shape[0], dtype=k.dtype))
    return float(value) if sign > 0 else math.nan


def _inv(x):
    return 1.0 / (x + torch.where(x >= 0, torch.tensor(1e-12), torch.tensor(-1e-12)))


REFERENCE = {  # one item (a layer's tensor, or one number) -> the operator's definition in plain torch / Python
    "abs": torch.abs, "neg": torch.neg, "square": lambda x: x * x, "sqrt": lambda x: torch.sqrt(torch.abs(x)),
    "log": lambda x: torch.log(torch.clamp(torch.abs(x), min=1e-20)), "exp": lambda x: torch.exp(torch.clamp(x, max=30.0)),
    "relu": torch.relu, "sign": torch.sign, "sigmoid": lambda x: 1 / (1 + torch.exp(-x)), "tanh": torch.tanh,
    "softmax": lambda x: torch.softmax(x.flatten(), 0).reshape(x.shape),
    "softmax0": lambda x: torch.softmax(x, 0) if x.dim() else torch.ones_like(x), "inv": _inv,
    "znorm": lambda x: (x - x.mean()) / (x.std() + 1e-12) if x.numel() > 1 else torch.zeros_like(x),
    "minmax": lambda x: (x - x.min()) / (x.max() - x.min() + 1e-12),
    "gram": lambda x: _rows(x) @ _rows(x).T, "batch_mean": lambda x: x.mean(0), "batch_std": lambda x: x.std(0),
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": lambda a, b: a * _inv(b),
    "matmul": lambda a, b: _rows(a) @ _rows(b).T,
    "mean": lambda x: float(x.double().mean()), "sum": lambda x: float(x.double().sum()),
    "l1": lambda x: float(x.double().abs().sum()), "fro": lambda x: math.sqrt(float((x.double() ** 2).sum())),
    "std": lambda x: float(x.double().std()) if x.numel() > 1 else 0.0, "numel": lambda x: float(x.numel()),
    "max": lambda x: float(x.max()), "min": lambda x: float(x.min()), "logdet": _logdet,
    "layer_sum": lambda v, n: float(np.sum(v)), "layer_mean": lambda v, n: float(np.mean(v)),
    "layer_meanlog": lambda v, n: float(np.mean(np.log(np.maximum(np.abs(v), 1e-20)))),
    "layer_pweighted": lambda v, n: float(np.sum(np.asarray(v) * n) / np.sum(n)),
    **{f"{p}{name}": fn for p in "ln" for name, fn in (("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
                                                         ("mul", lambda a, b: a * b), ("div", _sdiv))},
}
SHAPES = [(4, 5), (6,), (3, 2, 2, 2), (1, 7), ()]


def _close(got, want, rtol):
    return got.shape == want.shape and torch.allclose(got.double(), want.double(), rtol=rtol, atol=1e-6, equal_nan=True)


def test_every_operator_equals_its_plain_torch_reference():
    assert set(REFERENCE) == set(OPS)  # a new operator needs its reference here
    g = torch.Generator().manual_seed(0)
    for name, op in OPS.items():
        ref = REFERENCE[name]
        if op.kind in ("unary", "binary", "reduce"):
            for shape in SHAPES:
                args = [torch.randn(3, *shape, generator=g) * 3 for _ in range(2 if op.kind == "binary" else 1)]
                try:
                    got = op.fn(*args)
                except OpError as exc:  # the guards: shapes the operator does not take
                    assert exc.reason == "shape" and (shape == () or len(shape) < 2 or name == "batch_std"), (name, shape)
                    continue
                if op.kind == "reduce":
                    want = torch.tensor([ref(args[0][i]) for i in range(3)], dtype=torch.float64)
                    assert got.dtype == torch.float64 and _close(got, want, 1e-9), (name, shape, got, want)
                else:
                    want = torch.stack([ref(*(a[i] for a in args)) for i in range(3)])
                    assert got.dtype == torch.float32 and _close(got, want, 1e-5), (name, shape)
        elif op.kind in ("lbinary", "nbinary"):
            a = torch.tensor([1.5, -2.0, 0.0, 3.0, -1e-12], dtype=torch.float64)
            b = torch.tensor([0.0, -0.5, 2.0, -1e-12, 4.0], dtype=torch.float64)
            want = torch.tensor([ref(x, y) for x, y in zip(a.tolist(), b.tolist())], dtype=torch.float64)
            assert _close(op.fn(a, b), want, 1e-12), name
        else:  # aggregations: rows of different lengths, zero-padded past each sample's last layer
            lengths = [5, 3, 9, 1]
            values = torch.zeros(4, 9, dtype=torch.float64)
            counts = torch.zeros(4, 9, dtype=torch.float64)
            for r, n in enumerate(lengths):
                values[r, :n] = torch.randn(n, generator=g, dtype=torch.float64) * 10
                counts[r, :n] = torch.randint(1, 1000, (n,), generator=g).double()
            mask = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
            want = torch.tensor([ref(values[r, :n].numpy(), counts[r, :n].numpy()) for r, n in enumerate(lengths)],
                                dtype=torch.float64)
            assert _close(op.fn(values, mask, counts), want, 1e-12), name


def test_operator_guards():
    with pytest.raises(OpError) as err:
        OPS["gram"].fn(torch.ones(2, 600, 3))
    assert err.value.reason == "size"
    with pytest.raises(OpError) as err:
        OPS["matmul"].fn(torch.ones(2, 3, 4), torch.ones(2, 3, 5))
    assert err.value.reason == "shape"
    with pytest.raises(OpError) as err:
        OPS["add"].fn(torch.ones(2, 3, 4), torch.ones(2, 4, 3))
    assert err.value.reason == "shape"
    for name in ("mean", "max", "min", "minmax"):
        with pytest.raises(OpError, match="empty"):
            OPS[name].fn(torch.ones(2, 0))


# ------------------------------------------------------------------------------------- the stacked evaluator

FUNCTIONS = {name: op.fn for name, op in OPS.items()}


def reference(tree, stats, start, stop):
    """(reason, scores): each network alone, layer by layer (every layer a batch of one), screened as
    score_range screens (first non-finite score or raise in sample order, then constant)."""
    out = []
    for st in stats[start:stop]:
        try:
            v = evaluate_json(tree.to_json(), [l.tensors for l in st.layers], [math.prod(l.weight_shape) for l in st.layers],
                              FUNCTIONS, [l.name for l in st.layers])
        except OPERATOR_ERRORS as exc:
            return _rejected(exc, 0.0).reason, None
        if not math.isfinite(v):
            return "nan", None
        out.append(v)
    if len(out) > 1 and _is_constant(np.asarray(out)):
        return "constant", None
    return None, out


def same(scored, want) -> bool:
    reason, scores = want
    if scored.reason != reason:
        return False
    return scores is None or (len(scored.scores) == len(scores) and all(
        abs(x - y) <= 1e-5 * max(abs(x), abs(y)) for x, y in zip(scored.scores, scores)))


@pytest.mark.parametrize("structure", ["emq", "tree"])
@pytest.mark.parametrize("probe_bytes", [0, vectorised.PROBE_BYTES], ids=["probe", "one-pass"])
def test_random_trees_equal_each_network_alone(stats, structure, probe_bytes, monkeypatch):
    monkeypatch.setattr(vectorised, "PROBE_BYTES", probe_bytes)
    space = SearchSpace(list(PRIMITIVES), structure)
    random.seed(7)
    outcomes = {}
    for _ in range(60):
        tree = space.random_tree()
        for start, stop in ((0, len(stats)), (1, 3)):
            a, b = score_range(tree, stats, start, stop), reference(tree, stats, start, stop)
            assert same(a, b), (tree.to_json(), (start, stop), a, b)
            outcomes[a.reason] = outcomes.get(a.reason, 0) + 1
        if a.reason is None:  # the library's single network: a stack of one
            assert a.scores == pytest.approx([tree_value(tree, st) for st in stats[1:3]], rel=1e-5)
    assert outcomes.get(None, 0) >= 20 and outcomes.get("shape", 0) >= 5  # both valid and rejected trees were checked


def test_first_error_in_network_order(stats):
    """The first raising sample, and its error, are those of the networks evaluated in order; values stop before it."""
    st = vectorised.stack(stats)
    # the last synthetic network has a 520-way classifier: gram of the weight raises "size" there only
    tree = ["layer_sum", ["sum", ["gram", "weight"]]]
    result = vectorised.tree_values(tree, st, 0, len(stats))
    assert result.error is not None and result.error[0] == len(stats) - 1
    assert isinstance(result.error[1], OpError) and result.error[1].reason == "size"
    assert len(result.values) == len(stats) - 1
    shape = score_range(parse_tree(["layer_sum", ["l1", ["mul", "weight", "act_out"]]]), stats, 0, len(stats))
    assert shape.reason == "shape"


def test_mq_style_shared_tensors_are_stacked_once(stats):
    """Configurations of one network share its FP tensors: they are stacked once, the items deduplicated."""
    from primitives.items import with_bit_config
    from mqbench.quant.fakequant import quantize_weight

    net = stats[0]
    configs = [[b] * len(net.layers) for b in (2, 3, 4, 2, 3)]
    items = [with_bit_config(net, bits, ["weight_q", "quant_error", "bitwidth"], quantize_weight, {}) for bits in configs]
    st = vectorised.stack(items)
    weights = sum(g.stores["weight"].shape[0] for g in st.groups)
    assert weights == len(net.layers)
    for structure in ("emq", "tree"):
        space = SearchSpace(list(PRIMITIVES), structure)
        random.seed(3)
        for _ in range(25):
            tree = space.random_tree()
            assert same(score_range(tree, items, 0, len(items)), reference(tree, items, 0, len(items))), tree.to_json()


def test_stack_of_named_statistics(stats):
    """stack(names=...) keeps only those statistics; a tree over them scores the same."""
    tree = ["layer_mean", ["l1", ["mul", "weight", "weight_grad"]]]
    part = vectorised.stack(stats, names={"weight", "weight_grad"})
    assert all(set(g.stores) <= {"weight", "weight_grad"} for g in part.groups)
    full = vectorised.tree_values(tree, vectorised.stack(stats), 0, len(stats)).values
    assert (vectorised.tree_values(tree, part, 0, len(stats)).values == full).all()
    missing = vectorised.tree_values(["layer_sum", ["sum", "act_out"]], part, 0, len(stats)).error
    assert missing[0] == 0 and missing[1].reason == "missing"


def test_layer_values_memo_is_reused_and_bounded(stats, monkeypatch):
    """Layer values (and errors) of a subtree are kept per stacked set and give the same result again; the
    memo stays under MEMO_BYTES."""
    st = vectorised.stack(stats)
    tree = ["nadd", ["layer_sum", ["l1", "weight"]], ["layer_mean", ["l1", "weight"]]]
    first = vectorised.tree_values(tree, st, 0, len(stats))
    assert len(st.memo) == 1
    assert (vectorised.tree_values(tree, st, 0, len(stats)).values == first.values).all()
    bad = ["layer_sum", ["sum", ["gram", "weight"]]]  # raises "size" on the last network
    for _ in range(2):
        err = vectorised.tree_values(bad, st, 0, len(stats)).error
        assert err[0] == len(stats) - 1 and err[1].reason == "size"
    one = st.memo[next(iter(st.memo))][0].numel() * 8
    monkeypatch.setattr(vectorised, "MEMO_BYTES", 2 * one)
    for name in ("weight", "weight_grad", "act_out", "act_in"):
        vectorised.tree_values(["layer_sum", ["mean", name]], st, 0, len(stats))
    assert st.memo_bytes <= 2 * one and len(st.memo) == 2


def test_numel_needs_one_item(stats):
    """numel depends on shapes only: computed from one item per group, equal to each network's own value."""
    tree = parse_tree(["layer_sum", ["numel", ["gram", ["exp", "act_out"]]]])
    want = [float(sum(l.tensors["act_out"].shape[0] ** 2 for l in st.layers)) for st in stats]
    assert score_range(tree, stats, 0, len(stats)).scores == want


def test_logdet_from_the_smaller_gram():
    """m < n columns: log det from X^T X (Sylvester) equals the n x n way; a zero or non-finite X gives nan
    (the n x n way)."""
    torch.manual_seed(0)
    x = torch.randn(6, 12, 4)
    x[1] = 0
    x[2, 0, 0] = float("inf")
    x[3, :, 1] = x[3, :, 0]  # rank-deficient X: the ridge keeps it finite
    got = OPS["logdet"].fn(x).tolist()
    want = [_logdet(x[i]) for i in range(len(x))]
    for g, w in zip(got, want):
        assert (g != g and w != w) or g == pytest.approx(w, rel=1e-9), (got, want)


@pytest.mark.parametrize("sa,sb", [((1, 1, 1), (5,)), ((), (3, 2)), ((1, 1), ()), ((4,), (1,)), ((0,), (1,)), ((2, 3), (2, 3))])
def test_broadcast_like_torch_per_item(sa, sb):
    a, b = torch.randn(3, *sa), torch.randn(3, *sb)
    for x, y in ((a, b), (b, a)):
        want = torch.stack([x[i] * y[i] for i in range(3)])
        got = OPS["mul"].fn(x, y)
        assert got.shape == want.shape and torch.equal(got, want)
