"""A small, fast residual net for short training budgets, in the spirit of the ResNet-9 of the fast CIFAR-10
training records (Page 2018, "How to train your ResNet"): few layers, wide late stages, max-pooling.

prep conv -> [conv, pool] + residual pair -> [conv, pool] -> [conv, pool] + residual pair -> global max-pool ->
linear, scaled. Each pooling conv pools BEFORE its BatchNorm and ReLU: max-pooling commutes with the
(monotone) ReLU, so this is the same kind of layer at a quarter of the normalisation cost, which matters on a CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import torch
from annotated_types import Gt, Len
from torch import nn

from visionlaunch.models.layers import BNEps, BNMomentum, ImageClassifier, Width, check_min_size, conv3x3
from visionlaunch.models.registry import register
from visionlaunch.models.resnet import finish_init


def conv_bn(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv3x3(in_channels, out_channels))
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    layers["bn"] = nn.BatchNorm2d(out_channels)
    layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class Residual(nn.Module):
    """x + f(x), f = two conv-BN-ReLU layers of the same width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_bn1 = conv_bn(channels, channels, pool=False)
        self.conv_bn2 = conv_bn(channels, channels, pool=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_bn2(self.conv_bn1(x))


class ResNet9(ImageClassifier):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, widths: list[int], logit_scale: float):
        super().__init__("resnet9", in_shape, fixed_size=False)
        check_min_size("resnet9", in_shape, 3)
        w0, w1, w2, w3 = widths
        self.prep = conv_bn(in_shape[0], w0, pool=False)
        self.layer1 = conv_bn(w0, w1, pool=True)
        self.res1 = Residual(w1)
        self.layer2 = conv_bn(w1, w2, pool=True)
        self.layer3 = conv_bn(w2, w3, pool=True)
        self.res3 = Residual(w3)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(w3, num_classes)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.res1(self.layer1(self.prep(x)))
        x = self.res3(self.layer3(self.layer2(x)))
        return self.classifier(self.pool(x).flatten(1)) * self.logit_scale

    def extra_repr(self) -> str:
        return f"logit_scale={self.logit_scale}"


@register("resnet9")
def build_resnet9(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    widths: Annotated[list[Width], Len(4, 4)] = (64, 128, 256, 512),
    logit_scale: Annotated[float, Gt(0.0)] = 0.125,
    kaiming_init: bool = True,
    bn_momentum: BNMomentum = 0.1,
    bn_eps: BNEps = 1e-5,
) -> ResNet9:
    """Fast residual net: widths of the prep conv and the three pooling stages (residual pairs after the first
    and the last), global max-pooling, logits multiplied by logit_scale (Page 2018: 0.125). No zero-init option: the
    residual branch ends in a ReLU, so a zeroed branch would get no gradient and stay dead. kaiming_init: He-normal convs (false: PyTorch defaults);
    bn_momentum, bn_eps: BatchNorm settings."""
    model = ResNet9(in_shape, num_classes, list(widths), logit_scale)
    finish_init(model, kaiming_init, False, bn_momentum, bn_eps)
    return model
