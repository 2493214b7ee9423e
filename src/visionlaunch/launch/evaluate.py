"""A trained run rebuilt from its folder alone (config.yaml, run.yaml, weights/*.pt): `visionlaunch evaluate` and
`visionlaunch figures` measure and redraw what training measured and drew; `RunModel` is the model and its
preprocessing (weights, classes, input shape, normalisation, test-time augmentation) that `predict`, `export` and
`evaluate --data` use. `evaluate --data` measures the weights on another split, or on another dataset whose classes
have the same names (in any order), converted to the run's input shape (datasets/conform.py)."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from visionlaunch.config import DataConfig, RunConfig, apply_override, load_config, parse_override
from visionlaunch.errors import VisionlaunchError, describe_load_failure
from visionlaunch.models import build_model
from visionlaunch.runfolder import CONFIG, WEIGHTS, read_run_identity, weights_file
from visionlaunch.trainers.data import prepare_data
from visionlaunch.validation_messages import format_validation_error


_log = partial(print, file=sys.stderr)


# What `Trainer._save_weights` writes; a file without these keys was not written by visionlaunch.
WEIGHTS_KEYS = ("model", "model_name", "model_args", "in_shape", "classes")


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
    tta_flip: bool                   # train.tta_flip: evaluate each image and its mirror image
    epoch: int | None                # the epoch the weights are from


def read_config_and_weights(run_dir: Path, which: str) -> tuple[RunConfig, dict]:
    """A run folder's config and weights file, each checked."""
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
    if not config_path.is_file():
        raise VisionlaunchError(
            f"{config_path} not found: {run_dir} is not a finished visionlaunch run folder. Pass the folder that "
            "`visionlaunch train` printed (runs/<name>).")
    return load_config(config_path), read_weights_file(weights_path)


def _built(ckpt: dict, in_shape: tuple[int, int, int], num_classes: int, path: Path) -> nn.Module:
    model = build_model(ckpt["model_name"], in_shape, num_classes, ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing, unexpected or differently shaped tensors
        raise VisionlaunchError(
            f"the weights in {path} do not fit model {ckpt['model_name']!r} ({' '.join(str(exc).split())[:300]}); "
            "the file was edited or belongs to another run. Use the weights written by `visionlaunch train` for "
            "this run folder.") from None
    return model


def load_run_model(run_dir: Path, which: str = "last") -> RunModel:
    """A run folder's model (eval mode, on the CPU) and its preprocessing."""
    cfg, ckpt = read_config_and_weights(run_dir, which)
    in_shape = tuple(int(d) for d in ckpt["in_shape"])
    classes = [str(c) for c in ckpt["classes"]]
    model = _built(ckpt, in_shape, len(classes), weights_file(run_dir, which)).eval()
    if "mean" in ckpt and "std" in ckpt:
        mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    else:  # weights written before the constants were stored with them: the run's own data gives them again
        data = prepare_data(cfg.data, log=_log, progress=False)
        mean, std = data.mean, data.std
    return RunModel(Path(run_dir), which, cfg, ckpt, model, classes, in_shape, tuple(mean), tuple(std),
                    cfg.train.tta_flip, ckpt.get("epoch"))


def batch_logits(run: RunModel, images: torch.Tensor, device: torch.device, autocast) -> torch.Tensor:
    """float32 logits of a uint8 NCHW batch of the run's input shape: normalised with the run's constants, with the
    run's test-time augmentation (the mirror image, when it trained with train.tta_flip)."""
    from visionlaunch.datasets import normalize
    from visionlaunch.trainers.evaluation import tta_logits

    with torch.no_grad(), autocast():
        logits = tta_logits(run.model, normalize(images.to(device), run.mean, run.std), run.tta_flip)
    return logits.float()


def _rebuild(run_dir: Path, which: str):
    from visionlaunch.trainers.setup import batch_pipeline, half_type

    cfg, ckpt = read_config_and_weights(run_dir, which)
    identity = read_run_identity(run_dir)
    accelerator = run_accelerator(run_dir, cfg, identity)
    data = prepare_data(cfg.data, log=_log)
    path = weights_file(run_dir, which)
    _check_same_task(path, ckpt, data)  # before building: the weights of another task do not fit this data's model
    model = _built(ckpt, data.in_shape, len(data.classes), path)
    # As the trainer evaluated it: the same memory layout, input dtype and mixed-precision forward (autocast,
    # logits cast to float32 before TTA averages them), so that a GPU run's accuracy is reproduced exactly.
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    pipeline = batch_pipeline(cfg, data, accelerator.device, cfg.train.seed, half_type(accelerator))
    return cfg, ckpt, identity, accelerator, data, model, pipeline


def run_accelerator(run_dir: Path, cfg: RunConfig, identity: dict | None = None):
    """An Accelerator computing in the precision the run trained in (run.yaml's, where train.precision was auto and
    resolved on the training machine), so that its numbers are reproduced; a NOTE where that type is emulated here."""
    from visionlaunch.trainers.distributed import make_accelerator

    trained = (identity if identity is not None else read_run_identity(run_dir)).get("precision")
    accelerator, precision = make_accelerator(cfg, trained if cfg.train.precision == "auto" and trained else None)
    if precision.note:
        _log(precision.note)
    return accelerator


def _names(classes: list[str]) -> str:
    return ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")


def _check_same_task(path: Path, ckpt: dict, data) -> None:
    """Weights trained for other classes or another image shape cannot be evaluated on this data: say so instead
    of PyTorch's size-mismatch dump (e.g. a run folder whose config.yaml was edited, or data that changed)."""
    classes, shape = [str(c) for c in ckpt["classes"]], tuple(ckpt["in_shape"])
    if classes != list(data.classes):
        raise VisionlaunchError(
            f"{path} was trained for {len(classes)} classes ({_names(classes)}) but the data of this run folder's "
            f"config.yaml has {len(data.classes)} ({_names(data.classes)}). "
            "Evaluate it on the dataset it was trained on (data.name/data.path in config.yaml).")
    if shape != tuple(data.in_shape):
        raise VisionlaunchError(
            f"{path} was trained on images of shape {shape} but the data of this run folder's config.yaml "
            f"has shape {tuple(data.in_shape)}. Evaluate it on the dataset it was trained on.")


def evaluate_run(run_dir: Path, which: str = "last") -> int:
    from visionlaunch.trainers.data import make_loader
    from visionlaunch.trainers.losses import CrossEntropyLoss
    from visionlaunch.trainers.evaluation import evaluate

    cfg, ckpt, _, accelerator, data, model, pipeline = _rebuild(run_dir, which)
    # Evaluation has no augmentation, so the tensor backend reads the same test samples as ffcv would, without
    # needing the run's .beton files or a numba compile.
    kind = "tensor" if cfg.data.loader == "ffcv" else cfg.data.loader
    loader = make_loader(kind, data.test.images, data.test.labels, cfg.train.eval_batch_size,
                         train=False, seed=cfg.train.seed, device=accelerator.device, num_workers=0)
    result = evaluate(model, loader, pipeline, accelerator, CrossEntropyLoss(), tta_flip=cfg.train.tta_flip)
    recorded = ckpt.get("results", {}).get("test", {})
    print(f"{which} weights (epoch {ckpt.get('epoch')}): test {_measured(result)}")
    if "acc" not in recorded:
        print("no test accuracy was recorded with these weights to compare against")
        return 0
    same = round(recorded["acc"] * recorded["n"]) == round(result["acc"] * result["n"]) and recorded["n"] == result["n"]
    print(f"recorded at training time: {100 * recorded['acc']:.2f}% ({round(recorded['acc'] * recorded['n'])}/"
          f"{recorded['n']}) -> " + ("reproduced exactly" if same else "MISMATCH"))
    return 0 if same else 1


def _measured(result: dict) -> str:
    return (f"accuracy {100 * result['acc']:.2f}% ({round(result['acc'] * result['n'])}/{result['n']}), top-5 "
            f"{100 * result['acc5']:.2f}%, loss {result['loss']:.4f}")


def redraw_figures(run_dir: Path) -> list[Path]:
    from visionlaunch.reports.artefacts import make_figures

    cfg, _, identity, accelerator, data, model, pipeline = _rebuild(run_dir, "last")
    # run.yaml may be missing (a copied or partial folder): stamp with what is known, and today's date.
    identity = {"ident": cfg.resolved_ident(), "date": dt.date.today().isoformat(), "name": Path(run_dir).name,
                **identity}
    return make_figures(Path(run_dir), model, data, pipeline, cfg, identity, accelerator)


# ------------------------------------------------------------------------------------ another split or dataset


_DATASET_KEYS = ("name", "path")
# Dropped when the dataset changes, unless given: the run's subsets, hold-out and fallback were meant for its own data
# (a fallback to the MNIST sample would silently measure other images).
_SUBSET_KEYS = {"train_subset": None, "test_subset": None, "val_size": 0, "fallback": "none"}


def data_config(run: RunModel, overrides: list[str], split: str) -> DataConfig:
    tree = run.cfg.data.model_dump(mode="json")
    given = set()
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] == "data":
            keys = keys[1:]
        if not keys:
            raise VisionlaunchError(f"--data {text!r}: give a data key, e.g. --data name=imagefolder path=/data/x.")
        apply_override(tree, keys, value)
        given.add(keys[0])
    if any(tree.get(k) != getattr(run.cfg.data, k) for k in _DATASET_KEYS):
        for key, value in _SUBSET_KEYS.items():
            if key not in given and not (key == "val_size" and split == "val"):
                tree[key] = value
    if tree["name"] != "imagefolder" and tree.get("image_size") is not None:
        if "image_size" in given:
            raise VisionlaunchError(
                f"--data image_size={tree['image_size']}: data.image_size applies to name=imagefolder (photos of "
                f"mixed sizes); {tree['name']} has one image size already and is converted to the run's input "
                "shape. Remove image_size.")
        tree["image_size"] = None  # the run's photo size: this dataset's images are converted to its input shape
    try:
        return DataConfig.model_validate(tree)
    except ValidationError as err:
        raise VisionlaunchError(format_validation_error(err, "--data " + " ".join(overrides), DataConfig)) from None


def label_map(run: RunModel, classes: list[str], where: str):
    """Index of each of the data's classes in the run's classes; an error when the names differ."""
    if list(classes) == run.classes:
        return None
    if sorted(classes) == sorted(run.classes):
        return torch.tensor([run.classes.index(c) for c in classes])
    only_run = [c for c in run.classes if c not in classes]
    only_data = [c for c in classes if c not in run.classes]
    raise VisionlaunchError(
        f"the classes of {where} do not match the run's: the run was trained on {len(run.classes)} classes "
        f"({_names(run.classes)}), the data has {len(classes)} ({_names(classes)}). Only in the run: "
        f"{_names(only_run) or 'none'}; only in the data: {_names(only_data) or 'none'}. Evaluate on data with the "
        "same class names (for an ImageFolder, the folder names under train/ and test/).")


def evaluate_on_data(run_dir: Path, which: str = "last", overrides: list[str] = (), split: str = "test") -> int:
    from visionlaunch.datasets.conform import conform_batch, describe_conversion
    from visionlaunch.trainers.data import make_loader
    from visionlaunch.trainers.evaluation import Totals
    run = load_run_model(run_dir, which)
    cfg = data_config(run, list(overrides), split)
    data = prepare_data(cfg, log=_log, progress=False)
    ds = {"train": data.train, "val": data.val, "test": data.test}[split]
    if ds is None or not len(ds):
        raise VisionlaunchError(f"--split {split}: the data has no {split} split (data.val_size is "
                                f"{cfg.val_size}). Hold some training images out with --data val_size=5000, or choose "
                                "another split.")
    mapping = label_map(run, ds.classes, str(ds.source))
    labels = ds.labels if mapping is None else mapping[ds.labels]
    images = ds.images
    conversion = describe_conversion(tuple(images.shape[1:]), run.in_shape)
    if conversion:
        print(f"converting {len(images)} images of shape {tuple(images.shape[1:])} to the run's {run.in_shape}: "
              f"{conversion}", file=sys.stderr)
        images = conform_batch(images, run.in_shape)
    accelerator = run_accelerator(run.run_dir, run.cfg)
    device = accelerator.device
    run.model.to(device)
    loader = make_loader("tensor", images, labels, run.cfg.train.eval_batch_size, train=False, seed=0, device=device)
    totals = Totals(device)
    for batch, target in loader:
        logits = batch_logits(run, batch, device, accelerator.autocast)
        totals.add(torch.nn.functional.cross_entropy(logits, target), logits, target)
    print(f"{which} weights (epoch {run.epoch}) on {split} of {ds.source}: {_measured(totals.result(accelerator))}")
    return 0
