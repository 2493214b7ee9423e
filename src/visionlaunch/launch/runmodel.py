"""A trained run's model and its preprocessing, from the run folder alone: what `predict`, `export` and
`evaluate --data` need (weights, classes, input shape, normalisation, test-time augmentation)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from visionlaunch.config import RunConfig
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.evaluate import load_run
from visionlaunch.models import build_model
from visionlaunch.runfolder import weights_file

WEIGHTS = ("last", "best", "ema_last", "ema_best")


@dataclass
class RunModel:
    run_dir: Path
    which: str                       # last, best, ema_last, ema_best
    cfg: RunConfig
    ckpt: dict
    model: nn.Module                 # eval mode, on the CPU
    classes: list[str]
    in_shape: tuple[int, int, int]   # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def tta_flip(self) -> bool:
        return self.cfg.train.tta_flip

    @property
    def epoch(self):
        return self.ckpt.get("epoch")


def load_run_model(run_dir: Path, which: str = "last") -> RunModel:
    cfg, ckpt, _ = load_run(run_dir, which)
    missing = [k for k in ("model", "model_name", "model_args", "in_shape", "classes") if k not in ckpt]
    if missing:
        raise VisionlaunchError(
            f"{weights_file(run_dir, which)} lacks {', '.join(missing)}: it was not written by "
            "`visionlaunch train`. Pass a run folder that training wrote.")
    in_shape = tuple(int(d) for d in ckpt["in_shape"])
    classes = [str(c) for c in ckpt["classes"]]
    model = build_model(ckpt["model_name"], in_shape, len(classes), ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    if "mean" in ckpt and "std" in ckpt:
        mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    else:  # weights written before the constants were stored with them: the run's own data gives them again
        from visionlaunch.trainers.data import prepare_data
        data = prepare_data(cfg.data, log=lambda m: print(m, file=sys.stderr), progress=False)
        mean, std = data.mean, data.std
    return RunModel(Path(run_dir), which, cfg, ckpt, model, classes, in_shape, tuple(mean), tuple(std))


def batch_logits(run: RunModel, images: torch.Tensor, device: torch.device, autocast) -> torch.Tensor:
    """float32 logits of a uint8 NCHW batch of the run's input shape: normalised with the run's constants, with the
    run's test-time augmentation (the mirror image, when it trained with train.tta_flip)."""
    from visionlaunch.datasets import normalize
    from visionlaunch.trainers.evaluation import tta_logits

    with torch.no_grad(), autocast():
        logits = tta_logits(run.model, normalize(images.to(device), run.mean, run.std), run.tta_flip)
    return logits.float()
