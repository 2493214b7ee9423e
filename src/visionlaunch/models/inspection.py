"""Looking inside a model: its summary table (layers, output shapes, parameters) for summary.txt and the console,
and its intermediate features (for t-SNE, probes) through forward hooks that always come off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torchinfo
from torch import nn

from visionlaunch.errors import VisionlaunchError

PENULTIMATE = "penultimate"
_SHOWN_NAMES = 40


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(model: nn.Module, in_shape: tuple[int, int, int]) -> str:
    """torchinfo's table for a batch of 2 zeros (torch.rand would shift the global random stream) run in eval mode,
    leaving the model as it was: torchinfo only restores the top-level train flag and moves the model to the CPU."""
    modes = {module: module.training for module in model.modules()}
    first = next(model.parameters(), None)
    home = first.device if first is not None else None
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    depth = max((name.count(".") + 1 for name, _ in model.named_modules() if name), default=1)
    try:
        stats = torchinfo.summary(model, input_data=torch.zeros((2, *in_shape), dtype=dtype), device="cpu", depth=depth,
                                  col_names=("output_size", "num_params"), row_settings=("var_names",), mode="eval",
                                  verbose=0)
    except RuntimeError as err:
        # torchinfo wraps every failure; a user error from the model (wrong in_shape) should stay one.
        if isinstance(err.__cause__, VisionlaunchError):
            raise err.__cause__ from None
        raise
    finally:
        for module, training in modes.items():
            module.training = training
        if home is not None:
            model.to(home)
    # torchinfo prints its unit enum ("Total mult-adds (Units.MEGABYTES)") on recent Pythons; say "(M)".
    return re.sub(r"\(Units\.([A-Z])[A-Z]*\)", r"(\1)", str(stats))


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
        names = layer_names(model)
        shown = ", ".join(names[:_SHOWN_NAMES]) + (f", ... ({len(names) - _SHOWN_NAMES} more; see layer_names(model))"
                                                   if len(names) > _SHOWN_NAMES else "")
        raise VisionlaunchError(f"unknown layer {layer!r} for feature capture. Valid layers are: {shown}.")
    captured: list[torch.Tensor] = []
    if layer == PENULTIMATE:
        handle = modules[target].register_forward_pre_hook(lambda _, args: captured.append(_flat_copy(layer, args[0])))
    else:
        handle = modules[target].register_forward_hook(lambda _, args, out: captured.append(_flat_copy(layer, out)))
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
