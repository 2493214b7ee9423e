"""model.weights: start a model from a local weights file instead of random numbers: a torch or safetensors
state_dict, bare or under "model", "state_dict" or "model_state_dict", with or without DDP's "module." prefix, and for
timm models timm's own key names too. A file that does not match the model key for key and shape for shape is
refused, before any file of the run is written.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from visionlaunch.errors import VisionlaunchError, describe_load_failure

_WRAPPERS = ("model", "state_dict", "model_state_dict")
_SHOWN = 4


def _read(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file raises anything from pickle, zipfile or safetensors
        raise VisionlaunchError(
            f"model.weights={str(path)!r} cannot be read as a weights file: {describe_load_failure(exc)}. Give a "
            "torch state_dict (.pth/.pt, saved with torch.save) or a .safetensors file.") from None


def _state_dict(raw, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise VisionlaunchError(
            f"model.weights={str(path)!r} does not hold a state_dict (a mapping of parameter names to tensors, "
            f"directly or under one of {', '.join(map(repr, _WRAPPERS))}). Save the weights with "
            "torch.save(model.state_dict(), path).")
    if all(k.startswith("module.") for k in raw):
        raw = {k[len("module."):]: v for k, v in raw.items()}
    return dict(raw)


def _from_timm_names(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's own key names to ours: its head becomes `classifier`, everything else lives under `backbone.`."""
    heads = getattr(model, "head_names", None)
    if heads is None or any(k.startswith(("backbone.", "classifier.")) for k in state):
        return state
    out = {}
    for key, value in state.items():
        head = next((h for h in heads if key.startswith(h + ".") and key.count(".") == h.count(".") + 1), None)
        out[f"classifier.{key[len(head) + 1:]}" if head else f"backbone.{key}"] = value
    return out


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def load_weights(model: nn.Module, path: str | Path, model_name: str) -> None:
    """Load `path` into `model` in place, or raise a VisionlaunchError that names the file and what differs."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VisionlaunchError(f"model.weights={str(path)!r} does not exist. Give the path of a local weights "
                                "file (.pth/.pt/.safetensors).")
    state = _from_timm_names(_state_dict(_read(path), path), model)
    own = model.state_dict()
    # BatchNorm's step counter is not a weight; files from other tools often leave it out.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = []
        if "classifier.weight" in state and "classifier.weight" in own and \
                state["classifier.weight"].shape[0] != own["classifier.weight"].shape[0]:
            problems.append(f"it has a classifier for {state['classifier.weight'].shape[0]} classes, the data has "
                            f"{own['classifier.weight'].shape[0]}")
        if shapes:
            problems.append(f"shapes differ: {_listed(shapes)}")
        if missing:
            problems.append(f"the model's {_listed(missing)} are not in the file")
        if unexpected:
            problems.append(f"the file's {_listed(unexpected)} are not in the model")
        raise VisionlaunchError(
            f"model.weights={str(path)!r} does not fit model {model_name!r} for this data: {'; '.join(problems)}. "
            "The file must come from the same architecture, built for the same number of input channels and "
            "classes; use a matching file or remove model.weights to start from random weights.")
    with torch.no_grad():
        model.load_state_dict(state, strict=False)  # strict except the step counters checked above
