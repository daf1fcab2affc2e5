"""NAS-Bench-201 cell networks, built from an architecture string.

Macro skeleton (Dong & Yang, ICLR 2020): stem conv3x3+BN, three stages of N cells with C, 2C, 4C
channels, a ResNet basic block with stride 2 between stages, BN+ReLU, global average pooling and a
linear head. A cell is a DAG of 4 nodes; node i (1..3) sums one operation applied to every earlier
node j. Architecture strings read ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mqbench.errors import ConfigError

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_NODES = 4


class ArchStringError(ConfigError):
    """An architecture string that is not a valid NAS-Bench-201 cell."""


def parse_arch(arch: str) -> tuple[tuple[str, ...], ...]:
    """``((op_1_0,), (op_2_0, op_2_1), (op_3_0, op_3_1, op_3_2))`` or ArchStringError naming the bad token."""
    if not isinstance(arch, str) or not arch.strip():
        raise ArchStringError(f"empty or non-string NAS-Bench-201 architecture: {arch!r}")
    parts = arch.strip().split("+")
    if len(parts) != NUM_NODES - 1:
        raise ArchStringError(f"architecture {arch!r} has {len(parts)} node groups separated by '+', expected 3")
    nodes = []
    for node, part in enumerate(parts, start=1):
        if not (part.startswith("|") and part.endswith("|")):
            raise ArchStringError(f"node group {part!r} in {arch!r} must start and end with '|'")
        tokens = part[1:-1].split("|")
        if len(tokens) != node:
            raise ArchStringError(f"node {node} group {part!r} has {len(tokens)} edges, expected {node}")
        ops = []
        for j, token in enumerate(tokens):
            op, sep, src = token.partition("~")
            if not sep or op not in OPS:
                raise ArchStringError(f"bad token {token!r} in {arch!r}: operation must be one of {', '.join(OPS)}")
            if src != str(j):
                raise ArchStringError(f"bad token {token!r} in {arch!r}: edge {j} of node {node} must read '~{j}'")
            ops.append(op)
        nodes.append(tuple(ops))
    return tuple(nodes)


def arch_to_str(cell: tuple[tuple[str, ...], ...]) -> str:
    return "+".join("|" + "|".join(f"{op}~{j}" for j, op in enumerate(ops)) + "|" for ops in cell)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


def make_op(name: str, channels: int) -> nn.Module | None:
    """The module of a cell edge; None for ``none`` (the edge contributes exactly zero)."""
    if name == "none":
        return None
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}[name]
    return ReLUConvBN(channels, channels, kernel, 1)


class Cell(nn.Module):
    def __init__(self, cell: tuple[tuple[str, ...], ...], channels: int):
        super().__init__()
        self.cell = cell
        self.edges = nn.ModuleDict()
        for i, ops in enumerate(cell, start=1):
            for j, op in enumerate(ops):
                module = make_op(op, channels)
                if module is not None:
                    self.edges[f"{i}_{j}"] = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NUM_NODES):
            total = None
            for j in range(i):
                key = f"{i}_{j}"
                if key in self.edges:
                    out = self.edges[key](nodes[j])
                    total = out if total is None else total + out
            nodes.append(torch.zeros_like(x) if total is None else total)
        return nodes[-1]


class ResNetReduction(nn.Module):
    """The stride-2 ResNet basic block between stages."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(2, stride=2, padding=0), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    def __init__(self, arch: str, num_classes: int = 10, C: int = 16, N: int = 5):
        super().__init__()
        self.arch_str = arch
        self.cell = parse_arch(arch)
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells: list[nn.Module] = []
        c_prev = C
        for stage, channels in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                cells.append(ResNetReduction(c_prev, channels))
            cells.extend(Cell(self.cell, channels) for _ in range(N))
            c_prev = channels
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(out.mean(dim=(2, 3)))
