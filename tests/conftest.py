"""Shared fixtures: a private cache for every test, and a tiny self-made data root."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mqbench import cifar10
from mqbench.networks.resnet_cifar import CifarResNet


# Tests use tiny tensors: one thread avoids OpenMP spin-waiting when the machine is shared
# (which made a 20-image ResNet-8 test 50x slower next to a running table build).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPROXY_CACHE", str(tmp_path / "cache"))
    yield


def write_image_tree(root, per_class: dict[str, int], seed: int = 0) -> None:
    """train|test/<class>/NNNN.jpg with random pixels."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name in cifar10.CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                (root / split / name / f"{i:04d}.jpg").write_bytes(buffer.getvalue())


@pytest.fixture
def tiny_data_root(tmp_path, monkeypatch):
    """A data root with a small CIFAR-10 image tree and a random ResNet-8 'checkpoint' (module. prefix)."""
    root = tmp_path / "data"
    write_image_tree(root / "cifar10" / "cifar10-jpg", {"train": 4, "test": 3})
    (root / "pretrained").mkdir(parents=True)
    torch.manual_seed(0)
    model = CifarResNet(8)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 10.0}, root / "pretrained" / "resnet8-test.th")
    monkeypatch.setenv("EVOPROXY_DATA", str(root))
    return root


OPS_NB201 = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def _archs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = set()
    while len(out) < n:
        o = [OPS_NB201[i] for i in rng.integers(0, 5, size=6)]
        out.add(f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|")
    return sorted(out)


@pytest.fixture
def search_root(tiny_data_root):
    from mqbench.benchmarks import nb201_param_count

    archs = _archs(80)
    rng = np.random.default_rng(1)
    nats = tiny_data_root / "nats-bench"
    nats.mkdir()
    with open(nats / "nats_tss_cifar10.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("ArchitectureString", "CIFAR10TestAccuracy200Epochs"))
        for a in archs:
            w.writerow((a, round(80 + 10 * np.log(nb201_param_count(a) / 7e4) + rng.normal(), 2)))
    return tiny_data_root


def tiny_mq_meta(root, **extra) -> dict:
    """Metadata of an MQ table for the tiny ResNet-8 checkpoint of ``tiny_data_root`` (no PTQ run)."""
    from mqbench.dataroot import file_sha256
    from mqbench.networks.resnet_cifar import load_pretrained
    from mqbench.quant import layer_macs, quantizable_layers

    ckpt = root / "pretrained" / "resnet8-test.th"
    model = load_pretrained(8, ckpt)
    layers = quantizable_layers(model)
    n = len(layers)
    return {"format": "mqbench-table/1", "model": "resnet8", "checkpoint_file": ckpt.name,
            "checkpoint_sha256": file_sha256(ckpt), "layer_names": [name for name, _ in layers],
            "searchable": list(range(1, n - 1)), "fixed_bits": 8, "act_bits": 8, "allowed": [2, 3, 4],
            "layer_params": [m.weight.numel() for _, m in layers],
            "layer_bias": [m.bias.numel() if m.bias is not None else 0 for _, m in layers],
            "layer_macs": layer_macs(model), **extra}


def write_mq_table(tmp_path, meta: dict, bits_and_top1, name: str = "mq.csv"):
    """``tmp_path/name`` and its metadata: one sample row per (searchable bits, top-1), sizes from the metadata."""
    import json

    from mqbench.build import TABLE_COLUMNS, bits_to_str
    from mqbench.quant import model_size_mb

    lines = [",".join(TABLE_COLUMNS)]
    for i, (bits, top1) in enumerate(bits_and_top1):
        size = model_size_mb(meta["layer_params"], meta["layer_bias"], [meta["fixed_bits"], *bits, meta["fixed_bits"]])
        lines.append(f"{i},sample,{bits_to_str(bits)},{top1:.2f},{size:.6f},0.1,0,x,1.0")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / f"{name}.meta.json").write_text(json.dumps(meta))
    return path


def _cannot_write(folder) -> bool:
    import os
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


@pytest.fixture
def unwritable_folder(tmp_path):
    """An existing folder this process cannot write in: a read-only (0555) folder of its own, or for a root user
    (whom permissions do not stop) /sys, where even root cannot create files; skipped where neither holds."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        for cand in (folder, Path("/sys")):
            if cand.is_dir() and _cannot_write(cand):
                yield cand
                return
        pytest.skip("no folder this process cannot write in (root without /sys)")
    finally:
        folder.chmod(0o755)


@pytest.fixture
def stop_after_checkpoint(monkeypatch):
    """``with stop_after_checkpoint(g, exc):`` a search run inside raises ``exc`` right after writing generation
    ``g``'s checkpoint (a crash at the worst moment for a resume); the search is restored on leaving."""
    import contextlib

    from evoproxy.evolution import Search

    @contextlib.contextmanager
    def stop(generation: int, exc: type[BaseException]):
        original = Search._checkpoint

        def checkpoint_then_stop(search):
            original(search)
            if search.generation == generation:
                raise exc

        with monkeypatch.context() as m:
            m.setattr(Search, "_checkpoint", checkpoint_then_stop)
            yield

    return stop
