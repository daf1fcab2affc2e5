"""AdaRound PTQ (mqbench.quant.adaround): same grid as RTN, hard rounding, reconstruction, determinism, RTN identity."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mqbench.quant.adaround import (AdaRoundConfig, RoundingVariable, adaround_model, beta_at, reconstruct_unit,
                              reconstruction_units, rectified_sigmoid, weight_scale)
from mqbench.errors import ConfigError
from mqbench.quant.kernels import quantize_weight, weight_levels
from mqbench.networks.resnet_cifar import cifar_resnet
from mqbench.quant.ptq import ROUNDING, PTQSettings, ptq_top1, quantize_and_calibrate
from mqbench.quant.fakequant import default_bit_layout, quant_layers, quantize_model

TABLES = Path(__file__).resolve().parents[1] / "mqbench" / "tables"
CFG = AdaRoundConfig(iters=30, batch=16, lr=5e-2, reg=0.01, warmup=0.2, seed=0)


def _tiny(seed: int = 0):
    """ResNet-8 (stem, 3 residual blocks, linear) with random weights and BN statistics; 48 random 8x8 images."""
    torch.manual_seed(seed)
    model = cifar_resnet(8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    images = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    return model, images


def _quantized(model, bits=2):
    spec = default_bit_layout(model)
    return quantize_model(copy.deepcopy(model), spec.full_config([bits] * len(spec.searchable)))


def test_weight_scale_reproduces_rtn_quantizer():
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    for bits in (2, 3, 4, 8):
        for mse_clip in (True, False):
            s = weight_scale(w, bits, mse_clip).reshape(-1, 1, 1, 1)
            qmin, qmax = weight_levels(bits)
            assert torch.equal(torch.clamp(torch.round(w / s), qmin, qmax) * s, quantize_weight(w, bits, mse_clip))


def test_units_of_a_cifar_resnet():
    model, _ = _tiny()
    names = [name for name, _ in reconstruction_units(_quantized(model))]
    assert names == ["conv1", "layer1.0", "layer2.0", "layer3.0", "linear"]


@pytest.fixture(scope="module")
def rounded():
    """The tiny model rounded once by AdaRound: (FP model, quantized model, per-unit reports)."""
    model, images = _tiny()
    qmodel = _quantized(model)
    return model, qmodel, adaround_model(qmodel, model, images, CFG)


def test_adaround_weights_lie_on_the_rtn_grid(rounded):
    _, qmodel, _ = rounded
    changed = 0
    for layer in quant_layers(qmodel):
        qmin, qmax = weight_levels(layer.weight_bits)
        s = weight_scale(layer.fp_weight, layer.weight_bits).reshape(-1, *([1] * (layer.fp_weight.dim() - 1)))
        q = layer.layer.weight.detach() / s
        assert torch.allclose(q, q.round(), atol=1e-4)
        low = torch.clamp(torch.floor(layer.fp_weight / s), qmin, qmax)
        high = torch.clamp(torch.floor(layer.fp_weight / s) + 1, qmin, qmax)
        assert bool(((q.round() == low) | (q.round() == high)).all())
        changed += int((layer.layer.weight != quantize_weight(layer.fp_weight, layer.weight_bits)).sum())
    assert changed > 0  # it did change some rounding decisions


def test_block_reconstruction_error_not_above_rtn(rounded):
    _, _, reports = rounded
    assert [r["unit"] for r in reports] == ["conv1", "layer1.0", "layer2.0", "layer3.0", "linear"]
    for rep in reports:
        assert rep["hard_mse"] <= rep["rtn_mse"] + 1e-6, rep


def test_regulariser_drives_soft_rounding_to_hard_values():
    model, images = _tiny()
    layer = quant_layers(_quantized(model, bits=3))[1]
    # the annealed regulariser alone: every h(V) ends at 0 or 1, each on the side nearer its start
    rv = RoundingVariable(layer)
    opt = torch.optim.Adam([rv.v], lr=5e-2)
    for step in range(200):
        opt.zero_grad()
        rv.regulariser(beta_at(step, 200, 0.0)).backward()
        opt.step()
    h = rectified_sigmoid(rv.v.detach())
    assert float(((h == 0) | (h == 1)).float().mean()) > 0.99
    assert float((rv.hard_weight() == quantize_weight(layer.fp_weight, 3)).float().mean()) > 0.99
    assert beta_at(0, 100, 0.2) is None and beta_at(20, 100, 0.2) == 20.0 and beta_at(99, 100, 0.2) == pytest.approx(2.0, abs=0.3)
    # with the reconstruction loss: the regulariser leaves fewer weights undecided than none
    qmodel = _quantized(model)
    unit = dict(reconstruction_units(qmodel))["layer1.0"]
    inputs = torch.relu(model.bn1(model.conv1(images))).detach()
    target = model.layer1[0](inputs).detach()
    for p in qmodel.parameters():
        p.requires_grad_(False)
    reps = [reconstruct_unit(copy.deepcopy(unit), inputs, target, AdaRoundConfig(**{**CFG.__dict__, "reg": reg}),
                             generator=torch.Generator().manual_seed(0)) for reg in (0.0, 0.1)]
    assert reps[1]["soft_fraction"] < reps[0]["soft_fraction"]


def test_rounding_variable_starts_at_the_fp_weight():
    model, _ = _tiny()
    layer = quant_layers(_quantized(model, bits=3))[1]
    rv = RoundingVariable(layer)
    with torch.no_grad():
        soft = rv.soft_weight()
    inside = (layer.fp_weight / rv.scale).abs() < weight_levels(3)[1]
    assert torch.allclose(soft[inside], layer.fp_weight[inside], atol=1e-5)


def test_adaround_is_deterministic():
    model, images = _tiny()
    settings = PTQSettings(calib_images=48, act_calib_images=16, bn_batch=16, method="adaround", adaround_iters=10)
    bits = default_bit_layout(model).full_config([2, 3, 4, 2, 3, 4])
    runs = [quantize_and_calibrate(model, bits, images, settings) for _ in range(2)]
    for a, b in zip(quant_layers(runs[0]), quant_layers(runs[1])):
        assert torch.equal(a.layer.weight, b.layer.weight) and a.act_quant == b.act_quant
    rtn = quantize_and_calibrate(model, bits, images, PTQSettings(calib_images=48, act_calib_images=16, bn_batch=16))
    assert any(not torch.equal(a.layer.weight, b.layer.weight) for a, b in zip(quant_layers(runs[0]), quant_layers(rtn)))
    acc = ptq_top1(model, bits, images, images, torch.arange(48) % 10, settings)
    assert 0.0 <= acc <= 100.0


def test_rtn_identity_unchanged():
    literal = {"calib_images": 1024, "calib_seed": 0, "act_bits": 8, "act_calib_images": 256, "bn_batch": 256,
               "eval_batch": 100, "mse_clip": True}
    assert PTQSettings().as_dict() == literal
    for name in ("resnet20_cifar10_w234a8.csv.meta.json", "resnet32_cifar10_w234a8.csv.meta.json"):
        assert json.loads((TABLES / name).read_text())["ptq"] == PTQSettings().as_dict()
    ada = PTQSettings(method="adaround", adaround_iters=50).as_dict()
    assert ada["method"] == "adaround" and ada["adaround_iters"] == 50 and set(literal) < set(ada)
    assert set(ROUNDING) == {"rtn", "adaround"}
    with pytest.raises(ConfigError, match="unknown PTQ method"):
        PTQSettings(method="gptq")
    with pytest.raises(ConfigError, match="iters"):
        PTQSettings(method="adaround", adaround_iters=0)
