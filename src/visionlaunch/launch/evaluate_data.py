"""`visionlaunch evaluate RUN --data key=value ... [--split train|val|test]`: a run's weights measured on another
split or another dataset with the same classes.

The data section starts as the run's own (config.yaml) with the given keys on top (`path=X` and `data.path=X` are
the same). When the dataset changes (data.name or data.path), the run's subsets, validation hold-out and fallback
(train_subset, test_subset, val_size, fallback) are dropped unless given again: the whole split of the new dataset is
measured. Images are normalised with the run's own constants and, when their shape differs, converted to the run's
input shape (datasets/conform.py). The classes are matched by name, in any order; a dataset with other class names
stops with both lists.
"""

from __future__ import annotations

import sys
from pathlib import Path

from visionlaunch.config import DataConfig, apply_override, format_validation_error, parse_override
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.runmodel import RunModel, batch_logits, load_run_model

SPLITS = ("train", "val", "test")
_DATASET_KEYS = ("name", "path")
# Dropped when the dataset changes, unless given: the run's subsets, hold-out and fallback were meant for its own data
# (a fallback to the MNIST sample would silently measure other images).
_SUBSET_KEYS = {"train_subset": None, "test_subset": None, "val_size": 0, "fallback": "none"}


def data_config(run: RunModel, overrides: list[str], split: str) -> DataConfig:
    from pydantic import ValidationError

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
    try:
        return DataConfig.model_validate(tree)
    except ValidationError as err:
        raise VisionlaunchError(format_validation_error(err, "--data " + " ".join(overrides))) from None


def _names(classes: list[str]) -> str:
    return ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")


def label_map(run: RunModel, classes: list[str], where: str):
    """Index of each of the data's classes in the run's classes; an error when the names differ."""
    if list(classes) == run.classes:
        return None
    if sorted(classes) == sorted(run.classes):
        import torch
        return torch.tensor([run.classes.index(c) for c in classes])
    only_run = [c for c in run.classes if c not in classes]
    only_data = [c for c in classes if c not in run.classes]
    raise VisionlaunchError(
        f"the classes of {where} do not match the run's: the run was trained on {len(run.classes)} classes "
        f"({_names(run.classes)}), the data has {len(classes)} ({_names(classes)}). Only in the run: "
        f"{_names(only_run) or 'none'}; only in the data: {_names(only_data) or 'none'}. Evaluate on data with the "
        "same class names (for an ImageFolder, the folder names under train/ and test/).")


def evaluate_on_data(run_dir: Path, which: str = "last", overrides: list[str] = (), split: str = "test") -> int:
    import torch

    from visionlaunch.datasets.conform import conform_batch, describe_conversion
    from visionlaunch.datasets.loaders import make_loader
    from visionlaunch.trainers.data import prepare_data
    from visionlaunch.trainers.evaluation import topk_correct
    from visionlaunch.trainers.distributed import make_accelerator

    if split not in SPLITS:
        raise VisionlaunchError(f"--split {split!r}: choose one of {', '.join(SPLITS)}.")
    run = load_run_model(run_dir, which)
    cfg = data_config(run, list(overrides), split)
    data = prepare_data(cfg, log=lambda m: print(m, file=sys.stderr), progress=False)
    ds = {"train": data.train, "val": data.val, "test": data.test}[split]
    if ds is None or not len(ds):
        raise VisionlaunchError(f"--split {split}: the data has no {split} split (data.val_size is "
                                f"{cfg.val_size}). Hold some training images out with --data val_size=5000, or choose "
                                "another split.")
    mapping = label_map(run, ds.classes, f"{ds.source}")
    labels = ds.labels if mapping is None else mapping[ds.labels]
    images = ds.images
    conversion = describe_conversion(tuple(images.shape[1:]), run.in_shape)
    if conversion:
        print(f"converting {len(images)} images of shape {tuple(images.shape[1:])} to the run's {run.in_shape}: "
              f"{conversion}", file=sys.stderr)
        images = conform_batch(images, run.in_shape)
    accelerator = make_accelerator(run.cfg)
    device = accelerator.device
    run.model.to(device)
    loader = make_loader("tensor", images, labels, run.cfg.train.eval_batch_size, train=False, seed=0, device=device)
    totals = torch.zeros(4, dtype=torch.float64)
    for batch, target in loader:
        logits = batch_logits(run, batch, device, accelerator.autocast)
        loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
        top1, top5 = topk_correct(logits, target)
        totals += torch.tensor([loss.item(), top1.item(), top5.item(), len(target)], dtype=torch.float64)
    loss_sum, top1, top5, n = totals.tolist()
    print(f"{which} weights (epoch {run.epoch}) on {split} of {ds.source}: accuracy {100 * top1 / n:.2f}% "
          f"({int(top1)}/{int(n)}), top-5 {100 * top5 / n:.2f}%, loss {loss_sum / n:.4f}")
    return 0
