"""ImageNet networks in the torchvision state-dict layout: ResNet-18, ResNet-50 and MobileNetV2.

Written in-project (torchvision does not load against the project's CPU torch wheel), with the
module names of torchvision's models so that its published checkpoints load strictly:

* ResNet (He et al. 2016; the "v1.5" variant whose bottleneck strides in the 3x3 conv):
  ``conv1``, ``bn1``, ``layer{1..4}.<i>.conv{1,2[,3]}`` / ``bn{1,2[,3]}``,
  ``layer{2..4}.0.downsample.{0,1}``, ``fc``. Checkpoints: ``resnet18-f37072fd.pth``,
  ``resnet50-0676ba61.pth`` (IMAGENET1K_V1) or ``resnet50-11ad3fa6.pth`` (V2).
* MobileNetV2 (Sandler et al. 2018): ``features.0.{0,1}`` (stem conv+BN), ``features.1..17.conv.*``
  (inverted residuals), ``features.18.{0,1}`` (1x1 to 1280), ``classifier.1`` (dropout then linear).
  Checkpoint: ``mobilenet_v2-b0353104.pth``.

Parameter counts for 1000 classes (checked by the tests): ResNet-18 11,689,512; ResNet-50
25,557,032; MobileNetV2 3,504,872. Every network expects images normalized with the ImageNet
mean/std (``NORMALIZATION``) at 224x224 (any size >= 32 runs: the pooling is adaptive).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from mqbench.errors import ConfigError, DataError

NORMALIZATION = "imagenet"


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


# --------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 convs; the first one carries the stride."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided: ResNet v1.5), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, width * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ImageNetResNet(nn.Module):
    """A 4-stage ImageNet ResNet with a 7x7 stride-2 stem and max pooling."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, int, int, int],
                 num_classes: int = 1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stride = 1 if stage == 1 else 2
            layers = []
            for i in range(count):
                cout = width * block.expansion
                down = None
                if i == 0 and (stride != 1 or cin != cout):
                    down = nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                layers.append(block(cin, width, stride if i == 0 else 1, down))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# --------------------------------------------------------------------------------------------
# MobileNetV2
# --------------------------------------------------------------------------------------------

def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cout, kernel, stride, groups), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """[1x1 expand (ReLU6)] -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_relu6(cin, hidden, 1)]
        layers.append(_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden))
        layers.extend(_conv_bn(hidden, cout, 1))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, output channels c, repeats n, first stride s) of the paper's Table 2, width 1.0.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        features: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes)


# --------------------------------------------------------------------------------------------
# Registry and checkpoint loading
# --------------------------------------------------------------------------------------------

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}
# The data-root item (mqbench.data.dataroot.KNOWN) holding each network's torchvision checkpoint.
CHECKPOINT_ITEMS = {name: f"{name}-imagenet" for name in NETWORKS}


def build_network(name: str, num_classes: int = 1000) -> nn.Module:
    """A randomly initialised network of ``NETWORKS`` (call ``torch.manual_seed`` first for a seeded one)."""
    if name not in NETWORKS:
        raise ConfigError(f"unknown ImageNet network {name!r}; expected one of {', '.join(NETWORKS)}")
    return NETWORKS[name](num_classes)


def _fit_message(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """None when ``state`` fits ``model`` key for key and shape for shape, else one line saying how not."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (first: {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatch(es) (first: {k} is {list(state[k].shape)} "
                     f"in the checkpoint, {list(expected[k].shape)} in the model)")
    return "; ".join(parts) or None


def load_imagenet_checkpoint(name: str, path: str | Path | None = None, num_classes: int = 1000) -> nn.Module:
    """``name`` (a key of ``NETWORKS``) with the weights of a torchvision-format checkpoint, in eval mode.

    ``path`` defaults to the data root's item ``<name>-imagenet`` (``pretrained/<torchvision file>``).
    The file is read with ``torch.load(weights_only=True)`` (never unpickled freely); a plain state
    dict, a ``{"state_dict": ...}`` wrapper and a ``module.`` prefix (DataParallel) are accepted.
    BatchNorm ``num_batches_tracked`` counters absent from older checkpoints are set to 0; every other
    key must match by name and shape (a missing file, a corrupt file or a mismatch is a one-line
    :class:`DataError` naming the first missing and unexpected keys). The model carries
    ``checkpoint_path``, ``checkpoint_sha256`` and ``normalization`` attributes.
    """
    from mqbench.data.dataroot import file_sha256, require
    from mqbench.networks.resnet_cifar import load_checkpoint_state

    model = build_network(name, num_classes)
    path = Path(require(CHECKPOINT_ITEMS[name]) if path is None else path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    state = load_checkpoint_state(path)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"checkpoint {path} is not a state dict of tensors")
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    problem = _fit_message(state, model)
    if problem:
        raise DataError(f"checkpoint {path} does not fit {name}: {problem}")
    model.load_state_dict(state, strict=True)
    model.eval()
    model.checkpoint_path = str(path)
    model.checkpoint_sha256 = file_sha256(path)
    model.normalization = NORMALIZATION
    return model
