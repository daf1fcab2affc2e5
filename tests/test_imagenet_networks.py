"""ImageNet networks: torchvision parameter counts and key layout, strict weights-only loading."""
from __future__ import annotations

import pytest
import torch

from mqbench.data.dataroot import KNOWN
from mqbench.errors import DataError
from mqbench.networks import IMAGENET_NETWORKS, build_network, load_imagenet_checkpoint

# torchvision's documented parameter counts at 1000 classes.
PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenet_v2": 3_504_872}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_and_forward(name):
    torch.manual_seed(0)
    model = build_network(name).eval()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_registry_and_data_items():
    assert set(IMAGENET_NETWORKS) == set(PARAMS)
    for name in PARAMS:
        item = KNOWN[f"{name}-imagenet"]
        assert not item.required and item.source.startswith("https://download.pytorch.org/models/")
    assert KNOWN["resnet18-imagenet"].relpath == "pretrained/resnet18-f37072fd.pth"
    assert not KNOWN["imagenet"].required and not KNOWN["cifar100"].required


def test_torchvision_key_layout():
    r18 = build_network("resnet18").state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
                "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean", "layer4.1.conv2.weight",
                "fc.weight", "fc.bias"):
        assert key in r18
    assert "layer1.0.downsample.0.weight" not in r18
    r50 = build_network("resnet50").state_dict()
    assert r50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: the 3x3 conv strides
    assert r50["fc.weight"].shape == (1000, 2048)
    mb = build_network("mobilenet_v2").state_dict()
    assert mb["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert mb["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # t=1: depthwise first
    assert mb["features.1.conv.1.weight"].shape == (16, 32, 1, 1)
    assert mb["features.2.conv.0.0.weight"].shape == (96, 16, 1, 1)
    assert mb["features.2.conv.3.running_var"].shape == (24,)
    assert mb["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert mb["classifier.1.weight"].shape == (1000, 1280)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("prefix", ["", "module."])
def test_strict_round_trip(tmp_path, prefix):
    torch.manual_seed(1)
    model = build_network("mobilenet_v2")
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # as in torchvision's files
    path = tmp_path / "mobilenet_v2-test.pth"
    torch.save(state, path)
    loaded = load_imagenet_checkpoint("mobilenet_v2", path)
    assert not loaded.training and loaded.normalization == "imagenet" and len(loaded.checkpoint_sha256) == 64
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_resnet18_round_trip_with_wrapper(tmp_path):
    torch.manual_seed(2)
    model = build_network("resnet18")
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_imagenet_checkpoint("resnet18", path)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_mismatches_are_one_line(tmp_path):
    torch.manual_seed(3)
    state = build_network("mobilenet_v2").state_dict()
    bad = dict(state)
    del bad["features.3.conv.1.0.weight"]
    bad["features.3.conv.1.0.weightx"] = state["features.3.conv.1.0.weight"]
    bad["classifier.1.weight"] = torch.zeros(10, 1280)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(DataError) as exc:
        load_imagenet_checkpoint("mobilenet_v2", path)
    message = _one_line(exc)
    for part in ("1 missing key(s) (first: features.3.conv.1.0.weight)",
                 "1 unexpected key(s) (first: features.3.conv.1.0.weightx)",
                 "classifier.1.weight is [10, 1280] in the checkpoint, [1000, 1280] in the model", str(path)):
        assert part in message


def test_missing_corrupt_and_foreign_files_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(DataError) as exc:
        load_imagenet_checkpoint("resnet18", tmp_path / "nope.pth")
    assert "nope.pth" in _one_line(exc)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError) as exc:
        load_imagenet_checkpoint("resnet18", junk)
    assert "junk.pth" in _one_line(exc)
    # A pickle that would run code is refused by the weights-only loader, never executed.
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "x": _Boom()}, evil)
    with pytest.raises(DataError) as exc:
        load_imagenet_checkpoint("resnet18", evil)
    assert "evil.pth" in _one_line(exc)
    monkeypatch.setenv("EVOPROXY_DATA", str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_imagenet_checkpoint("resnet50")
    message = _one_line(exc)
    assert "resnet50-0676ba61.pth" in message and "download.pytorch.org" in message


class _Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_unknown_network():
    from mqbench.errors import ConfigError

    with pytest.raises(ConfigError):
        build_network("vgg16")
