"""ResNet-18/34/50 and pre-activation ResNet-18 for 32x32 images: the CIFAR variant of the ImageNet nets.

The stem is one 3x3 conv (stride 1) with no max-pool, so a 32x32 image is 32, 16, 8, 4 pixels wide in the four
stages (He et al. 2016a used this stem on CIFAR in later work; it is the common "CIFAR ResNet-18", 11.2M
parameters with 100 classes). Everything after the stem is torchvision's ResNet, layer for layer.
"""

from __future__ import annotations

import torch
from torch import nn

from visionlaunch.models.blocks import BasicBlock, Bottleneck, PreActBlock, finish_init
from visionlaunch.models.layers import BNEps, BNMomentum, ImageClassifier, Width, check_min_size, conv3x3
from visionlaunch.models.registry import register

STAGE_STRIDES = (1, 2, 2, 2)


def make_stage(block: type[nn.Module], in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` residual blocks; the first one changes the width and carries the stride."""
    layers = []
    for i in range(blocks):
        layers.append(block(in_channels, channels, stride if i == 0 else 1))
        in_channels = channels * block.expansion
    return nn.Sequential(*layers)


class ResNet(ImageClassifier):
    def __init__(self, arch: str, in_shape: tuple[int, int, int], num_classes: int, block: type[nn.Module],
                 blocks_per_stage: tuple[int, ...], width: int, pre_activation: bool = False) -> None:
        # Global average pooling: any image size with in_shape's channels works once it survives the strides.
        super().__init__(arch, in_shape, num_classes, fixed_size=False)
        check_min_size(arch, in_shape, len(STAGE_STRIDES) - 1)
        self.pre_activation = pre_activation
        self.conv1 = conv3x3(in_shape[0], width)
        # Pre-activation nets normalise at the start of every block instead, and once more before pooling.
        self.bn1 = nn.Identity() if pre_activation else nn.BatchNorm2d(width)
        self.relu = nn.Identity() if pre_activation else nn.ReLU(inplace=True)
        in_channels = width
        for i, (blocks, stride) in enumerate(zip(blocks_per_stage, STAGE_STRIDES)):
            stage = make_stage(block, in_channels, width * 2 ** i, blocks, stride)
            self.add_module(f"layer{i + 1}", stage)
            in_channels = width * 2 ** i * block.expansion
        self.final_bn = nn.BatchNorm2d(in_channels) if pre_activation else nn.Identity()
        self.final_relu = nn.ReLU() if pre_activation else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.pool(self.final_relu(self.final_bn(x))).flatten(1)
        return self.classifier(x)


def _register(name: str, block: type[nn.Module], blocks_per_stage: tuple[int, ...], pre_activation: bool,
              doc: str) -> None:
    def builder(
        in_shape: tuple[int, int, int],
        num_classes: int,
        *,
        width: Width = 64,
        zero_init_residual: bool = False,
        kaiming_init: bool = True,
        bn_momentum: BNMomentum = 0.1,
        bn_eps: BNEps = 1e-5,
    ) -> ResNet:
        model = ResNet(name, in_shape, num_classes, block, blocks_per_stage, width, pre_activation)
        finish_init(model, kaiming_init, zero_init_residual, bn_momentum, bn_eps)
        return model

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = doc + (
        " width: channels of the first stage (doubled per stage); zero_init_residual: every residual branch starts "
        "at zero so each block is the identity; kaiming_init: He-normal convs (false: PyTorch defaults); "
        "bn_momentum, bn_eps: BatchNorm settings.")
    register(name)(builder)


_register("resnet18", BasicBlock, (2, 2, 2, 2), False,
          "ResNet-18 (He et al. 2016) with a 3x3 stem and no max-pool: 4 stages of 2 basic blocks.")
_register("resnet34", BasicBlock, (3, 4, 6, 3), False,
          "ResNet-34 with a 3x3 stem and no max-pool: stages of 3, 4, 6, 3 basic blocks.")
_register("resnet50", Bottleneck, (3, 4, 6, 3), False,
          "ResNet-50 with a 3x3 stem and no max-pool: stages of 3, 4, 6, 3 bottleneck blocks (x4 expansion).")
_register("preact_resnet18", PreActBlock, (2, 2, 2, 2), True,
          "Pre-activation ResNet-18 (He et al. 2016b, 'Identity mappings'): BN-ReLU before each conv.")
