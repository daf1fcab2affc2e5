"""End to end: an MQ-Bench-101-style table (ResNet-18, W{2,3,4}A8, first/last layer at 8 bit) built through
the CLI from a generated tiny ImageFolder tree and a random-weight torchvision-layout checkpoint, resumed,
and then loaded as a benchmark (spec file) for ``evaluate``; one-line errors for bad input."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from evoproxy.cli import main
from mqbench.build import read_rows
from mqbench.networks.imagenet import resnet18
from mqbench.quant import layer_macs

# 10 classes: the spec route takes its statistics batch from CIFAR-10 (labels 0..9)
CLASSES = tuple(f"class{c}" for c in range(10))
CONFIGS = 3
# Small crops keep the forward passes cheap, and no uniform anchor rows: each configuration costs one MSE-clip
# quantization of ResNet-18's 11.7M weights (~5 s on one idle core), which dominates the test.
SIZE = ["--resize", "36", "--crop", "32", "--anchors", "none"]


def _tree(root, per_split=None, seed=0):
    rng = np.random.default_rng(seed)
    for split, count in (per_split or {"train": 1, "val": 1}).items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                (folder / f"{i:04d}.jpg").write_bytes(buffer.getvalue())
    return root


@pytest.fixture
def imagenet_like(tmp_path):
    tree = _tree(tmp_path / "tree")
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet18-random.pth"
    torch.save(resnet18(num_classes=len(CLASSES)).state_dict(), ckpt)  # torchvision key layout
    return tree, ckpt


def _build_args(tree, ckpt, out, *extra):
    return ["table", "build", "--model", "resnet18", "--data", f"imagefolder={tree}", "--checkpoint", str(ckpt),
            "--configs", str(CONFIGS), "--calib-images", "10", "--jobs", "1", "--out", str(out), *SIZE, *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_resnet18_table_from_tiny_imagefolder_builds_resumes_and_evaluates(imagenet_like, tmp_path, tiny_data_root):
    tree, ckpt = imagenet_like
    out = tmp_path / "tables" / "resnet18_tiny_w234a8.csv"
    assert main(_build_args(tree, ckpt, out)) == 0
    rows = read_rows(out)
    assert sorted(r["index"] for r in rows) == list(range(CONFIGS)) and {r["kind"] for r in rows} == {"sample"}
    assert all(len(r["bits"]) == 19 and set(r["bits"]) <= {2, 3, 4} for r in rows)  # 21 layers, first/last fixed
    assert all(r["top1"] in {10.0 * k for k in range(11)} for r in rows)  # 10 val images
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["model"] == "resnet18" and meta["dataset"] == "imagefolder" and meta["normalization"] == "imagenet"
    assert meta["preprocess"] == {"resize": 36, "crop": 32} and "device" not in meta
    assert meta["fixed_bits"] == 8 and meta["act_bits"] == 8 and meta["allowed"] == [2, 3, 4]
    assert meta["searchable"] == list(range(1, 20)) and len(meta["layer_names"]) == 21
    assert meta["checkpoint_file"] == ckpt.name and meta["eval_images"] == 10 and meta["anchors"] == []
    torch.manual_seed(0)
    assert meta["layer_macs"] == layer_macs(resnet18(num_classes=10), (3, 32, 32))
    assert 0 <= meta["fp_top1"] <= 100 and 0 <= meta["fp_bn_top1"] <= 100

    before = out.read_bytes()
    assert main(_build_args(tree, ckpt, out)) == 0  # resume: nothing left to do
    assert out.read_bytes() == before

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "tiny_nets.py").write_text(
        "from mqbench.networks.imagenet import load_imagenet_checkpoint\n\n\n"
        "def resnet18_10(checkpoint):\n    return load_imagenet_checkpoint('resnet18', checkpoint, 10)\n")
    spec = tmp_path / "tiny.toml"
    spec.write_text(f"""name = "tiny-resnet18"
kind = "mq"
[table]
path = "{out}"
id_column = "index"
gt_column = "top1"
size_column = "size_mb"
[model]
python_path = ["{plugin}"]
factory = "tiny_nets:resnet18_10"
checkpoint = "{ckpt}"
[bits]
column = "bits"
fixed_layers = [0, -1]
[protocol]
batch = 4
hutchinson_probes = 0
""")
    from evoproxy.evaluation import proxy_reports

    reports = proxy_reports(str(spec), ["bit_sum", "qe"], samples=None, seed=0, split="all", batch=4, progress=False)
    assert reports["bit_sum"]["n"] == len(rows) and reports["qe"]["failed"] == 0

    # the spec's own images for the statistics batch: a seeded, class-balanced draw of the tree's train split
    from mqbench.benchmarks import BenchRef
    from mqbench.errors import ConfigError
    from primitives.items import batch_for

    on_tree = tmp_path / "tiny_tree.toml"
    on_tree.write_text(spec.read_text() + f'[data]\ndataset = "imagefolder={tree}"\n')
    _, bench = BenchRef.resolve(str(on_tree), None, None, None)
    inputs, targets = batch_for(bench, 4)
    assert bench.dataset.startswith("imagefolder=") and tuple(inputs.shape) == (4, 3, 224, 224)
    assert len(set(targets.tolist())) == 4 and torch.equal(batch_for(bench, 4)[0], inputs)
    reports = proxy_reports(str(on_tree), ["qe"], samples=None, seed=0, split="all", batch=4, progress=False)
    assert reports["qe"]["failed"] == 0
    bad = tmp_path / "bad_data.toml"
    bad.write_text(spec.read_text() + '[data]\ndataset = "imagenett"\n')
    with pytest.raises(ConfigError, match="dataset: unknown dataset 'imagenett'"):
        BenchRef.resolve(str(bad), None, None, None)


def test_build_errors_are_one_line(imagenet_like, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EVOPROXY_DATA", str(tmp_path / "empty-data-root"))
    tree, ckpt = imagenet_like
    out = tmp_path / "t.csv"
    assert main(_build_args(tree, ckpt, out, "--model", "resnet19")) == 2
    assert "unknown model 'resnet19'" in _error_line(capsys)
    assert main(_build_args(tree, tmp_path / "missing.pth", out)) == 2
    assert "checkpoint not found" in _error_line(capsys)
    no_ckpt = [a for a in _build_args(tree, ckpt, out) if a not in ("--checkpoint", str(ckpt))]
    assert main(no_ckpt) == 2  # the data root (the fixture's empty tmp folder) has no resnet18-f37072fd.pth
    assert "resnet18-f37072fd.pth" in _error_line(capsys)
    no_val = _tree(tmp_path / "trainonly", {"train": 1})
    assert main(_build_args(no_val, ckpt, out)) == 2
    assert "no split 'val'" in _error_line(capsys)
    wrong_classes = _tree(tmp_path / "two", {"train": 1, "val": 1})
    (wrong_classes / "train" / "dog").mkdir()
    (wrong_classes / "train" / "dog" / "0.jpg").write_bytes((wrong_classes / "train" / CLASSES[0] / "0000.jpg").read_bytes())
    assert main(_build_args(wrong_classes, ckpt, out)) == 2
    assert "does not fit resnet18" in _error_line(capsys)
    assert not out.exists()
