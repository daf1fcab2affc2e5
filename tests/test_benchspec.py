"""Bring-your-own benchmarks (mqbench.spec): a spec reproduces the built-ins exactly; user errors are one line."""
from __future__ import annotations

import json
import pickle
import sys
import textwrap

import numpy as np
import pytest

from evoproxy.cli import main
from mqbench.errors import ConfigError, DataError

FACTORIES = '''
from mqbench.networks.nb201 import NB201Network
from mqbench.networks.resnet_cifar import load_pretrained

def nb201(row):
    return NB201Network(row["ArchitectureString"])

def resnet8(checkpoint):
    return load_pretrained(8, checkpoint)

def boom(row):
    raise RuntimeError("no network for " + row["ArchitectureString"][:12])

def not_a_module(*args):
    return 42

NOT_CALLABLE = 3
'''

NB201_SPEC = '''
name = "my-nb201"
kind = "nas"
[table]
path = "$EVOPROXY_DATA/nats-bench/nats_tss_cifar10.csv"
gt_column = "CIFAR10TestAccuracy200Epochs"
[model]
python_path = ["."]
factory = "tiny_factories:{factory}"
init_seed = "id"
'''

MQ_SPEC = '''
name = "my-mq"
kind = "mq"
[table]
path = "mq.csv"
id_column = "index"
gt_column = "top1"
{size}
[model]
python_path = ["."]
factory = "tiny_factories:resnet8"
checkpoint = "$EVOPROXY_DATA/pretrained/resnet8-test.th"
[bits]
column = "bits"
fixed_layers = [0, -1]
fixed_bits = 8
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A folder with the user's factory module (kept off sys.modules between tests)."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "tiny_factories.py").write_text(FACTORIES)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "tiny_factories", raising=False)
    yield folder
    sys.modules.pop("tiny_factories", None)


def _write(folder, text, name="spec.toml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _mq_table(root, folder, n=6):
    """An MQ-Bench table (and its metadata) for the tiny ResNet-8 checkpoint, made-up accuracies."""
    from mqbench.build import TABLE_COLUMNS, bits_to_str
    from mqbench.dataroot import file_sha256
    from mqbench.networks.resnet_cifar import load_pretrained
    from mqbench.quant import layer_macs, model_size_mb, quantizable_layers

    ckpt = root / "pretrained" / "resnet8-test.th"
    layers = quantizable_layers(load_pretrained(8, ckpt))
    k = len(layers)
    w = [m.weight.numel() for _, m in layers]
    b = [0 if m.bias is None else m.bias.numel() for _, m in layers]
    meta = {"format": "mqbench-table/1", "model": "resnet8", "checkpoint_file": ckpt.name,
            "checkpoint_sha256": file_sha256(ckpt), "layer_names": [name for name, _ in layers],
            "searchable": list(range(1, k - 1)), "fixed_bits": 8, "act_bits": 8, "allowed": [2, 3, 4],
            "layer_params": w, "layer_macs": layer_macs(load_pretrained(8, ckpt))}
    rng = np.random.default_rng(0)
    lines = [",".join(TABLE_COLUMNS)]
    for i in range(n):
        bits = [int(x) for x in rng.integers(2, 5, size=k - 2)]
        size = model_size_mb(w, b, [8] + bits + [8])
        lines.append(f"{i},sample,{bits_to_str(bits)},{10 + sum(bits) + rng.normal():.2f},{size:.6f},0.1,0,x,1.0")
    (folder / "mq.csv").write_text("\n".join(lines) + "\n")
    (folder / "mq.csv.meta.json").write_text(json.dumps(meta))
    return folder / "mq.csv"


def _scores(d: dict) -> dict:
    return {name: [r["scores"][name] for r in d["results"]] for name in d["results"][0]["scores"]}


# ------------------------------------------------------------------------------------------ identity


def test_nb201_spec_scores_equal_the_builtin(search_root, plugin):
    from evoproxy.evaluation import proxy_reports
    from mqbench.benchmarks import get_benchmark

    spec = _write(plugin, NB201_SPEC.format(factory="nb201"))
    mine, builtin = get_benchmark(str(spec)), get_benchmark("nb201-cifar10")
    assert mine.ids == builtin.ids and mine.split() == builtin.split()
    assert mine.sample(5, 4, "search") == builtin.sample(5, 4, "search")
    ids = builtin.sample(12, 3)
    assert list(mine.size(ids)) == list(builtin.size(ids))  # counted on the built network == closed form
    proxies = ["synflow", "params", "examples/proxies/snip.json"]
    out = {}
    for bench in ("nb201-cifar10", str(spec)):
        d = {}
        reps = proxy_reports(bench, proxies, 3, 1, "holdout", batch=10, progress=False, items=d)
        out[bench] = (d, reps)
    (a, ra), (b, rb) = out["nb201-cifar10"], out[str(spec)]
    assert a["ids"] == b["ids"] and list(a["truth"]) == list(b["truth"]) and list(a["size"]) == list(b["size"])
    assert _scores(a) == _scores(b)
    assert all(not r["errors"] for r in a["results"] + b["results"])
    assert rb["synflow"]["partial_on"] == "params" and rb["synflow"]["spearman"] == ra["synflow"]["spearman"]


def test_mq_spec_scores_equal_the_builtin(tiny_data_root, plugin):
    from evoproxy.evaluation import proxy_reports
    from mqbench.benchmarks import get_benchmark

    table = _mq_table(tiny_data_root, plugin)
    spec = _write(plugin, MQ_SPEC.format(size='size_column = "size_mb"'))
    mine, builtin = get_benchmark(str(spec)), get_benchmark("mq-resnet20-cifar10", table=table)
    assert mine.kind == "mq" and mine.default_probes == 8 and mine.normalization == "imagenet"
    assert [mine.bit_config(i) for i in mine.ids] == [builtin.bit_config(i) for i in builtin.ids]
    computed = get_benchmark(str(_write(plugin, MQ_SPEC.format(size=""), "computed.toml")))
    assert np.allclose(computed.size(mine.ids), builtin.size(builtin.ids), atol=1e-6)  # model size from the bits
    proxies = ["bit_sum", "qe", "hawq_v1", "examples/proxies/model_size.json", "examples/proxies/fisher.json"]
    a, b = {}, {}
    proxy_reports("mq-resnet20-cifar10", proxies, 3, 0, "all", table=table, batch=10, progress=False, items=a)
    proxy_reports(str(spec), proxies, 3, 0, "all", batch=10, progress=False, items=b)
    assert a["ids"] == b["ids"] and list(a["truth"]) == list(b["truth"]) and list(a["size"]) == list(b["size"])
    assert _scores(a) == _scores(b)
    assert all(not r["errors"] for r in a["results"] + b["results"])


def test_a_spec_object_works_in_python_and_travels_to_workers(search_root, plugin):
    from evoproxy.evaluation import proxy_reports
    from mqbench.benchmarks import BenchRef, load_bench
    from mqbench.spec import BenchmarkSpec, load_spec

    obj = BenchmarkSpec(name="in-python", kind="nas", table="$EVOPROXY_DATA/nats-bench/nats_tss_cifar10.csv",
                        gt_column="CIFAR10TestAccuracy200Epochs", factory="tiny_factories:nb201",
                        python_path=[str(plugin)])
    assert obj.python_path == (str(plugin),) and obj.mode == "train" and obj.normalization == "cifar10"
    handle, bench = BenchRef.resolve(obj)
    assert pickle.loads(pickle.dumps(handle)) == handle and handle.name == obj
    assert load_bench(pickle.loads(pickle.dumps(handle))).ids == bench.ids
    d1, d2 = {}, {}
    proxy_reports(obj, ["synflow", "examples/proxies/snip.json"], 2, 0, batch=10, progress=False, items=d1, jobs=2)
    spec = _write(plugin, NB201_SPEC.format(factory="nb201"))
    proxy_reports(str(spec), ["synflow", "examples/proxies/snip.json"], 2, 0, batch=10, progress=False, items=d2)
    assert _scores(d1) == _scores(d2) and not any(r["errors"] for r in d1["results"])  # workers rebuilt the object
    file_handle, _ = BenchRef.resolve(str(plugin / "spec.toml"))
    assert file_handle.name == str((plugin / "spec.toml").resolve()) and ";" in file_handle.stamp
    assert load_spec(plugin / "spec.toml").python_path == (str(plugin.resolve()),)


def test_every_command_takes_a_spec_path(search_root, plugin, tmp_path, monkeypatch, capsys):
    spec = _write(plugin, NB201_SPEC.format(factory="nb201"))
    monkeypatch.chdir(tmp_path)  # relative paths in the spec are the spec folder's, not the working directory's
    assert main(["evaluate", "--bench", str(spec), "--proxy", "params", "--samples", "3", "--batch", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
    assert main(["baselines", "--bench", str(spec), "--proxies", "params,synflow", "--samples", "3", "--batch", "8",
                 "--out", str(tmp_path / "bl")]) == 0
    assert (tmp_path / "bl" / "baselines.csv").exists()
    run = tmp_path / "run"
    assert main(["search", "--bench", str(spec), "--samples", "6", "--population", "4", "--generations", "1",
                 "--batch", "8", "--seed", "3", "--quiet", "--out", str(run)]) == 0
    best = json.loads((run / "best.json").read_text())
    assert best["search"]["bench"] == "my-nb201"
    capsys.readouterr()
    assert main(["show", str(run / "best.json")]) == 0 and "my-nb201" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ errors


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_factory_errors_are_one_line_and_write_nothing(search_root, plugin, tmp_path, capsys):
    for factory, expected in (("boom", "factory tiny_factories:boom raised on nats_tss_cifar10.csv line 2 (id 0): "
                                       "RuntimeError: no network for"),
                              ("not_a_module", "factory tiny_factories:not_a_module returned int on "
                                               "nats_tss_cifar10.csv line 2 (id 0), not a torch.nn.Module"),
                              ("NOT_CALLABLE", "NOT_CALLABLE is a int, not a function"),
                              ("missing", "module tiny_factories has no attribute 'missing'")):
        spec = _write(plugin, NB201_SPEC.format(factory=factory))
        err = _error(capsys, "baselines", "--bench", str(spec), "--proxies", "params", "--samples", "3",
                     "--out", str(tmp_path / "out"))
        assert expected in err
        err = _error(capsys, "search", "--bench", str(spec), "--samples", "6", "--out", str(tmp_path / "run"))
        assert expected in err
        assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("ref, expected", [
    ("tiny_factories.nb201", "factory must read 'package.module:function', got 'tiny_factories.nb201'"),
    ("tiny factories:nb201", "must read 'package.module:function'"),
    ("no_such_module:nb201", "factory no_such_module:nb201: no module named 'no_such_module'"),
])
def test_bad_factory_references(search_root, plugin, ref, expected):
    from mqbench.benchmarks import get_benchmark

    spec = _write(plugin, NB201_SPEC.replace('"tiny_factories:{factory}"', f'"{ref}"'))
    with pytest.raises(ConfigError, match="^.*$") as exc:
        get_benchmark(str(spec))
    assert expected in str(exc.value)


def _nas_table(folder, rows, header="id,arch,acc"):
    (folder / "t.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return '''
    name = "t"
    kind = "nas"
    [table]
    path = "t.csv"
    id_column = "id"
    gt_column = "acc"
    [model]
    python_path = ["."]
    factory = "tiny_factories:nb201"
    '''


A = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


@pytest.mark.parametrize("rows, header, expected", [
    ([f"0,{A},90", f",{A},91"], "id,arch,acc", "t.csv line 3, column 'id': empty id"),
    ([f"0,{A},90", f"1,{A},91", f"0,{A},92"], "id,arch,acc", "t.csv line 4, column 'id': duplicate id 0 (first on line 2)"),
    ([f"0,{A},90", f"1,{A},n/a"], "id,arch,acc", "t.csv line 3 (id 1), column 'acc': 'n/a' is not a number"),
    ([f"0,{A},90", f"1,{A},inf"], "id,arch,acc", "t.csv line 3 (id 1), column 'acc': 'inf' is not a finite number"),
    ([f"0,{A},90"], "id,arch,accuracy", "has no column(s) 'acc' (columns: id, arch, accuracy)"),
    ([f"0,{A},90", f"1,{A}"], "id,arch,acc", "t.csv line 3: number of fields differs from the header's 3"),
    ([], "id,arch,acc", "has no rows"),
    ([f"a,{A},90"], "id,arch,acc", "init_seed = \"id\" needs integer ids in column 'id'"),
])
def test_table_errors_name_row_and_column(plugin, rows, header, expected):
    from mqbench.benchmarks import get_benchmark

    spec = _write(plugin, _nas_table(plugin, rows, header))
    with pytest.raises((DataError, ConfigError)) as exc:
        get_benchmark(str(spec))
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_string_ids_with_row_seeds(plugin, tiny_data_root):
    from mqbench.benchmarks import get_benchmark

    (plugin / "t.csv").write_text(f"name,ArchitectureString,acc\nb,{A},90\na,{A},91\n")
    text = _nas_table(plugin, []).replace('"t.csv"', '"t.csv"').replace('id_column = "id"', 'id_column = "name"')
    spec = _write(plugin, text.replace('factory = "tiny_factories:nb201"',
                                       'factory = "tiny_factories:nb201"\n    init_seed = "row"'))
    (plugin / "t.csv").write_text(f"name,ArchitectureString,acc\nb,{A},90\na,{A},91\n")
    bench = get_benchmark(str(spec))
    assert bench.ids == ["b", "a"] and list(bench.ground_truth(["a", "b"])) == [91.0, 90.0]
    assert bench.network_key("a").endswith("init-seed-1") and bench.network_key("a") != bench.network_key("b")
    with pytest.raises(ConfigError, match="has no id 'c'"):
        bench.ground_truth(["c"])


def test_mq_errors(tiny_data_root, plugin):
    from mqbench.benchmarks import get_benchmark

    table = _mq_table(tiny_data_root, plugin)
    lines = table.read_text().splitlines()
    lines[3] = lines[3].replace(",sample,", ",sample,4-", 1)  # one bit-width too many on line 4
    table.write_text("\n".join(lines) + "\n")
    bench = get_benchmark(str(_write(plugin, MQ_SPEC.format(size=""))))
    with pytest.raises(DataError, match=r"^mq.csv line 4 \(id 2\), column 'bits': 7 bit-widths for the 6 layers"):
        bench.verify()
    lines[3] = lines[3].replace(",sample,4-", ",sample,9-", 1)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mq.csv line 4 \(id 2\), column 'bits': bit-width '9' is not an integer in 2..8"):
        get_benchmark(str(_write(plugin, MQ_SPEC.format(size=""))))
    lines[3] = lines[3].replace(",sample,9-", ",sample,", 1)
    table.write_text("\n".join(lines) + "\n")
    wrong = MQ_SPEC.format(size="").replace("[bits]", 'checkpoint_sha256 = "00"\n[bits]')
    bench = get_benchmark(str(_write(plugin, wrong)))
    with pytest.raises(DataError, match="expects 00"):
        bench.network(0)


@pytest.mark.parametrize("text, expected", [
    ('name = "x"\nkind = \n', "is not valid TOML: "),
    ('name = "x"\nkind = "nas"\nfactroy = "a:b"\n[table]\nphat = "t.csv"\n', "unknown key(s) factroy, [table] phat"),
    ('name = "x"\nkind = "nas"\n', "missing key(s) [table] path, [table] gt_column, [model] factory"),
    ('name = "x"\nkind = "cnn"\n[table]\npath = "t"\ngt_column = "a"\n[model]\nfactory = "m:f"\n',
     "kind must be one of nas, mq, got 'cnn'"),
    ('name = "x"\nkind = "mq"\n[table]\npath = "t"\ngt_column = "a"\n[model]\nfactory = "m:f"\n',
     "an mq spec needs exactly one of [bits] column or [bits] columns"),
    ('name = "x"\nkind = "nas"\n[table]\npath = "t"\ngt_column = "a"\n[model]\nfactory = "m:f"\n[data]\ndataset = "mnist"\n',
     "dataset: unknown dataset 'mnist'"),
    ('name = "x"\nkind = "nas"\n[table]\npath = "t"\ngt_column = "a"\n[model]\nfactory = "m:f"\n[data]\nnormalization = "x"\n',
     "normalization must be one of cifar10, imagenet, got 'x'"),
    ('name = "x"\nkind = "nas"\n[table]\npath = "t"\ngt_column = "a"\n[model]\nfactory = "m:f"\ninit_seed = "random"\n',
     "init_seed must be \"id\", \"row\" or an integer"),
])
def test_spec_file_errors(tmp_path, text, expected):
    from mqbench.spec import load_spec

    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_spec(tmp_path / "s.toml")
    assert expected in str(exc.value) and "\n" not in str(exc.value)
    if "TOML" in expected:
        assert "line 2, column 8" in str(exc.value)


def test_unknown_names_and_missing_spec_files(capsys):
    err = _error(capsys, "evaluate", "--bench", "no/such/spec.toml", "--proxy", "params")
    assert err.startswith("error: benchmark spec not found: ") and err.endswith("no/such/spec.toml")
    err = _error(capsys, "evaluate", "--bench", "nb999", "--proxy", "params")
    assert "unknown benchmark 'nb999'" in err and "or a spec file (*.toml)" in err


def test_renamed_names_still_import():
    """Issue 22 item 4: one word per meaning; the old names stay importable as aliases."""
    from mqbench.benchmarks import BenchRef, BenchSpec
    from mqbench.datasets import DatasetRef, DatasetSpec, parse_dataset, parse_spec
    from mqbench.quant import BitLayout, BitSpec, default_bit_layout, default_bit_spec

    assert BenchSpec is BenchRef and DatasetSpec is DatasetRef and parse_spec is parse_dataset
    assert BitSpec is BitLayout and default_bit_spec is default_bit_layout
