"""timm architectures by name: ``model.name=timm/<architecture>`` builds any of timm's classifiers for the data's
channel and class count, with random weights (``model.weights=PATH`` loads a local file afterwards).

The timm network without its head (timm's ``num_classes=0``: pooled pre-logits features) becomes ``.backbone`` and a
fresh ``nn.Linear`` ``.classifier``: the model contract holds whatever timm calls its head. Nothing is ever
downloaded: no model hub is reachable where this launcher runs, and a run must be reproducible from local files.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from visionlaunch.errors import VisionlaunchError
from visionlaunch.models.layers import Probability

PREFIX = "timm/"
_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
_NO_DOWNLOAD = ("visionlaunch never downloads weights (no model hub is reachable from the machines it runs on, and "
                "a run must be reproducible from local files). Download the weights file yourself (a timm or torch "
                "state_dict, .pth/.pt or .safetensors), copy it here and pass model.weights=/path/to/the/file.")


@lru_cache(maxsize=1)
def _all_architectures() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def list_architectures(pattern: str = "") -> list[str]:
    """timm's architectures matching a shell pattern (a plain word matches anywhere in the name; "" matches all)."""
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return [n for n in _all_architectures() if fnmatch.fnmatchcase(n, pattern)]


def architecture(name: str) -> str:
    """The timm architecture named by ``timm/<architecture>``; a clear error (with close names) when unknown."""
    import timm

    arch = name[len(PREFIX):]
    if arch.startswith(_HUB_PREFIXES):
        raise VisionlaunchError(f"model.name={name!r} asks for a model from a hub: {_NO_DOWNLOAD} Then use "
                                f"model.name=timm/<architecture>.")
    if not arch or not timm.is_model(arch):
        hints = difflib.get_close_matches(arch, _all_architectures(), n=5, cutoff=0.6)
        maybe = f" Close names: {', '.join(PREFIX + h for h in hints)}." if hints else ""
        raise VisionlaunchError(
            f"unknown timm architecture {arch!r} (model.name={name!r}).{maybe} `visionlaunch models --timm "
            f"PATTERN` lists the {len(_all_architectures())} architectures timm {timm.__version__} knows.")
    return arch


class TimmClassifier(nn.Module):
    """A timm network without its head (``backbone``) followed by ``classifier``."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head_names: tuple[str, ...]):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.head_names = head_names  # timm's names of the head, to read timm's own state_dicts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def _create(arch: str, name: str, in_shape: tuple[int, int, int], **kwargs) -> nn.Module:
    import timm

    channels, height, width = in_shape
    # Transformers fix their position embeddings to img_size; convnets take any size and refuse the argument.
    for size in ({"img_size": (height, width)}, {}):
        try:
            return timm.create_model(arch, pretrained=False, num_classes=0, in_chans=channels, **size, **kwargs)
        except TypeError as exc:
            if not (size and "img_size" in str(exc)):
                raise VisionlaunchError(f"model {name!r} does not take one of the arguments given in model.args "
                                        f"({exc}). Remove it, or choose an architecture that has it.") from None


def _feature_dim(name: str, backbone: nn.Module, in_shape: tuple[int, int, int]) -> int:
    # One forward pass of zeros: it proves the architecture accepts this input size and gives the width of the
    # pre-logits features (timm's num_features is not it for every model, e.g. MobileNetV3's conv head).
    mode = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(1, *in_shape))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise VisionlaunchError(
            f"model {name!r} cannot take inputs of shape {tuple(in_shape)} (channels, height, width): {exc}. "
            "Choose another data.image_size or another architecture.") from None
    finally:
        backbone.train(mode)
    if out.dim() != 2:
        raise VisionlaunchError(f"model {name!r}: timm's headless network returns shape {tuple(out.shape)}, not "
                                "(batch, features), so it cannot be used as a classifier here.")
    return int(out.shape[1])


def builder_for(name: str) -> Callable[..., nn.Module]:
    """The registry builder for ``timm/<architecture>``; its keyword arguments are the model.args it accepts."""
    arch = architecture(name)

    def build(in_shape: tuple[int, int, int], num_classes: int, *, drop_rate: Probability = 0.0,
              drop_path_rate: Probability = 0.0, pretrained: bool = False) -> nn.Module:
        if pretrained:
            raise VisionlaunchError(f"model.args.pretrained=true for {name!r}: {_NO_DOWNLOAD}")
        # Only what the user set: not every architecture takes drop_path_rate.
        extra = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if v}
        backbone = _create(arch, name, in_shape, **extra)
        heads = backbone.pretrained_cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        return TimmClassifier(backbone, _feature_dim(name, backbone, in_shape), num_classes, heads)

    build.__qualname__ = build.__name__ = f"timm:{arch}"
    return build
