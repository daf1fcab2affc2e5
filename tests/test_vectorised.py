"""The vectorised scoring path equals the per-sample one: same rejection reason, scores within 1e-5
relative, on random valid and invalid trees of both structures (synthetic statistics, no data files)."""
import random

import pytest
import torch

import evoproxy.vectorised as vectorised
from evoproxy.fuzz import synthetic_stats
from evoproxy.opkernels import OpError
from evoproxy.screening import score_range
from evoproxy.space import SearchSpace
from evoproxy.tree import parse_tree
from primitives import PRIMITIVES
from evoproxy.scoring_speed import agree as same  # the timing command's equality check


@pytest.fixture(scope="module")
def stats():
    torch.manual_seed(0)
    return synthetic_stats(seed=0, networks=4, batch=8, probes=1)




@pytest.mark.parametrize("structure", ["emq", "tree"])
@pytest.mark.parametrize("probe_bytes", [0, vectorised.PROBE_BYTES], ids=["probe", "one-pass"])
def test_random_trees_equal(stats, structure, probe_bytes, monkeypatch):
    monkeypatch.setattr(vectorised, "PROBE_BYTES", probe_bytes)
    space = SearchSpace(list(PRIMITIVES), structure)
    random.seed(7)
    outcomes = {}
    for _ in range(60):
        tree = space.random_tree()
        for start, stop in ((0, len(stats)), (1, 3)):
            a = score_range(tree, stats, start, stop, vectorised=False)
            b = score_range(tree, stats, start, stop, vectorised=True)
            assert same(a, b), (tree.to_json(), (start, stop), a, b)
            outcomes[a.reason] = outcomes.get(a.reason, 0) + 1
    assert outcomes.get(None, 0) >= 20 and outcomes.get("shape", 0) >= 5  # both valid and rejected trees were checked


def test_every_operator_has_a_batched_form():
    from evoproxy.ops import OPS

    assert set(OPS) <= set(vectorised.BATCHED)


def test_fallback_loop_equals_batched(stats):
    """An operator without a batched form is evaluated item by item with its kernel function."""
    st = vectorised.stack(stats)
    tree = ["layer_meanlog", ["logdet", ["znorm", ["mul", "act_out", ["minmax", "act_grad"]]]]]
    want = vectorised.evaluate(tree, st, 0, len(stats)).values
    saved = dict(vectorised.BATCHED)
    try:
        for name in ("logdet", "znorm", "mul", "minmax", "layer_meanlog"):
            del vectorised.BATCHED[name]
        st.plans.clear()
        st.memo.clear()
        got = vectorised.evaluate(tree, st, 0, len(stats)).values
    finally:
        vectorised.BATCHED.update(saved)
    assert got == pytest.approx(want, rel=1e-6)


def test_first_error_in_per_sample_order(stats):
    """The first raising sample, and its error, are the per-sample evaluator's; values stop before it."""
    st = vectorised.stack(stats)
    # the last synthetic network has a 520-way classifier: gram of the weight raises "size" there only
    tree = ["layer_sum", ["sum", ["gram", "weight"]]]
    result = vectorised.evaluate(tree, st, 0, len(stats))
    assert result.error is not None and result.error[0] == len(stats) - 1
    assert isinstance(result.error[1], OpError) and result.error[1].reason == "size"
    assert len(result.values) == len(stats) - 1
    shape = score_range(parse_tree(["layer_sum", ["l1", ["mul", "weight", "act_out"]]]), stats, 0, len(stats))
    assert shape.reason == "shape"


def test_mq_style_shared_tensors_are_stacked_once(stats):
    """Configurations of one network share its FP tensors: they are stacked once, the items deduplicated."""
    from primitives.items import with_bit_config
    from mqbench.quant import quantize_weight

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
            assert same(score_range(tree, items, 0, len(items), vectorised=False),
                        score_range(tree, items, 0, len(items), vectorised=True)), tree.to_json()


def test_layer_values_memo_is_reused_and_bounded(stats, monkeypatch):
    """Layer values (and errors) of a subtree are kept per stacked set and give the same result again; the
    memo stays under MEMO_BYTES."""
    st = vectorised.stack(stats)
    tree = ["nadd", ["layer_sum", ["l1", "weight"]], ["layer_mean", ["l1", "weight"]]]
    first = vectorised.evaluate(tree, st, 0, len(stats))
    assert len(st.memo) == 1
    assert (vectorised.evaluate(tree, st, 0, len(stats)).values == first.values).all()
    bad = ["layer_sum", ["sum", ["gram", "weight"]]]  # raises "size" on the last network
    for _ in range(2):
        err = vectorised.evaluate(bad, st, 0, len(stats)).error
        assert err[0] == len(stats) - 1 and err[1].reason == "size"
    one = st.memo[next(iter(st.memo))][0].numel() * 8
    monkeypatch.setattr(vectorised, "MEMO_BYTES", 2 * one)
    for name in ("weight", "weight_grad", "act_out", "act_in"):
        vectorised.evaluate(["layer_sum", ["mean", name]], st, 0, len(stats))
    assert st.memo_bytes <= 2 * one and len(st.memo) == 2


def test_numel_needs_one_item(stats):
    """numel depends on shapes only: computed from one item per group, equal to the per-sample value."""
    tree = parse_tree(["layer_sum", ["numel", ["gram", ["exp", "act_out"]]]])
    assert same(score_range(tree, stats, 0, len(stats), vectorised=False),
                score_range(tree, stats, 0, len(stats), vectorised=True))


def test_logdet_from_the_smaller_gram():
    """m < n columns: log det from X^T X (Sylvester) equals the kernel's n x n way; a zero or non-finite X
    gives what the kernel gives (nan) through the n x n way."""
    from evoproxy.opkernels import red_logdet

    torch.manual_seed(0)
    x = torch.randn(6, 12, 4)
    x[1] = 0
    x[2, 0, 0] = float("inf")
    x[3, :, 1] = x[3, :, 0]  # rank-deficient X: the ridge keeps it finite
    got = vectorised.BATCHED["logdet"](x).tolist()
    want = [red_logdet(x[i]) for i in range(len(x))]
    for g, w in zip(got, want):
        assert (g != g and w != w) or g == pytest.approx(w, rel=1e-9), (got, want)


@pytest.mark.parametrize("sa,sb", [((1, 1, 1), (5,)), ((), (3, 2)), ((1, 1), ()), ((4,), (1,)), ((0,), (1,)), ((2, 3), (2, 3))])
def test_broadcast_like_the_kernel(sa, sb):
    from evoproxy.opkernels import op_mul

    a, b = torch.randn(3, *sa), torch.randn(3, *sb)
    for x, y in ((a, b), (b, a)):
        want = torch.stack([op_mul(x[i], y[i]) for i in range(3)])
        got = vectorised.BATCHED["mul"](x, y)
        assert got.shape == want.shape and torch.equal(got, want)
