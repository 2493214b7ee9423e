"""Check samples before any FFCV worker starts: an exception inside a DatasetWriter worker is printed and then
the writer waits forever, so every mistake must be caught here, in the calling process, with a clear message."""

from __future__ import annotations

import numpy as np

from visionlaunch.errors import VisionlaunchError


def validate_samples(images, labels, num_classes: int, what: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """Return (images, labels) as C-contiguous numpy arrays: uint8 (N, H, W, C) with C 1 or 3, int64 (N,) in
    0..num_classes-1. Anything else raises a VisionlaunchError naming what was wrong."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise VisionlaunchError(
            f"{what}: images must be uint8 (values 0..255), got {images.dtype}. Convert them first, e.g. "
            "(x * 255).round().clip(0, 255).astype(np.uint8) for floats on [0, 1].")
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise VisionlaunchError(
            f"{what}: images must be an (N, H, W, C) array with C = 1 (grayscale) or 3 (RGB), got shape "
            f"{images.shape}. A torch NCHW batch converts with images.permute(0, 2, 3, 1).")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise VisionlaunchError(f"{what}: there is nothing to write (images of shape {images.shape}).")
    if labels.ndim != 1 or len(labels) != len(images):
        raise VisionlaunchError(
            f"{what}: labels must be one integer per image ({len(images)}), got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise VisionlaunchError(f"{what}: labels must be integers, got {labels.dtype}.")
    if num_classes < 1:
        raise VisionlaunchError(f"{what}: num_classes must be at least 1, got {num_classes}.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise VisionlaunchError(
            f"{what}: labels must lie in 0..{num_classes - 1} (one per class), but sample {bad} has label "
            f"{int(labels[bad])} (range found: {low}..{high}). Fix the labels or the class list.")
    return np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)
