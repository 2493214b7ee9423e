"""Residual blocks of the ResNet family, written for 32x32 inputs (He et al. 2016a/b; Zagoruyko & Komodakis 2016).

Parameter names follow torchvision's ResNet (conv1, bn1, ..., downsample.0/.1) so that state_dict shapes can be
compared one to one with torchvision's models in the tests.
"""

from __future__ import annotations

import torch
from torch import nn

from visionlaunch.models.layers import conv3x3, init_weights, set_batch_norm


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """The shortcut when the shape changes: 1x1 conv (strided) + BatchNorm (He et al.'s option B)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm, ReLU after the addition (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        shape_changes = stride != 1 or in_channels != channels
        self.downsample = projection(in_channels, channels, stride) if shape_changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))

    def zero_init_residual(self) -> None:
        # The block starts as the identity (Goyal et al. 2017): its last BatchNorm scale is zero.
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "v1.5"), 1x1 expand by 4 (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        shape_changes = stride != 1 or in_channels != out_channels
        self.downsample = projection(in_channels, out_channels, stride) if shape_changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))

    def zero_init_residual(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016b): BN-ReLU-conv3x3 twice, nothing after the addition.

    With ``dropout`` it is the wide-ResNet block (Zagoruyko & Komodakis 2016: dropout between the two convs).
    When the shape changes, the 1x1 shortcut conv reads the pre-activated input, as in both papers' code.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(channels, channels)
        self.relu = nn.ReLU()  # not in place: the pre-activated input also feeds the shortcut
        self.shape_changes = stride != 1 or in_channels != channels
        self.shortcut = (nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False) if self.shape_changes
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        skip = self.shortcut(pre) if self.shape_changes else x
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + skip

    def zero_init_residual(self) -> None:
        # No BatchNorm ends the residual branch here; a zero last conv makes the block the identity instead.
        nn.init.zeros_(self.conv2.weight)


def zero_init_residuals(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (BasicBlock, Bottleneck, PreActBlock)):
            module.zero_init_residual()


def finish_init(model: nn.Module, kaiming_init: bool, zero_init_residual: bool, bn_momentum: float,
                bn_eps: float) -> None:
    """The init and BatchNorm options every residual net offers, applied in one place."""
    if kaiming_init:
        init_weights(model)
    if zero_init_residual:
        zero_init_residuals(model)
    set_batch_norm(model, bn_momentum, bn_eps)
