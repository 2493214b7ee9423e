"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis 2016) for 32x32 images.

depth d = 6n + 4: a 3x3 stem conv with 16 channels, three groups of n pre-activation blocks with 16k, 32k and
64k channels (strides 1, 2, 2), dropout between the two convs of each block, then BN-ReLU, global average
pooling and the classifier. WRN-28-10 has 36.5M parameters (the paper's Table), WRN-16-8 11.0M.
"""

from __future__ import annotations

import torch
from torch import nn

from visionlaunch.errors import VisionlaunchError
from visionlaunch.models.blocks import PreActBlock, finish_init
from visionlaunch.models.layers import BNEps, BNMomentum, ImageClassifier, Probability, Width, check_min_size, conv3x3
from visionlaunch.models.registry import register

GROUP_STRIDES = (1, 2, 2)


def blocks_per_group(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise VisionlaunchError(
            f"model 'wide_resnet': depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}. "
            "Each of the 3 groups has n blocks of 2 convs, plus the stem conv, the shortcut convs and the classifier."
        )
    return (depth - 4) // 6


class WideResNet(ImageClassifier):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, depth: int, widen_factor: int,
                 dropout: float) -> None:
        super().__init__(f"wrn{depth}_{widen_factor}", in_shape, num_classes, fixed_size=False)
        n = blocks_per_group(depth)
        check_min_size(self.arch, in_shape, len(GROUP_STRIDES) - 1)
        self.conv1 = conv3x3(in_shape[0], 16)
        in_channels = 16
        for i, stride in enumerate(GROUP_STRIDES):
            channels = 16 * 2 ** i * widen_factor
            blocks = [PreActBlock(in_channels if j == 0 else channels, channels, stride if j == 0 else 1, dropout)
                      for j in range(n)]
            self.add_module(f"group{i + 1}", nn.Sequential(*blocks))
            in_channels = channels
        self.final_bn = nn.BatchNorm2d(in_channels)
        self.final_relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.group3(self.group2(self.group1(self.conv1(x))))
        x = self.pool(self.final_relu(self.final_bn(x))).flatten(1)
        return self.classifier(x)


@register("wide_resnet")
def build_wide_resnet(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    depth: Width = 28,
    widen_factor: Width = 10,
    dropout: Probability = 0.0,
    zero_init_residual: bool = False,
    kaiming_init: bool = True,
    bn_momentum: BNMomentum = 0.1,
    bn_eps: BNEps = 1e-5,
) -> WideResNet:
    """WRN-depth-widen_factor: depth = 6n + 4 (e.g. 16, 28, 40), widths 16k/32k/64k, dropout between the convs of
    each block (the paper uses 0.3 on CIFAR). zero_init_residual: each block's last conv starts at zero;
    kaiming_init: He-normal convs (false: PyTorch defaults); bn_momentum, bn_eps: BatchNorm settings."""
    model = WideResNet(in_shape, num_classes, depth, widen_factor, dropout)
    finish_init(model, kaiming_init, zero_init_residual, bn_momentum, bn_eps)
    return model
