"""Plain convolutional network: VGG-style stages of 3x3 convolutions and max-pooling, then an MLP head."""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import torch
from annotated_types import MinLen
from torch import nn

from visionlaunch.errors import VisionlaunchError
from visionlaunch.models.layers import ImageClassifier, Probability, Width, init_weights, mlp_blocks
from visionlaunch.models.registry import register


def conv_stage(in_channels: int, out_channels: int, convs: int, batch_norm: bool) -> nn.Sequential:
    """``convs`` x (Conv3x3 -> BatchNorm2d -> ReLU), then 2x2 max-pooling; named conv1, bn1, relu1, ..., pool."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, convs + 1):
        # BatchNorm's shift makes a conv bias redundant.
        layers[f"conv{i}"] = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
        if batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{i}"] = nn.ReLU()
        in_channels = out_channels
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class CNN(ImageClassifier):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: list[int],
        convs_per_stage: int,
        batch_norm: bool,
        global_pool: bool,
        hidden: list[int],
        dropout: float,
    ) -> None:
        super().__init__("cnn", in_shape, fixed_size=not global_pool)
        c, h, w = in_shape
        fits = min(h, w).bit_length() - 1  # how many halvings keep at least one pixel
        if len(channels) > fits:
            sizes = [min(h, w) >> k for k in range(len(channels) + 1)]
            raise VisionlaunchError(
                f"model 'cnn' has {len(channels)} stages (channels={channels}), each halving the image with 2x2 "
                f"max-pooling, but the input is {h}x{w}: the smaller side goes {' -> '.join(map(str, sizes))}. "
                f"At most {fits} stages fit this input; give fewer channels entries or use larger images.")
        in_channels = [c, *channels[:-1]]
        self.stages = nn.Sequential(
            *(conv_stage(i, o, convs_per_stage, batch_norm) for i, o in zip(in_channels, channels))
        )
        # Each stage's 2x2 pool floors the size: 28 -> 14 -> 7 -> 3.
        out_h, out_w = h >> len(channels), w >> len(channels)
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        flat = channels[-1] if global_pool else channels[-1] * out_h * out_w
        self.hidden = mlp_blocks(flat, hidden, batch_norm, dropout)
        self.classifier = nn.Linear(hidden[-1] if hidden else flat, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.pool(self.stages(x)).flatten(1)
        return self.classifier(self.hidden(x))


@register("cnn")
def build_cnn(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    channels: Annotated[list[Width], MinLen(1)] = (32, 64, 128),
    convs_per_stage: Width = 2,
    batch_norm: bool = True,
    global_pool: bool = False,
    hidden: list[Width] = (256,),
    dropout: Probability = 0.0,
) -> CNN:
    """Stages of [Conv3x3 -> BatchNorm2d -> ReLU] x convs_per_stage -> MaxPool2d(2), one stage per channels entry;
    then global average pooling (global_pool) or flatten; then [Linear -> BatchNorm1d -> ReLU -> Dropout] per
    hidden width -> Linear."""
    return CNN(in_shape, num_classes, list(channels), convs_per_stage, batch_norm, global_pool, list(hidden), dropout)
