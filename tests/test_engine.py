"""The proxy language (operators, trees, JSON parser), the search space, fitness and screening."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from evoproxy import ops
from evoproxy.screening import score_range
from evoproxy.fitness import oriented_fitness, subsets
from evoproxy.ops import OPS, OpError
from evoproxy.space import ProxyTree, SearchSpace, is_emq_shaped
from evoproxy.tree import ProxyFileError, canonical, load_proxy, parse_proxy, parse_tree, render, tree_value
from primitives.core import LayerStats, NetworkStats

ROOT = Path(__file__).resolve().parent.parent


def _net(seed: int = 0, layers: int = 3, bits=None) -> NetworkStats:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(layers):
        w = torch.randn(4, 3, 3, 3, generator=g)
        tensors = {"weight": w, "weight_grad": torch.randn(4, 3, 3, 3, generator=g) * 1e-3,
                   "act_out": torch.randn(8, 4, generator=g), "fisher": torch.rand(4, generator=g)}
        if bits is not None:
            tensors["bitwidth"] = torch.tensor(bits[i], dtype=torch.int32)
        out.append(LayerStats(f"l{i}", "conv", (4, 3, 3, 3), (3, 8, 8), (4, 8, 8), 108, 6912, None, tensors))
    return NetworkStats(out)


# ------------------------------------------------------------------------------------------- operators

def test_at_least_fifteen_unary_ops_and_every_kind_present():
    kinds = {op.kind for op in OPS.values()}
    assert {"unary", "binary", "reduce", "lbinary", "aggregate", "nbinary"} <= kinds
    assert len(ops.ops_of("unary")) >= 15
    assert {"add", "sub", "mul", "div", "matmul"} <= {o.name for o in ops.ops_of("binary")}
    assert {"mean", "sum", "l1", "fro", "std", "numel", "logdet"} <= {o.name for o in ops.ops_of("reduce")}
    assert {"layer_sum", "layer_mean", "layer_meanlog", "layer_pweighted"} <= {o.name for o in ops.ops_of("aggregate")}
    assert all(op.doc for op in OPS.values())


def one(name, *args):
    """Operator ``name`` on a batch of one item (every operator takes batched arguments): the item's result."""
    return OPS[name].fn(*(a[None] for a in args))[0]


def agg(name, values, counts):
    """Aggregation ``name`` of one network's layer values and weight counts."""
    v = torch.as_tensor(values, dtype=torch.float64)[None]
    c = torch.as_tensor(counts, dtype=torch.float64)[None]
    return float(OPS[name].fn(v, torch.ones_like(v, dtype=torch.bool), c)[0])


def test_unary_ops_against_their_definitions():
    x = torch.tensor([[-2.0, 0.0], [0.5, 3.0]])
    assert torch.equal(one("log", x), torch.log(torch.tensor([[2.0, 1e-20], [0.5, 3.0]])))
    assert torch.allclose(one("sqrt", x), torch.tensor([[2.0, 0.0], [0.5, 3.0]]).sqrt())
    assert one("exp", torch.tensor([100.0])).item() == pytest.approx(math.exp(30), rel=1e-6)
    inv = one("inv", torch.tensor([0.0, -0.0, 2.0]))
    assert inv[0].item() == pytest.approx(1e12) and inv[2].item() == pytest.approx(0.5)
    z = one("znorm", x)
    assert z.mean().item() == pytest.approx(0, abs=1e-6) and z.std().item() == pytest.approx(1, rel=1e-5)
    mm = one("minmax", x)
    assert mm.min().item() == 0 and mm.max().item() == pytest.approx(1)
    assert torch.allclose(one("softmax", x).sum(), torch.tensor(1.0))
    assert torch.equal(one("gram", x), x @ x.T)
    assert torch.equal(one("batch_mean", x), x.mean(0))


def test_binary_ops_check_shapes():
    a, b = torch.ones(2, 3), torch.ones(3, 2)
    with pytest.raises(OpError) as err:
        one("add", a, b)
    assert err.value.reason == "shape"
    assert torch.equal(one("mul", a, torch.tensor(2.0)), 2 * a)  # single element broadcasts
    assert one("matmul", torch.ones(2, 3), torch.ones(4, 3)).shape == (2, 4)
    with pytest.raises(OpError):
        one("matmul", a, b)
    with pytest.raises(OpError) as err:
        one("gram", torch.ones(600, 2))
    assert err.value.reason == "size"


def test_reductions_and_logdet_against_numpy():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    xd = x.double().numpy()
    assert float(one("l1", x)) == pytest.approx(np.abs(xd).sum())
    assert float(one("fro", x)) == pytest.approx(np.sqrt((xd ** 2).sum()))
    assert float(one("std", x)) == pytest.approx(xd.std(ddof=1))
    assert float(one("numel", x)) == 35
    k = xd @ xd.T
    expected = np.linalg.slogdet(k + 1e-6 * np.trace(k) / 5 * np.eye(5))[1]
    assert float(one("logdet", x)) == pytest.approx(expected, rel=1e-9)
    assert agg("layer_pweighted", [1.0, 3.0], [1, 3]) == pytest.approx(2.5)
    assert agg("layer_meanlog", [math.e, -math.e ** 3], [1, 1]) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- trees

SNIP = ["layer_sum", ["l1", ["mul", "weight_grad", "weight"]]]


def test_tree_value_equals_hand_computation():
    st = _net()
    tree = parse_tree(SNIP)
    expected = sum(float((l["weight_grad"].double() * l["weight"].double()).abs().sum()) for l in st.layers)
    assert tree_value(tree, st) == pytest.approx(expected, rel=1e-6)
    st_b = _net(bits=[2, 3, 4])
    assert tree_value(parse_tree(["layer_sum", ["mean", "bitwidth"]]), st_b) == 9


def test_json_round_trip_canonical_and_render():
    tree = parse_tree(SNIP)
    assert parse_tree(json.loads(json.dumps(tree.to_json()))) == tree
    swapped = parse_tree(["layer_sum", ["l1", ["mul", "weight", "weight_grad"]]])
    assert canonical(swapped) == canonical(tree) and swapped != tree
    assert canonical(parse_tree(["layer_sum", ["l1", ["sub", "weight", "weight_grad"]]])) != \
        canonical(parse_tree(["layer_sum", ["l1", ["sub", "weight_grad", "weight"]]]))
    assert render(tree) == "Σ_l ||(G * W)||_1"
    assert "\\sum" in render(tree, latex=True)


@pytest.mark.parametrize("tree, message", [
    (["layer_sum", ["l1", ["bogus", "weight"]]], "unknown operator 'bogus'"),
    (["layer_sum", ["l1", ["mul", "weight"]]], "takes 2 argument(s), got 1"),
    (["layer_sum", ["l1", "nonsense"]], "unknown statistic 'nonsense'"),
    (["layer_sum", ["mul", "weight", "weight"]], "needs a layer argument"),
    (["l1", "weight"], "root must be a network-level operator"),
    (["layer_sum", ["l1", 3]], "expected an operator list"),
    (["layer_sum", "mean"], "used without arguments"),
])
def test_parser_rejects_malformed_trees_with_one_line(tree, message):
    with pytest.raises(ProxyFileError) as err:
        parse_tree(tree)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_proxy_files_are_parsed_never_executed(tmp_path):
    good = {"format": "evoproxy.proxy/1", "tree": SNIP, "orientation": -1}
    proxy = parse_proxy(good)
    assert proxy.orientation == -1 and proxy.formula.startswith("-(")
    path = tmp_path / "p.json"
    proxy.save(path)
    assert load_proxy(path).tree == proxy.tree
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProxyFileError, match="not valid JSON"):
        load_proxy(tmp_path / "bad.json")
    for doc, msg in [({"tree": SNIP}, "format must be"), ({**good, "orientation": 2}, "orientation"),
                     ({**good, "extraction": {"evil": 1}}, "unknown extraction setting"),
                     ({**good, "primitives": {"evil": 1}}, "unknown primitives setting"),  # the key's old name
                     ({**good, "extraction": {}, "primitives": {}}, "both 'extraction' and 'primitives'"),
                     ({**good, "tree": ["layer_sum", ["l1", "hessian_diag"]]}, "hutchinson_probes"),
                     ({**good, "tree": "__import__('os').system('x')"}, "unknown statistic")]:
        with pytest.raises(ProxyFileError, match=msg):
            parse_proxy(doc)
    with pytest.raises(Exception, match="not found"):
        load_proxy(tmp_path / "missing.json")


def _nested(depth: int) -> str:
    """A proxy file whose tree is a chain of ``depth`` operators over one terminal (at the parser's depth ``depth``)."""
    inner = '"weight"'
    for _ in range(depth - 2):
        inner = f'["abs", {inner}]'
    return '{"format": "evoproxy.proxy/1", "orientation": 1, "tree": ["layer_sum", ["l1", ' + inner + ']]}'


def test_deeply_nested_proxy_file_is_one_line_naming_the_limit(search_root, tmp_path, capsys):
    """Issue 22 item 8: a file nested 1000 deep ended in a RecursionError traceback from json.loads, before the
    parser's own depth check; now every command that reads it gives one line naming the limit, exit 2."""
    from evoproxy.cli import main
    from evoproxy.tree import MAX_DEPTH

    ok, over, deep = tmp_path / "ok.json", tmp_path / "over.json", tmp_path / "deep.json"
    ok.write_text(_nested(MAX_DEPTH))
    over.write_text(_nested(MAX_DEPTH + 1))
    deep.write_text(_nested(1000))
    assert load_proxy(ok).tree.size() == MAX_DEPTH + 1  # the deepest tree the parser takes
    with pytest.raises(ProxyFileError, match=f"nested deeper than {MAX_DEPTH}"):
        load_proxy(over)
    for argv in (["show", str(deep)], ["export", str(deep)],
                 ["evaluate", "--bench", "nb201-cifar10", "--proxy", str(deep), "--samples", "3", "--batch", "4"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"error: {deep}: nested deeper") and f"at most {MAX_DEPTH} levels" in err
    brackets = tmp_path / "brackets.json"  # brackets inside strings are no nesting
    brackets.write_text(json.dumps({"format": "evoproxy.proxy/1", "tree": SNIP, "search": {"note": "[" * 5000}}))
    assert load_proxy(brackets).tree == parse_tree(SNIP)


@pytest.mark.parametrize("setting, value", [("noise_std", "NaN"), ("noise_std", "Infinity"), ("noise_std", "-0.5"),
                                            ("hutchinson_probes", "NaN"), ("hutchinson_probes", "-1")])
@pytest.mark.parametrize("terminal", ["weight_grad", "weight_grad@perturb"])
def test_bad_extraction_setting_is_one_line_naming_it(search_root, tmp_path, capsys, setting, value, terminal):
    """Issue 22 item 8: noise_std NaN was accepted (exit 0 when the tree does not use it, else a late "non-finite
    score" not naming the setting), NaN probes a ValueError traceback; now the parser names the setting, exit 2."""
    from evoproxy.cli import main

    path = tmp_path / "p.json"
    path.write_text('{"format": "evoproxy.proxy/1", "orientation": 1, "tree": ["layer_sum", ["l1", "%s"]], '
                    '"extraction": {"%s": %s}}' % (terminal, setting, value))
    code = main(["evaluate", "--bench", "nb201-cifar10", "--proxy", str(path), "--samples", "3", "--batch", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {path}: extraction.{setting} must be ") and ">= 0, got " in err, err
    zero = {"format": "evoproxy.proxy/1", "tree": ["layer_sum", ["l1", terminal]], "extraction": {"noise_std": 0}}
    assert parse_proxy(zero).extraction == {"noise_std": 0.0}  # no noise is a setting, not an error


def test_proxy_files_with_the_old_primitives_key_still_load():
    """Issue 22 item 4: a proxy file's extraction settings were under "primitives" (a word that also names the
    per-layer statistics and DEAP's operators); files are written with "extraction" now and old ones still load."""
    from evoproxy.tree import Proxy

    files = sorted((ROOT / "examples" / "proxies").glob("*.json")) + sorted((ROOT / "results").rglob("best.json"))
    old = [f for f in files if "primitives" in json.loads(f.read_text())]
    assert old, "no committed proxy file with the old key left to check"
    for f in old:
        doc = json.loads(f.read_text())
        proxy = load_proxy(f)
        assert proxy.extraction == doc["primitives"] and proxy.primitives is proxy.extraction  # deprecated alias
        written = proxy.to_json()
        assert "primitives" not in written and written["extraction"] == doc["primitives"]
        again = parse_proxy(written)
        assert (again.tree, again.orientation, again.extraction) == (proxy.tree, proxy.orientation, proxy.extraction)
    assert Proxy(parse_tree(SNIP), 1, {"noise_std": 0.5}).extraction == {"noise_std": 0.5}  # positional as before


# ------------------------------------------------------------------------------------------- search space

TERMS = ["weight", "weight_grad", "act_out", "fisher"]


@pytest.mark.parametrize("structure", ["emq", "tree"])
def test_generation_and_variation_stay_valid(structure):
    space = SearchSpace(TERMS, structure, max_depth=7, max_size=20)
    random.seed(1)
    pop = [space.random_tree() for _ in range(50)]
    for _ in range(400):
        a, b = random.sample(pop, 2)
        before = (list(a), list(b))
        x, y = space.crossover(a, b)
        z = space.mutate(x)
        assert (list(a), list(b)) == before and x is not a and z is not x  # variation never changes its arguments
        for t in (x, y, z):
            assert parse_tree(t.to_json()) == t
            assert space.within_limits(t)
            assert structure == "tree" or is_emq_shaped(t)
            assert type(t) is ProxyTree
        pop[random.randrange(len(pop))] = z
    assert len({canonical(t) for t in pop}) > 10


def test_sampling_weights_zero_removes_an_operator():
    space = SearchSpace(TERMS, "emq", weights={"log": 0, "fisher": 0, "layer_mean": 5})
    random.seed(0)
    trees = [space.random_tree() for _ in range(300)]
    names = [n for t in trees for n in json.dumps(t.to_json()).split('"')]
    assert "log" not in names and "fisher" not in names
    assert sum(t.name == "layer_mean" for t in trees) > 100
    with pytest.raises(Exception, match="unknown"):
        SearchSpace(TERMS, "emq", weights={"nope": 1})


def test_one_tree_type_over_the_real_operator_functions():
    space = SearchSpace(TERMS, "tree", weights={"log": 0, "matmul": 1})
    assert space.pset.context["sqrt"] is OPS["sqrt"].fn and "log" not in space.pset.mapping
    tree = parse_tree(SNIP)
    assert type(tree) is ProxyTree and tree.to_json() == SNIP and tree.terminals() == {"weight_grad", "weight"}
    assert (tree.size(), tree.depth(), tree.name, tree.type) == (5, 4, "layer_sum", "net")
    reduce = ProxyTree(tree[tree.searchSubtree(1)])
    assert reduce.to_json() == SNIP[1] and reduce.type == "layer" and ProxyTree(tree[4:5]).is_terminal
    tree[2] = space.node("sub")  # a prefix-list edit is seen by every view of the tree
    assert tree.to_json()[1] == ["l1", ["sub", "weight_grad", "weight"]]
    with pytest.raises(Exception, match="only be 0"):
        SearchSpace(TERMS, "tree", weights={"log": 2})


# ------------------------------------------------------------------------------------------- fitness, screening

def test_oriented_fitness_takes_the_better_sign():
    y = np.arange(20.0)
    value, orient = oriented_fitness("spearman", -y ** 3, y)
    assert value == pytest.approx(1.0) and orient == -1
    value, orient = oriented_fitness("subset_min", y + np.sin(y) * 3, y, seed=3)
    expected = min(spearmanr((y + np.sin(y) * 3)[i], y[i]).statistic for i in subsets(20, 3))
    assert value == pytest.approx(expected)
    assert oriented_fitness("spearman", np.ones(20), y)[0] == -math.inf


def test_screening_rejects_with_reasons():
    stats = [_net(s) for s in range(4)]
    ok = score_range(parse_tree(SNIP), stats, 0, 4)
    assert ok.reason is None and len(ok.scores) == 4
    shape = score_range(parse_tree(["layer_sum", ["l1", ["mul", "weight", "act_out"]]]), stats, 0, 4)
    assert shape.reason == "shape" and "differ" in shape.message
    const = score_range(parse_tree(["layer_sum", ["numel", "weight"]]), stats, 0, 4)
    assert const.reason == "constant"
    nan = score_range(parse_tree(["layer_sum", ["logdet", ["sub", "weight", "weight"]]]), stats, 0, 4)
    assert nan.reason == "nan"
