"""Benchmark networks: NAS-Bench-201 parsing and sizes, CIFAR ResNet checkpoints, data root errors."""
from __future__ import annotations

import pytest
import torch

from evoproxy.cli import main as cli_main
from evoproxy.errors import ConfigError, DataError
from mqbench.bench.benchmarks import nb201_param_count
from mqbench.data.dataroot import cache_root, locate, require
from mqbench.networks import NB201Network, cifar_resnet, load_pretrained, parse_arch
from mqbench.networks.nb201 import arch_to_str

ALL_3x3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_nb201_parameter_counts_match_published():
    assert round(n_params(NB201Network(ALL_3x3)) / 1e6, 2) == 1.53
    assert round(n_params(NB201Network(ALL_3x3.replace("nor_conv_3x3", "none"))) / 1e6, 2) == 0.07
    for arch in (ALL_3x3, EXAMPLE, ALL_3x3.replace("nor_conv_3x3", "nor_conv_1x1")):
        for classes in (10, 100):
            assert n_params(NB201Network(arch, num_classes=classes)) == nb201_param_count(arch, classes)


def test_nb201_parse_roundtrip_and_forward():
    cell = parse_arch(EXAMPLE)
    assert cell == (("nor_conv_3x3",), ("nor_conv_3x3", "avg_pool_3x3"), ("skip_connect", "nor_conv_3x3", "skip_connect"))
    assert arch_to_str(cell) == EXAMPLE
    net = NB201Network(EXAMPLE, num_classes=7)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_nb201_none_cell_outputs_zero_features():
    net = NB201Network(ALL_3x3.replace("nor_conv_3x3", "none")).eval()
    with torch.no_grad():
        out = net.cells[0](torch.randn(2, 16, 8, 8))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("arch, token", [
    ("|conv_5x5~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "conv_5x5~0"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "nor_conv_3x3~1"),
    ("|nor_conv_3x3|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", "nor_conv_3x3"),
])
def test_nb201_bad_token_is_named(arch, token):
    with pytest.raises(ValueError) as exc:
        parse_arch(arch)
    assert repr(token) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("arch", ["", "|nor_conv_3x3~0|", "|a~0|+|b~0|", 42,
                                  "|nor_conv_3x3~0|+|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"])
def test_nb201_malformed_strings(arch):
    with pytest.raises(ConfigError):
        parse_arch(arch)


def test_resnet_depth_validation():
    assert n_params(cifar_resnet(20)) == 269722
    with pytest.raises(ConfigError):
        cifar_resnet(21)


@pytest.mark.skipif(locate("resnet20") is None, reason="pretrained ResNet-20 not in the data root")
def test_resnet20_checkpoint_loads_strictly():
    model = load_pretrained(20)
    assert not model.training
    assert model.checkpoint_sha256.startswith("12fca82f")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_checkpoint_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    for path in (bad, tmp_path / "missing.th"):
        with pytest.raises(DataError) as exc:
            load_pretrained(20, path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    wrong = tmp_path / "resnet8.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in cifar_resnet(8).state_dict().items()}}, wrong)
    with pytest.raises(DataError, match="does not fit ResNet-20"):
        load_pretrained(20, wrong)
    assert n_params(load_pretrained(8, wrong)) == n_params(cifar_resnet(8))


def test_missing_data_root_gives_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVOPROXY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as exc:
        require("nats-tss-cifar10")
    message = str(exc.value)
    assert "\n" not in message and "nowhere" in message and "official source" in message
    assert cli_main(["data"]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "official source" in out
    assert not (tmp_path / "nowhere").exists()  # listing must not create the data root


def test_cache_root_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPROXY_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" and (tmp_path / "c").is_dir()
