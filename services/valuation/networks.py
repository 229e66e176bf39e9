"""Classifiers that valuation trains: a small CNN and a ResNet-18 with a width option.

Both take `(N, C, H, W)` images of any size ≥ 8×8 and return `(N, K)` logits, e.g.
`(64, 1, 32, 32) → (64, 10)`. Their top-level modules are the layer groups the "n-dim" value
grouping uses (text before the first '.' of a parameter name): `block1..3, fc` for the small CNN,
`conv1, bn1, layer1..4, fc` for the ResNet, as in the public code's ResNet-18.

Example::

    net = build_model("small_cnn", in_channels=1, num_classes=10)
    net(torch.zeros(2, 1, 32, 32)).shape      # (2, 10)
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn

from services.common.options import look_up

__all__ = ["ModelFamily", "ResNet18W", "SmallCNN", "build_model", "top_level_groups"]


class ModelFamily(StrEnum):
    SMALL_CNN = "small_cnn"
    RESNET18_W = "resnet18_w"

    @classmethod
    def parse(cls, value: str | ModelFamily) -> ModelFamily:
        return look_up(cls, value, "model_family")


def _check(in_channels: int, num_classes: int, width: int) -> None:
    if in_channels < 1:
        raise ValueError(f"in_channels must be ≥ 1, got {in_channels}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be ≥ 2, got {num_classes}")
    if width < 1:
        raise ValueError(f"width must be ≥ 1, got {width}")


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv–BN–ReLU blocks (the first two end in 2×2 max-pooling), global average pooling, a linear head.

    `(N, C, H, W) → (N, K)`; with width 16 about 25 k parameters.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        _check(in_channels, num_classes, width)
        self.block1 = nn.Sequential(*_conv_bn_relu(in_channels, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(*_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` float32 → ``(N, num_classes)`` logits.

        E.g. the organ-patch set (1 channel, 10 classes) at batch size 64: ``(64, 1, 32, 32) → (64, 10)``.
        """
        return self.fc(self.block3(self.block2(self.block1(x))))


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv–BN (the first with ``stride``), ReLU in between and after the sum with
    the shortcut (identity, or 1×1 conv–BN when the stride or width changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, cin, H, W) → (N, cout, ⌈H/stride⌉, ⌈W/stride⌉)``.

        E.g. the first block of ``layer2`` at width 16 (``_BasicBlock(16, 32, 2)``):
        ``(64, 16, 32, 32) → (64, 32, 16, 16)``.
        """
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18W(nn.Module):
    """ResNet-18 (2-2-2-2 basic blocks) with base width `width` (64 is the standard network) and a
    3×3 stride-1 stem without max-pooling, for small images. `(N, C, H, W) → (N, K)`."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        _check(in_channels, num_classes, width)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.layer1 = self._layer(width, widths[0], stride=1)
        self.layer2 = self._layer(widths[0], widths[1], stride=2)
        self.layer3 = self._layer(widths[1], widths[2], stride=2)
        self.layer4 = self._layer(widths[2], widths[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    @staticmethod
    def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` float32 → ``(N, num_classes)`` logits.

        E.g. the organ-patch set (1 channel, 10 classes) at batch size 64: ``(64, 1, 32, 32) → (64, 10)``.
        """
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model(family: str | ModelFamily, in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    """The network of `family` (`small_cnn` or `resnet18_w`)."""
    kind = ModelFamily.parse(family)
    cls = SmallCNN if kind is ModelFamily.SMALL_CNN else ResNet18W
    return cls(in_channels, num_classes, width=width)


def top_level_groups(model: nn.Module) -> list[str]:
    """The layer-group name of each trainable parameter, in `named_parameters` order."""
    return [name.split(".", 1)[0] for name, p in model.named_parameters() if p.requires_grad]
