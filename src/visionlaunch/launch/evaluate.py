"""`visionlaunch evaluate` and `visionlaunch figures`: rebuild a run from its folder alone (config.yaml,
run.yaml, weights/*.pt) and measure or redraw what training measured and drew."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import torch

from visionlaunch.config import load_config
from visionlaunch.datasets.loaders import make_loader
from visionlaunch.errors import VisionlaunchError, describe_load_failure
from visionlaunch.models import build_model
from visionlaunch.reports.artefacts import make_figures
from visionlaunch.runfolder import CONFIG, WEIGHTS, read_run_identity, weights_file
from visionlaunch.trainers.data import prepare_data
from visionlaunch.trainers.distributed import make_accelerator
from visionlaunch.trainers.evaluation import evaluate
from visionlaunch.trainers.losses import CrossEntropyLoss
from visionlaunch.trainers.pipeline import BatchPipeline


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def load_run(run_dir: Path, which: str = "last"):
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / CONFIG, weights_file(run_dir, which)
    if config_path.is_file() and not weights_path.is_file():
        present = sorted(p.stem for p in (run_dir / WEIGHTS).glob("*.pt"))
        raise VisionlaunchError(
            f"{run_dir} has no weights/{which}.pt"
            + (f" (it has {', '.join(present)}: choose one with --weights)" if present else
               ": the run has not finished an epoch yet (weights are written at the end of every epoch)")
            + ". Let the run finish an epoch (resume an interrupted one with train.resume=<run folder>), or pass "
              "another run folder.")
    for path in (config_path, weights_path):
        if not path.is_file():
            hint = (" (best.pt exists only for runs with a validation split; use --weights last)"
                    if which == "best" and path == weights_path else "")
            raise VisionlaunchError(
                f"{path} not found: {run_dir} is not a finished visionlaunch run folder{hint}. Pass the folder that "
                "`visionlaunch train` printed (runs/<name>).")
    cfg = load_config(config_path)
    ckpt = read_weights_file(weights_path)
    identity = read_run_identity(run_dir)
    return cfg, ckpt, identity


# What `Trainer._save_weights` writes; a file without these keys was not written by visionlaunch.
WEIGHTS_KEYS = ("model", "model_name", "model_args")


def read_weights_file(path: Path) -> dict:
    """A run's weights/<which>.pt, checked: any failure is one paragraph naming the file (never PyTorch's advice to
    load untrusted files with weights_only=False)."""
    replace = ("Use the weights/*.pt written by `visionlaunch train`, or copy the run folder again.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, empty, foreign: never PyTorch's weights_only=False advice
        raise VisionlaunchError(f"cannot read the weights file {path}: {describe_load_failure(exc)}. "
                                f"{replace}") from None
    missing = [k for k in WEIGHTS_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        kind = ("a plain state_dict (tensors only)" if isinstance(ckpt, dict) and ckpt
                and all(isinstance(v, torch.Tensor) for v in ckpt.values()) else f"a {type(ckpt).__name__}")
        raise VisionlaunchError(
            f"the weights file {path} is {kind}, not a visionlaunch weights file (a mapping with "
            f"{', '.join(WEIGHTS_KEYS)}, ...; missing: {', '.join(missing)}). {replace}")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise VisionlaunchError(f"the weights file {path} has no state_dict of tensors under 'model'. {replace}")
    return ckpt


def _rebuild(run_dir: Path, which: str):
    cfg, ckpt, identity = load_run(run_dir, which)
    accelerator = make_accelerator(cfg)
    data = prepare_data(cfg.data, log=_log)
    _check_same_task(weights_file(run_dir, which), ckpt, data)
    model = build_model(ckpt["model_name"], data.in_shape, len(data.classes), ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing, unexpected or differently shaped tensors
        raise VisionlaunchError(
            f"the weights in {weights_file(run_dir, which)} do not fit model {ckpt['model_name']!r} "
            f"({' '.join(str(exc).split())[:300]}); the file was edited or belongs to another run. Use the weights "
            "written by `visionlaunch train` for this run folder.") from None
    # As the trainer evaluated it: the same memory layout, input dtype and mixed-precision forward (autocast,
    # logits cast to float32 before TTA averages them), so that a GPU run's accuracy is reproduced exactly.
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
    pipeline = BatchPipeline(cfg.augment, data.mean, data.std, accelerator.device, seed=cfg.train.seed,
                             channels_last=cfg.train.channels_last,
                             dtype=half if cfg.data.half_inputs else torch.float32)
    return cfg, ckpt, identity, accelerator, data, model, pipeline


def _check_same_task(path: Path, ckpt: dict, data) -> None:
    """Weights trained for other classes or another image shape cannot be evaluated on this data: say so instead
    of PyTorch's size-mismatch dump (e.g. a run folder whose config.yaml was edited, or data that changed)."""
    classes, shape = ckpt.get("classes"), ckpt.get("in_shape")
    if classes is not None and list(classes) != list(data.classes):
        raise VisionlaunchError(
            f"{path} was trained for {len(classes)} classes ({', '.join(map(str, classes[:5]))}"
            f"{', ...' if len(classes) > 5 else ''}) but the data of this run folder's config.yaml has "
            f"{len(data.classes)} ({', '.join(data.classes[:5])}{', ...' if len(data.classes) > 5 else ''}). "
            "Evaluate it on the dataset it was trained on (data.name/data.path in config.yaml).")
    if shape is not None and tuple(shape) != tuple(data.in_shape):
        raise VisionlaunchError(
            f"{path} was trained on images of shape {tuple(shape)} but the data of this run folder's config.yaml "
            f"has shape {tuple(data.in_shape)}. Evaluate it on the dataset it was trained on.")


def evaluate_run(run_dir: Path, which: str = "last") -> int:
    cfg, ckpt, _, accelerator, data, model, pipeline = _rebuild(run_dir, which)
    # Evaluation has no augmentation, so the tensor backend reads the same test samples as ffcv would, without
    # needing the run's .beton files or a numba compile.
    kind = "tensor" if cfg.data.loader == "ffcv" else cfg.data.loader
    loader = make_loader(kind, data.test.images, data.test.labels, cfg.train.eval_batch_size,
                         train=False, seed=cfg.train.seed, device=accelerator.device, num_workers=0)
    result = evaluate(model, loader, pipeline, accelerator, CrossEntropyLoss(), tta_flip=cfg.train.tta_flip)
    recorded = ckpt.get("results", {}).get("test", {})
    print(f"{which} weights (epoch {ckpt.get('epoch')}): test accuracy {100 * result['acc']:.2f}% "
          f"({round(result['acc'] * result['n'])}/{result['n']}), top-5 {100 * result['acc5']:.2f}%, "
          f"loss {result['loss']:.4f}")
    if "acc" not in recorded:
        print("no test accuracy was recorded with these weights to compare against")
        return 0
    same = round(recorded["acc"] * recorded["n"]) == round(result["acc"] * result["n"]) and recorded["n"] == result["n"]
    print(f"recorded at training time: {100 * recorded['acc']:.2f}% ({round(recorded['acc'] * recorded['n'])}/"
          f"{recorded['n']}) -> " + ("reproduced exactly" if same else "MISMATCH"))
    return 0 if same else 1


def redraw_figures(run_dir: Path) -> list[Path]:
    cfg, _, identity, accelerator, data, model, pipeline = _rebuild(run_dir, "last")
    # run.yaml may be missing (a copied or partial folder): stamp with what is known, and today's date.
    identity = {"ident": cfg.resolved_ident(), "date": dt.date.today().isoformat(), "name": Path(run_dir).name,
                **identity}
    return make_figures(Path(run_dir), model, data, pipeline, cfg, identity, device=accelerator.device)
