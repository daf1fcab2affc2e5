"""CIFAR ResNets of He et al. (2016), option-A (parameter-free) shortcuts, 16/32/64 channels.

The module names (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``linear``) match the checkpoints of
the public pytorch_resnet_cifar10 release, so they load with ``strict=True`` once the ``module.``
prefix is stripped.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mqbench.errors import ConfigError, DataError
from mqbench.data.dataroot import file_sha256

DEPTHS = (20, 32, 44, 56, 110)
# The released checkpoints were trained with these (ImageNet) statistics, not CIFAR's.
CHECKPOINT_NORMALIZATION = "imagenet"


class ShortcutA(nn.Module):
    """Option A: subsample spatially by 2 and zero-pad the new channels."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(planes) if (stride != 1 or in_planes != planes) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (e.g. {', '.join(map(str, DEPTHS))}), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in = 16
        layers = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(depth, num_classes)


def load_checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file, ``module.`` prefix stripped (weights-only load)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise DataError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {path} holds no state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(depth: int, path: str | Path | None = None) -> CifarResNet:
    """A ResNet-<depth> with the shipped CIFAR-10 weights (strict load), in eval mode.

    ``path`` defaults to the data root's ``pretrained/resnet<depth>-*.th``. The model carries
    ``checkpoint_path``, ``checkpoint_sha256`` and ``normalization`` attributes.
    """
    if path is None:
        from mqbench.data.dataroot import require

        path = require(f"resnet{depth}") if f"resnet{depth}" in _known_keys() else None
        if path is None:
            raise DataError(f"no known checkpoint for resnet{depth}; pass a path")
    path = Path(path)
    model = CifarResNet(depth)
    state = load_checkpoint_state(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise DataError(f"checkpoint {path} does not fit ResNet-{depth}: {first[:200]}") from None
    model.eval()
    model.checkpoint_path = str(path)
    model.checkpoint_sha256 = file_sha256(path)
    model.normalization = CHECKPOINT_NORMALIZATION
    return model


def _known_keys() -> set[str]:
    from mqbench.data.dataroot import KNOWN

    return set(KNOWN)
