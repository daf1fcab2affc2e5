"""Quantization, PTQ table building (crash + resume), the table query API and the Benchmark interface."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from evoproxy.errors import ConfigError, DataError
from mqbench.bench import build as build_mod
from mqbench.bench.benchmarks import NB201Benchmark, get_benchmark
from mqbench.bench.build import bits_to_str, build_table, planned_rows, read_rows, sample_configs
from mqbench.networks.resnet_cifar import CifarResNet
from mqbench.quant.ptq import PTQSettings, quantize_and_calibrate
from mqbench.quant.fakequant import default_bit_layout, fold_batchnorm, quant_layers, quantize_weight
from mqbench.bench.table import MQTable, compare_tables
from mqbench.fileio import read_csv_rows

TINY_PTQ = PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, eval_batch=10)


def test_weight_error_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    errors = [(quantize_weight(w, b) - w).pow(2).mean().item() for b in (2, 3, 4, 6, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] / w.pow(2).mean().item() < 1e-4  # 8 bit: tiny relative error


def test_weight_quantizer_uses_at_most_2_pow_b_levels_per_channel():
    w = torch.randn(4, 50)
    q = quantize_weight(w, 3)
    assert all(len(torch.unique(row)) <= 8 for row in q)


def test_8bit_model_close_to_fp():
    torch.manual_seed(0)
    fp = CifarResNet(8).eval()
    x = torch.randn(20, 3, 32, 32)
    with torch.no_grad():
        ref = fp(x)
    spec = default_bit_layout(fp)
    settings = PTQSettings(calib_images=20, act_calib_images=20, bn_batch=20)
    q8 = quantize_and_calibrate(fp, spec.full_config([8] * len(spec.searchable)), x, settings)
    q2 = quantize_and_calibrate(fp, spec.full_config([2] * len(spec.searchable)), x, settings)
    fp_bn = quantize_and_calibrate(fp, [32] * len(spec.layer_names), x, settings)  # BN re-estimated only
    with torch.no_grad():
        base, out8, out2 = fp_bn(x), q8(x), q2(x)
        fold_batchnorm(q8)
        folded = q8(x.contiguous(memory_format=torch.channels_last))
        for layer in quant_layers(q8):  # without activation quantizers, folding is exact up to float rounding
            layer.act_quant = None
        folded_noact = q8(x)
        unfolded_noact = quantize_and_calibrate(fp, spec.full_config([8] * len(spec.searchable)), x, settings)
        for layer in quant_layers(unfolded_noact):
            layer.act_quant = None
        unfolded_noact = unfolded_noact(x)
    rel = lambda a, b=base: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(out8) < 0.05 < rel(out2)
    assert torch.allclose(folded_noact, unfolded_noact, atol=1e-4, rtol=1e-4)
    assert rel(folded, out8) < 1e-2  # float rounding may flip a few 8-bit rounding decisions
    assert ref.shape == base.shape


@pytest.mark.parametrize("bits, message", [
    ([4] * 5, "expected 6"), ([4] * 7, "expected 6"), ([4, 4, 4, 4, 4, 1], "not allowed"),
    ([4, 4, 4, 4, 4, 9], "not allowed"), ([4, 4, 4, 4, 4, "4"], "not allowed"), ([4, 4, 4, 4, 4, 4.0], "not allowed"),
])
def test_bit_configuration_validation(bits, message):
    spec = default_bit_layout(CifarResNet(8))
    assert len(spec.searchable) == 6
    with pytest.raises(ConfigError, match=message) as exc:
        spec.full_config(bits)
    assert "\n" not in str(exc.value)


def test_resnet20_has_18_searchable_layers():
    spec = default_bit_layout(CifarResNet(20))
    assert len(spec.searchable) == 18 and spec.full_config([3] * 18)[0] == 8 and spec.full_config([3] * 18)[-1] == 8


def test_sampled_configs_distinct_non_uniform_and_prefix_stable():
    big = sample_configs(200, 6, (2, 3, 4), seed=5)
    assert len(set(big)) == 200 and all(len(set(c)) > 1 for c in big)
    assert sample_configs(30, 6, (2, 3, 4), seed=5) == big[:30]
    with pytest.raises(ConfigError):
        sample_configs(10, 2, (2, 3, 4), seed=0)  # only 6 non-uniform configurations exist


def _build(root, out, **kw):
    return build_table("resnet8", kw.pop("configs", 6), 0, out, jobs=1, checkpoint=root / "pretrained" / "resnet8-test.th",
                       ptq=kw.pop("ptq", TINY_PTQ), progress=False, **kw)


def _stable(rows):
    return sorted((r["index"], r["kind"], r["bits"], r["top1"], r["size_mb"], r["bops_g"]) for r in rows)


def test_build_crash_then_resume_equals_uninterrupted(tiny_data_root, tmp_path, monkeypatch):
    full = _build(tiny_data_root, tmp_path / "full.csv")
    reference = read_rows(full)
    assert len(reference) == 6 + 4 and len({r["index"] for r in reference}) == 10

    crashing = tmp_path / "crash.csv"
    real_append, calls = build_mod.append_line, []

    def append_then_crash(path, line):
        calls.append(line)
        if len(calls) > 4:  # header + 3 rows, then the process "dies"
            raise KeyboardInterrupt
        real_append(path, line)

    monkeypatch.setattr(build_mod, "append_line", append_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny_data_root, crashing)
    monkeypatch.setattr(build_mod, "append_line", real_append)
    assert len(read_rows(crashing)) == 3
    with open(crashing, "ab") as fh:  # a torn row, as a kill in mid-write would leave
        fh.write(b"7,sample,2-3-4")
    with pytest.raises(DataError, match="incomplete row"):
        MQTable.load(crashing)
    _build(tiny_data_root, crashing)
    assert _stable(read_rows(crashing)) == _stable(reference)
    _build(tiny_data_root, crashing)  # a finished table: nothing is added
    assert _stable(read_rows(crashing)) == _stable(reference)


def test_build_killed_before_first_row_resumes(tiny_data_root, tmp_path, monkeypatch):
    out = tmp_path / "early.csv"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # (undo() would also drop the fixture's EVOPROXY_DATA)
        patch.setattr(build_mod, "fp_top1", killed)  # dies while measuring the FP accuracy
        with pytest.raises(KeyboardInterrupt):
            _build(tiny_data_root, out, configs=2)
    _build(tiny_data_root, out, configs=2)
    assert len(read_rows(out)) == 2 + 4
    legacy = tmp_path / "legacy.csv"  # a header-only CSV without metadata (older builder) also resumes
    legacy.write_text(",".join(build_mod.TABLE_COLUMNS) + "\n")
    _build(tiny_data_root, legacy, configs=2)
    assert _stable(read_rows(legacy)) == _stable(read_rows(out))


def test_build_refuses_other_settings_and_grows(tiny_data_root, tmp_path):
    out = tmp_path / "t.csv"
    _build(tiny_data_root, out, configs=3)
    with pytest.raises(ConfigError, match="other settings"):
        _build(tiny_data_root, out, configs=3, ptq=PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, calib_seed=1))
    _build(tiny_data_root, out, configs=5)  # same seed, more configurations: the prefix is kept
    table = MQTable.load(out)
    assert len(table.ids) == 9
    planned = planned_rows(default_bit_layout(CifarResNet(8)), 5, 0)
    assert [table.bits(i) for i, _, _ in planned] == [cfg for _, _, cfg in planned]


def test_table_query_api(tiny_data_root, tmp_path):
    out = _build(tiny_data_root, tmp_path / "t.csv", configs=16)
    table = MQTable.load(out)
    search, holdout = table.split(seed=0)
    assert not set(search) & set(holdout) and sorted(search + holdout) == table.ids
    assert len(search) == 2 and table.split(seed=0) == (search, holdout) and table.split(seed=1) != (search, holdout)
    assert set(table.sample(5, seed=3, split="holdout")) <= set(holdout)
    assert table.sample(5, seed=3) == table.sample(5, seed=3)
    i = table.ids[5]
    assert table.accuracy(index=i) == table.accuracy(bits=table.bits(i))
    with pytest.raises(ConfigError):
        table.accuracy(index=999)
    with pytest.raises(ConfigError):
        table.sample(100, seed=0, split="search")
    assert compare_tables(out, out)["spearman"] == pytest.approx(1.0)


def test_corrupt_tables_give_one_line_errors(tiny_data_root, tmp_path):
    out = _build(tiny_data_root, tmp_path / "t.csv", configs=3)
    text = out.read_text().splitlines()
    cases = {
        "columns": "\n".join(["a,b,c"] + text[1:]) + "\n",
        "fields": "\n".join(text + ["9,sample,2-2"]) + "\n",
        "duplicate": "\n".join(text + [text[-1]]) + "\n",
        "bits": "\n".join(text[:1] + [text[1].replace(text[1].split(",")[2], "2-3")]) + "\n",
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.csv"
        bad.write_text(content)
        (tmp_path / f"{name}.csv.meta.json").write_text((tmp_path / "t.csv.meta.json").read_text())
        with pytest.raises(DataError) as exc:
            MQTable.load(bad)
        assert "\n" not in str(exc.value) and bad.name in str(exc.value)
    (tmp_path / "nometa.csv").write_text(out.read_text())
    with pytest.raises(DataError, match="metadata"):
        MQTable.load(tmp_path / "nometa.csv")


def test_mq_benchmark_interface(tiny_data_root, tmp_path):
    out = _build(tiny_data_root, tmp_path / "t.csv", configs=12)
    bench = get_benchmark("mq-resnet20-cifar10", table=out)  # any table built by the builder
    ids = bench.sample(4, seed=0, split="holdout")
    model, bits = bench.build(ids[0])
    assert len(bits) == len(default_bit_layout(model).layer_names) and not model.training
    assert np.array_equal(bench.ground_truth(ids), [MQTable.load(out).accuracy(index=i) for i in ids])
    assert (bench.size(ids) > 0).all()
    with pytest.raises(ConfigError):
        get_benchmark("mq-resnet20-cifar10", table=out, gt_column="CIFAR100TestAccuracy200Epochs")


def _nb201_csv(path, rows, header=("ArchitectureString", "CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs")):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


ARCHS = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
         "|none~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|none~2|",
         "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"]


def test_csv_tables_read_with_line_numbers_and_one_line_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    assert read_csv_rows(path) == (["a", "b"], [(2, {"a": "1", "b": "2"}), (3, {"a": "3", "b": "4"})])
    with pytest.raises(DataError, match=r"^NAS-Bench-201 table not found: .*missing\.csv$"):
        read_csv_rows(tmp_path / "missing.csv", "NAS-Bench-201 table")
    path.write_bytes(b"a,b\n\xff\xfe,2\n")
    with pytest.raises(DataError, match="is not a readable CSV") as exc:
        read_csv_rows(path)
    assert "\n" not in str(exc.value)


def test_nb201_benchmark_columns_and_errors(tmp_path):
    path = _nb201_csv(tmp_path / "t.csv", [(a, 90 + i, 70 + i) for i, a in enumerate(ARCHS)])
    bench = NB201Benchmark(table=path, gt_column="CIFAR100TestAccuracy200Epochs")
    assert list(bench.ground_truth([2, 0])) == [72, 70]
    model, bits = bench.build(1)
    assert bits is None and model.training and bench.size([1])[0] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="ImageNetTestAccuracy200Epochs"):
        NB201Benchmark(table=path, gt_column="ImageNetTestAccuracy200Epochs")
    bad = _nb201_csv(tmp_path / "bad.csv", [(ARCHS[0], 90, 70), ("|conv9~0|+|x~0|y~1|+|a~0|b~1|c~2|", 1, 1)])
    with pytest.raises(DataError, match="line 3") as exc:
        NB201Benchmark(table=bad)
    assert "conv9~0" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError, match="ArchitectureString"):
        NB201Benchmark(table=_nb201_csv(tmp_path / "nocol.csv", [(1, 2)], header=("arch", "acc")))
    with pytest.raises(DataError, match="not found"):
        NB201Benchmark(table=tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        get_benchmark("nb202")


def test_benchmark_split_is_disjoint_and_deterministic(tmp_path):
    path = _nb201_csv(tmp_path / "t.csv", [(a, 90 + i, 70 + i) for i, a in enumerate(ARCHS)])
    bench = NB201Benchmark(table=path)
    search, holdout = bench.split(0)
    assert not set(search) & set(holdout) and sorted(search + holdout) == bench.ids
    assert bits_to_str((2, 3)) == "2-3"
