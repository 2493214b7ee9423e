"""Read a model's intermediate features (for t-SNE, probes) through forward hooks that always come off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from visionlaunch.errors import VisionlaunchError

PENULTIMATE = "penultimate"
_SHOWN_NAMES = 40


def layer_names(model: nn.Module) -> list[str]:
    """Names accepted by capture_features: "penultimate" (the classifier's input) and every submodule."""
    return [PENULTIMATE] + [name for name, _ in model.named_modules() if name]


@contextmanager
def capture_features(model: nn.Module, layer: str = PENULTIMATE) -> Iterator[list[torch.Tensor]]:
    """Collect one (N, D) float32 CPU tensor per forward pass while the block runs.

    "penultimate" captures the input of ``model.classifier``; any other name captures that submodule's output.
    Pass the unwrapped model (not DDP or torch.compile wrappers): their names carry prefixes.
    """
    modules = dict(model.named_modules())
    target = "classifier" if layer == PENULTIMATE else layer
    if not layer or target not in modules:
        raise VisionlaunchError(f"unknown layer {layer!r} for feature capture. Valid layers are: {_name_list(model)}.")
    captured: list[torch.Tensor] = []
    if layer == PENULTIMATE:

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(_flat_copy(layer, args[0]))

        handle = modules[target].register_forward_pre_hook(hook)
    else:

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:  # type: ignore[misc]
            captured.append(_flat_copy(layer, output))

        handle = modules[target].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _flat_copy(layer: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise VisionlaunchError(
            f"layer {layer!r} produces a {type(value).__name__}, not a tensor, so its features cannot be captured; "
            "choose a layer whose output is a single tensor (e.g. a convolution, an activation or 'penultimate')."
        )
    # A real copy: later in-place ops (ReLU(inplace=True)) must not change what we stored.
    return value.detach().reshape(value.shape[0], -1).to("cpu", torch.float32, copy=True)


def _name_list(model: nn.Module) -> str:
    names = layer_names(model)
    if len(names) <= _SHOWN_NAMES:
        return ", ".join(names)
    return ", ".join(names[:_SHOWN_NAMES]) + f", ... ({len(names) - _SHOWN_NAMES} more; see layer_names(model))"
