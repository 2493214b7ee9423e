"""Pieces shared by the models: the argument types of builders, the base class with the model contract, the MLP
head, weight init."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated

import torch
from annotated_types import Ge, Gt, Le, Lt
from torch import nn

from visionlaunch.errors import VisionlaunchError

# Argument types of the builders; their constraints show up in help and error text ("int > 0").
Width = Annotated[int, Gt(0)]
Probability = Annotated[float, Ge(0.0), Lt(1.0)]
BNMomentum = Annotated[float, Gt(0.0), Le(1.0)]
BNEps = Annotated[float, Gt(0.0)]


class ImageClassifier(nn.Module):
    """Base of the registered models: ``classifier`` is the final nn.Linear, ``feature_dim`` its input size.
    ``fixed_size``: the model needs exactly in_shape's height and width (a flatten before the head), not only its
    channel count (global pooling)."""

    classifier: nn.Linear

    def __init__(self, arch: str, in_shape: tuple[int, int, int], fixed_size: bool) -> None:
        super().__init__()
        self.arch = arch
        self.in_shape = tuple(in_shape)
        self.fixed_size = fixed_size

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features

    def check_input(self, x: torch.Tensor) -> None:
        # Turns PyTorch's "mat1 and mat2 shapes cannot be multiplied" into a message that names the cause.
        c, h, w = self.in_shape
        ok = x.dim() == 4 and x.shape[1] == c and (not self.fixed_size or tuple(x.shape[2:]) == (h, w))
        if not ok:
            wanted = f"(N, {c}, {h}, {w})" if self.fixed_size else f"(N, {c}, H, W)"
            raise VisionlaunchError(
                f"model {self.arch!r} was built for in_shape={self.in_shape} and expects batches of shape "
                f"{wanted}, but got {tuple(x.shape)}. Build the model with the dataset's image shape "
                "(channels, height, width), or resize/convert the images to match."
            )


def mlp_blocks(in_features: int, hidden: Sequence[int], batch_norm: bool, dropout: float) -> nn.Sequential:
    """Hidden layers of a head: per width, Linear -> (BatchNorm1d) -> ReLU -> (Dropout), named ``<i>.linear``,
    ``<i>.bn``... so that feature capture and summaries read well."""
    blocks = []
    for width in hidden:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        # BatchNorm's shift makes a bias before it redundant.
        layers["linear"] = nn.Linear(in_features, width, bias=not batch_norm)
        if batch_norm:
            layers["bn"] = nn.BatchNorm1d(width)
        layers["relu"] = nn.ReLU()
        if dropout > 0:
            layers["dropout"] = nn.Dropout(dropout)
        blocks.append(nn.Sequential(layers))
        in_features = width
    return nn.Sequential(*blocks)


def init_weights(model: nn.Module) -> None:
    """Kaiming init for ReLU networks, identity BatchNorm, and a unit-gain classifier."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
        else:
            continue
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    # No ReLU follows the logits, so the ReLU gain of sqrt(2) would only inflate the initial loss.
    nn.init.kaiming_normal_(model.classifier.weight, mode="fan_in", nonlinearity="linear")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv in the residual nets is followed by BatchNorm (directly or after the skip-add),
    # whose shift makes a bias redundant.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def check_min_size(arch: str, in_shape: tuple[int, int, int], halvings: int, designed_for: str = "32x32 CIFAR") -> None:
    """Refuse, at build time, an input too small for a model that halves it ``halvings`` times."""
    _, h, w = in_shape
    smallest = 2 ** halvings
    if min(h, w) < smallest:
        raise VisionlaunchError(
            f"model {arch!r} halves the image {halvings} times and needs inputs of at least {smallest}x{smallest} "
            f"pixels (it is designed for {designed_for} images), but in_shape={tuple(in_shape)}. Use larger images "
            f"(e.g. resize to {designed_for.split()[0]}) or a model for small inputs such as 'cnn' or 'fcn'."
        )
