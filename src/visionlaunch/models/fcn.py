"""Fully connected network: flatten the image, a stack of hidden layers, a linear classifier."""

from __future__ import annotations

import math

import torch
from torch import nn

from visionlaunch.models.layers import ImageClassifier, Probability, Width, init_weights, mlp_blocks
from visionlaunch.models.registry import register


class FCN(ImageClassifier):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        hidden: list[int],
        batch_norm: bool,
        dropout: float,
        input_dropout: float,
    ) -> None:
        super().__init__("fcn", in_shape, fixed_size=True)
        # Dropout(0) is an identity; leaving it out keeps summaries and layer names honest.
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.hidden = mlp_blocks(math.prod(in_shape), hidden, batch_norm, dropout)
        self.classifier = nn.Linear(hidden[-1] if hidden else math.prod(in_shape), num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.input_dropout(x.flatten(1))
        return self.classifier(self.hidden(x))


@register("fcn")
def build_fcn(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    hidden: list[Width] = (1024, 1024),
    batch_norm: bool = True,
    dropout: Probability = 0.0,
    input_dropout: Probability = 0.0,
) -> FCN:
    """Flatten -> [Linear -> BatchNorm1d -> ReLU -> Dropout] per hidden width -> Linear."""
    return FCN(in_shape, num_classes, list(hidden), batch_norm, dropout, input_dropout)
