"""The residual nets: ResNet-18/34/50 and pre-activation ResNet-18 (He et al. 2016a/b) and wide ResNets WRN-d-k
(Zagoruyko & Komodakis 2016), with the blocks they are made of.

ResNets come with one of two stems. The CIFAR stem (resnet18, resnet34, resnet50, preact_resnet18), for 32x32 inputs,
is one 3x3 conv (stride 1) with no max-pool (the common "CIFAR ResNet-18", 11.2M parameters with 100 classes); the
ImageNet stem (resnet18_imagenet, resnet34_imagenet, resnet50_imagenet), for 224x224 inputs, is torchvision's 7x7
stride-2 conv and 3x3 stride-2 max-pool (ResNet-50: 25,557,032 parameters with 1000 classes). Everything after the
stem is torchvision's ResNet layer for layer, with torchvision's parameter names, so that the tests compare
state_dict shapes one to one. Wide ResNets: depth 6n + 4, three groups of n pre-activation blocks
16k, 32k and 64k channels wide, dropout between the two convs of each block (WRN-28-10: 36.5M parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from visionlaunch.errors import VisionlaunchError
from visionlaunch.models.blurpool import blur_strided_convs
from visionlaunch.models.layers import (BNEps, BNMomentum, ImageClassifier, Probability, Width, check_min_size,
                                        conv3x3, init_weights)
from visionlaunch.models.registry import register


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
    """Pre-activation block (He et al. 2016b): BN-ReLU-conv3x3 twice, nothing after the addition; with ``dropout``
    between the convs, the wide-ResNet block. A 1x1 shortcut conv reads the pre-activated input, as in both papers'
    code."""

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


def finish_init(model: nn.Module, kaiming_init: bool, zero_init_residual: bool, bn_momentum: float,
                bn_eps: float) -> None:
    """The init and BatchNorm options every residual net offers, applied in one place."""
    if kaiming_init:
        init_weights(model)
    for module in model.modules():
        if zero_init_residual and isinstance(module, (BasicBlock, Bottleneck, PreActBlock)):
            module.zero_init_residual()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum, module.eps = bn_momentum, bn_eps  # PyTorch's defaults: 0.1, 1e-5


# --- ResNet-18/34/50 ------------------------------------------------------------------------------------------

STAGE_STRIDES = (1, 2, 2, 2)
# How much each stem shrinks the image: the ImageNet stem's strided conv and max-pool halve it twice.
STEM_HALVINGS = {"cifar": 0, "imagenet": 2}


class ResNet(ImageClassifier):
    def __init__(self, arch: str, in_shape: tuple[int, int, int], num_classes: int, block: type[nn.Module],
                 blocks_per_stage: tuple[int, ...], width: int, pre_activation: bool = False,
                 stem: str = "cifar") -> None:
        # Global average pooling: any image size with in_shape's channels works once it survives the strides.
        super().__init__(arch, in_shape, fixed_size=False)
        check_min_size(arch, in_shape, len(STAGE_STRIDES) - 1 + STEM_HALVINGS[stem],
                       designed_for="224x224 ImageNet" if stem == "imagenet" else "32x32 CIFAR")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_shape[0], width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_shape[0], width)
            self.maxpool = nn.Identity()
        # Pre-activation nets normalise at the start of every block instead, and once more before pooling.
        self.bn1 = nn.Identity() if pre_activation else nn.BatchNorm2d(width)
        self.relu = nn.Identity() if pre_activation else nn.ReLU(inplace=True)
        in_channels = width
        for i, (n, stride) in enumerate(zip(blocks_per_stage, STAGE_STRIDES)):
            # The first block of a stage changes the width and carries the stride.
            channels = width * 2 ** i
            self.add_module(f"layer{i + 1}", nn.Sequential(*(
                block(in_channels if j == 0 else channels * block.expansion, channels, stride if j == 0 else 1)
                for j in range(n))))
            in_channels = channels * block.expansion
        self.final_bn = nn.BatchNorm2d(in_channels) if pre_activation else nn.Identity()
        self.final_relu = nn.ReLU() if pre_activation else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.pool(self.final_relu(self.final_bn(x))).flatten(1)
        return self.classifier(x)


def _register(name: str, block: type[nn.Module], blocks_per_stage: tuple[int, ...], pre_activation: bool,
              stem: str = "cifar") -> None:
    def builder(
        in_shape: tuple[int, int, int],
        num_classes: int,
        *,
        width: Width = 64,
        zero_init_residual: bool = False,
        blurpool: bool = False,
        kaiming_init: bool = True,
        bn_momentum: BNMomentum = 0.1,
        bn_eps: BNEps = 1e-5,
    ) -> ResNet:
        """width: channels of the first stage (doubled per stage); zero_init_residual: the last BatchNorm scale of
        every residual branch starts at zero so each block starts as its shortcut; blurpool: strided convs low-pass
        their input first (anti-aliasing, FFCV's use_blurpool; same parameters); kaiming_init: He-normal convs
        (false: PyTorch defaults); bn_momentum, bn_eps: BatchNorm settings."""
        model = ResNet(name, in_shape, num_classes, block, blocks_per_stage, width, pre_activation, stem)
        if blurpool:
            blur_strided_convs(model)
        finish_init(model, kaiming_init, zero_init_residual, bn_momentum, bn_eps)
        return model

    builder.__name__ = builder.__qualname__ = f"build_{name}"
    register(name)(builder)


# ResNet-18/34 (He et al. 2016: basic blocks) and -50 (bottleneck blocks, x4 expansion), and the pre-activation
# ResNet-18 (He et al. 2016b, "Identity mappings": BN-ReLU before each conv), with the CIFAR stem.
_register("resnet18", BasicBlock, (2, 2, 2, 2), False)
_register("resnet34", BasicBlock, (3, 4, 6, 3), False)
_register("resnet50", Bottleneck, (3, 4, 6, 3), False)
_register("preact_resnet18", PreActBlock, (2, 2, 2, 2), True)
# The same nets with torchvision's ImageNet stem, for 224-px inputs (FFCV's ImageNet recipes use 18 and 50).
_register("resnet18_imagenet", BasicBlock, (2, 2, 2, 2), False, stem="imagenet")
_register("resnet34_imagenet", BasicBlock, (3, 4, 6, 3), False, stem="imagenet")
_register("resnet50_imagenet", Bottleneck, (3, 4, 6, 3), False, stem="imagenet")


# --- wide ResNets ---------------------------------------------------------------------------------------------

GROUP_STRIDES = (1, 2, 2)


class WideResNet(ImageClassifier):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, depth: int, widen_factor: int,
                 dropout: float) -> None:
        super().__init__(f"wrn{depth}_{widen_factor}", in_shape, fixed_size=False)
        if depth < 10 or (depth - 4) % 6:
            raise VisionlaunchError(
                f"model 'wide_resnet': depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}. "
                "Each of the 3 groups has n blocks of 2 convs, plus the stem conv, the shortcut convs and the "
                "classifier.")
        n = (depth - 4) // 6
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
