"""``--device cpu|cuda|auto``: cpu is the default and changes nothing (numbers, cache keys, table identity,
run settings); cuda without a GPU is a one-line error; auto resolves to what the machine has.
(The CUDA numbers themselves are measured by experiments/gpu_check.py on a GPU machine.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evoproxy.cli import main
from mqbench.devices import device_tag, resolve_device
from mqbench.errors import ConfigError

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_resolve_device():
    assert resolve_device(None) == resolve_device("cpu") == resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_tag("cpu") is None and device_tag(None) is None
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@NO_GPU
def test_cuda_without_gpu_is_one_line(capsys, tiny_data_root, tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU") as info:
        resolve_device("cuda")
    assert "\n" not in str(info.value)
    assert main(["table", "build", "--model", "resnet8", "--configs", "2", "--out", str(tmp_path / "t.csv"),
                 "--checkpoint", str(tiny_data_root / "pretrained" / "resnet8-test.th"), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in _one_line_error(capsys)
    assert not (tmp_path / "t.csv").exists()
    assert main(["evaluate", "--bench", "nb201-cifar10", "--proxy", "params", "--samples", "4", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in _one_line_error(capsys)
    assert main(["search", "--bench", "nb201-cifar10", "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in _one_line_error(capsys)


def _tiny_extract(device_kwargs: dict, cache_dir):
    from mqbench.networks.resnet_cifar import CifarResNet
    from primitives.many import extract_many

    def build(item):
        torch.manual_seed(item)
        return CifarResNet(8).train(), f"init-seed-{item}"

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 16, 16, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    return extract_many([0, 1], build, (x, y, 0), names=["weight_grad", "act_out", "fisher"], cache_dir=cache_dir,
                        progress=False, **device_kwargs)


def test_cpu_device_equals_default_statistics_and_cache_keys(tmp_path, monkeypatch):
    from primitives.items import StatsRequest
    from primitives.many import cache_key

    default = _tiny_extract({}, tmp_path / "a")
    cpu = _tiny_extract({"device": "cpu"}, tmp_path / "b")
    for d, c in zip(default, cpu):
        assert d.meta["cache_key"] == c.meta["cache_key"] and "device" not in c.meta
        for ld, lc in zip(d.layers, c.layers):
            assert all(torch.equal(ld.tensors[k], lc.tensors[k]) for k in ld.tensors)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert StatsRequest.of(["fisher"], device="cpu") == StatsRequest.of(["fisher"])
    if not torch.cuda.is_available():
        assert StatsRequest.of(["fisher"], device="auto") == StatsRequest.of(["fisher"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only the key is computed, nothing runs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    kw = {"names": ["fisher"]}
    assert cache_key(0, "m", 0, "d", {**kw, "device": "cuda"}) != cache_key(0, "m", 0, "d", kw)
    assert cache_key(0, "m", 0, "d", {**kw, "device": "cuda:0"}) == cache_key(0, "m", 0, "d", {**kw, "device": "cuda"})
    assert cache_key(0, "m", 0, "d", {**kw, "device": "cpu"}) == cache_key(0, "m", 0, "d", kw)


def test_cpu_device_equals_default_table_build(tiny_data_root, tmp_path):
    from mqbench.build import build_table, read_rows
    from mqbench.ptq import PTQSettings

    ptq = PTQSettings(calib_images=20, act_calib_images=10, bn_batch=10, eval_batch=10)
    ckpt = tiny_data_root / "pretrained" / "resnet8-test.th"
    tables = [build_table("resnet8", 1, 0, tmp_path / f"{name}.csv", checkpoint=ckpt, ptq=ptq, progress=False, **kw)
              for name, kw in (("default", {}), ("cpu", {"device": "cpu"}))]
    rows = [sorted((r["index"], r["bits"], r["top1"], r["size_mb"], r["bops_g"]) for r in read_rows(t)) for t in tables]
    assert rows[0] == rows[1]
    metas = [json.loads(t.with_name(t.name + ".meta.json").read_text()) for t in tables]
    assert "device" not in metas[1] and metas[0]["fp_top1"] == metas[1]["fp_top1"]


def test_cpu_device_equals_default_evaluate_and_search_settings(tiny_data_root, tmp_path):
    from conftest import tiny_mq_meta, write_mq_table
    from evoproxy.evaluation import proxy_reports
    from evoproxy.searchconfig import SearchConfig

    meta = tiny_mq_meta(tiny_data_root)
    rng = np.random.default_rng(0)
    rows = [([int(b) for b in rng.integers(2, 5, size=len(meta["searchable"]))], 10 + k) for k in range(4)]
    table = write_mq_table(tmp_path, meta, rows)
    kw = dict(samples=4, seed=0, split="all", table=table, batch=10, progress=False)
    items_a, items_b = {}, {}
    a = proxy_reports("mq-resnet20-cifar10", ["qe", "bsnip"], items=items_a, **kw)
    b = proxy_reports("mq-resnet20-cifar10", ["qe", "bsnip"], device="cpu", items=items_b, **kw)
    assert [r["scores"] for r in items_a["results"]] == [r["scores"] for r in items_b["results"]]
    assert all(np.isfinite(v) for r in items_b["results"] for v in r["scores"].values())
    assert all("device" not in rep for rep in (*a.values(), *b.values()))
    config = SearchConfig(bench="nb201-cifar10", out=str(tmp_path / "run"))
    assert config.device == "cpu" and "device" not in config.result_settings()
    config.device = "auto"
    config.validate()
    if torch.cuda.is_available():  # CUDA statistics round differently: a resumed run must share the device
        assert config.result_settings()["device"] == "cuda"
    else:
        assert "device" not in config.result_settings()
