"""The classic baselines written as proxy trees (examples/proxies/*.json) score like the registered ones."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from evoproxy.baselines import ProxyContext, get_proxy
from evoproxy.scoring import proxy_statistics
from evoproxy.tree import load_proxy
from mqbench.cifar10 import normalize
from mqbench.networks.nb201 import NB201Network
from mqbench.networks.resnet_cifar import CifarResNet
from mqbench.quant import quantize_weight
from primitives import extract

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "proxies"
REL = 1e-5
NAS = ["params", "l2_norm", "grad_norm", "snip", "fisher"]
MQ = ["bit_sum", "model_size", "hawq_v2"]
ARCHS = [
    "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|",
    "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|avg_pool_3x3~2|",
    "|avg_pool_3x3~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|none~2|",
]


def _batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)), torch.randint(0, 10, (n,), generator=g)


def _plain_stats(proxy, model, x, y):
    (stats,) = proxy_statistics(proxy, model, x, y)
    return stats


@pytest.mark.parametrize("name", NAS)
def test_nas_baseline_as_a_tree(name):
    proxy = load_proxy(EXAMPLES / f"{name}.json")
    x, y = _batch()
    for i, arch in enumerate(ARCHS):
        torch.manual_seed(i)
        model = NB201Network(arch, C=8, N=1).train()
        want = get_proxy(name)(ProxyContext(model, x, y, seed=0))
        got = proxy.value(_plain_stats(proxy, model, x, y))
        assert got == pytest.approx(want, rel=REL), (name, arch)


@pytest.fixture(scope="module")
def mq_setup():
    torch.manual_seed(0)
    model = CifarResNet(8).eval()
    rng = random.Random(0)
    configs = [[8] + [rng.choice([2, 3, 4]) for _ in range(6)] + [8] for _ in range(4)] + [[2] * 8, [8] * 8]
    return model, configs


def _mq_stats(proxy, model, x, y, configs):
    """As the scoring path does on MQ benchmarks: FP statistics once, quantization ones per configuration."""
    return proxy_statistics(proxy, model, x, y, configs, quantizer=quantize_weight)


def _mq_baseline(name, model, x, y, bits):
    ctx = ProxyContext(model, x, y, bit_config=bits, seed=0, quantizer=quantize_weight, model_key="test-resnet8")
    return get_proxy(name)(ctx)


@pytest.mark.parametrize("name", MQ)
def test_mq_baseline_as_a_tree(name, mq_setup):
    model, configs = mq_setup
    proxy = load_proxy(EXAMPLES / f"{name}.json")
    x, y = _batch(1)
    for bits, st in zip(configs, _mq_stats(proxy, model, x, y, configs)):
        assert proxy.value(st) == pytest.approx(_mq_baseline(name, model, x, y, bits), rel=REL), (name, bits)


def test_examples_parse_and_cover_the_listed_baselines():
    files = {p.stem for p in EXAMPLES.glob("*.json")}
    assert set(NAS + MQ) <= files
    for path in EXAMPLES.glob("*.json"):
        load_proxy(path)
