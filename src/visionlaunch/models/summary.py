"""Model summary text (layers, output shapes, parameters) for summary.txt and the console."""

from __future__ import annotations

import re

import torch
import torchinfo
from torch import nn

from visionlaunch.errors import VisionlaunchError


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(model: nn.Module, in_shape: tuple[int, int, int], device: str | torch.device = "cpu") -> str:
    """torchinfo's table for a batch of 2 run in eval mode, leaving the model exactly as it was.

    The input is zeros (not torch.rand) so that writing a summary does not shift the global random stream.
    Each module's train/eval flag, BatchNorm statistics (eval mode does not update them) and the model's
    device are restored, since torchinfo only restores the top-level flag and moves the model to ``device``.
    """
    modes = {module: module.training for module in model.modules()}
    first = next(model.parameters(), None)
    home = first.device if first is not None else None
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    depth = max((name.count(".") + 1 for name, _ in model.named_modules() if name), default=1)
    try:
        stats = torchinfo.summary(
            model,
            input_data=torch.zeros((2, *in_shape), dtype=dtype, device=device),
            device=device,
            depth=depth,
            col_names=("output_size", "num_params"),
            row_settings=("var_names",),
            mode="eval",
            verbose=0,
        )
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
