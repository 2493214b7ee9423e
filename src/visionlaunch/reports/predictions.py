"""predictions.npz: the test labels and predictions of a run's final model, so that reports can name the most
confused class pairs without reloading the model or the data (reports read only the run folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionlaunch.atomic import atomic_write
from visionlaunch.runfolder import PREDICTIONS


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray          # (N,) true class indices of the test images
    preds: np.ndarray           # (N,) predicted class indices
    classes: list[str]          # class names, in index order
    grid: np.ndarray | None     # indices of the images shown in figures/predictions.png, when known
    superclasses: list[str] | None = None      # names of the class groups (CIFAR-100's 20), when the data has them
    superclass_of: np.ndarray | None = None    # (classes,) each class's group index

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.labels == self.preds)) if len(self.labels) else 0.0


def indices(values, n: int, what: str) -> np.ndarray:
    """`values` as a 1-D int64 array of indices in [0, n) (class indices, or positions in the predictions)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{what} must lie in [0, {n}), got {arr.min()}..{arr.max()}")
    return arr


def label_pair(labels, preds, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if not classes:
        raise ValueError("classes is empty; pass the dataset's class names")
    y = indices(labels, len(classes), "labels")
    p = indices(preds, len(classes), "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {len(y)} vs {len(p)}")
    return y, p


def _check(labels, preds, classes: list[str], grid) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    y, p = label_pair(labels, preds, classes)
    return y, p, None if grid is None else indices(grid, len(y), "grid")


def check_groups(superclasses, superclass_of, n_classes: int) -> np.ndarray | None:
    """superclass_of as int64 indices into superclasses, one per class; None when either is None."""
    if superclasses is None or superclass_of is None:
        return None
    groups = indices(superclass_of, len(superclasses), "superclass_of")
    if len(groups) != n_classes:
        raise ValueError(f"superclass_of must give each of the {n_classes} classes a group, got {len(groups)}")
    return groups


def save_predictions(run_dir: Path, labels, preds, classes: list[str], grid=None, *, superclasses=None,
                     superclass_of=None) -> Path:
    """Write run_dir/predictions.npz atomically. `grid` indexes the images of the prediction grid figure (the
    report says "k/10 correct"); `superclasses` / `superclass_of` group the classes (CIFAR-100's 20)."""
    y, p, g = _check(labels, preds, classes, grid)
    groups = check_groups(superclasses, superclass_of, len(classes))
    small = np.int16 if len(classes) < 2**15 else np.int32  # class indices are small; keep the file small too
    arrays = {"labels": y.astype(small), "preds": p.astype(small), "classes": np.array(classes, dtype=str)}
    if g is not None:
        arrays["grid"] = g
    if groups is not None:
        arrays["superclasses"], arrays["superclass_of"] = np.array(superclasses, dtype=str), groups
    path = Path(run_dir) / PREDICTIONS
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(fh, **arrays)
    return path


def load_predictions(run_dir: Path) -> Predictions:
    """Read run_dir/predictions.npz; raises FileNotFoundError if absent and ValueError if it is unreadable."""
    path = Path(run_dir) / PREDICTIONS
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels, preds, classes = npz["labels"], npz["preds"], [str(c) for c in npz["classes"]]
            grid = npz["grid"] if "grid" in npz.files else None
            superclasses = [str(c) for c in npz["superclasses"]] if "superclasses" in npz.files else None
            superclass_of = npz["superclass_of"] if "superclass_of" in npz.files else None
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, missing array, foreign file: all mean "cannot use it"
        raise ValueError(f"{path.name} is unreadable ({type(exc).__name__}: {exc})") from None
    y, p, g = _check(labels, preds, classes, grid)
    try:
        groups = check_groups(superclasses, superclass_of, len(classes))
    except ValueError:
        superclasses, groups = None, None  # an optional extra: a bad one costs the grouping, not the report
    return Predictions(y, p, classes, g, superclasses if groups is not None else None, groups)
