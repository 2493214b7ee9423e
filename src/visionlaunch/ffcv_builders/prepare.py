"""Which `.beton` files a run uses, and making sure they exist and hold exactly the run's samples.

Files live in `data.ffcv_dir` (default: `ffcv/` inside the data cache), one per split, named after what was
selected: `mnist-train-val5000-seed0.beton`, `mnist-val-val5000-seed0.beton`, `mnist-test.beton`, with
`-sub<N>` for data.train_subset / data.test_subset (seeded samples) and `-jpeg<Q>` for JPEG encoding. A file that
exists is used only when its manifest matches it and the digest of the run's samples (see manifest.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from visionlaunch.config import DataConfig
from visionlaunch.datasets import default_cache_dir
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.ffcv_builders.manifest import check_beton, source_digest
from visionlaunch.ffcv_builders.writer import imageset_arrays, write_beton

SPLITS = ("train", "val", "test")


def beton_dir(cfg: DataConfig) -> Path:
    if cfg.ffcv_dir:
        return Path(cfg.ffcv_dir).expanduser()
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return cache / "ffcv"


def beton_name(dataset: str, split: str, cfg: DataConfig) -> str:
    parts = [dataset]
    if dataset == "imagefolder":  # several folders may be used: name the source
        parts.append(hashlib.sha256(os.path.realpath(str(cfg.path)).encode()).hexdigest()[:8])
    parts.append(split)
    if split in ("train", "val"):
        parts.append(f"val{cfg.val_size}-seed{cfg.split_seed}")
        if cfg.train_subset:  # a stratified sample drawn with split_seed (named in the part before)
            parts.append(f"sub{cfg.train_subset}")
    elif cfg.test_subset:
        parts.append(f"sub{cfg.test_subset}-seed{cfg.split_seed}")
    if cfg.image_size:
        parts.append(f"size{cfg.image_size}")
    if cfg.ffcv_encoding == "jpeg":
        parts.append(f"jpeg{cfg.ffcv_jpeg_quality}")
    return "-".join(parts) + ".beton"


def ensure_betons(splits: dict[str, ImageSet | None], dataset: str, cfg: DataConfig, *, overwrite: bool = False,
                  progress: bool = True, log=print) -> dict[str, Path]:
    """The beton of every non-empty split, written when missing (or when `overwrite`). An existing file that is
    truncated, foreign or stale stops with a VisionlaunchError unless `overwrite` is set."""
    folder = beton_dir(cfg)
    out = {}
    for split in SPLITS:
        ds = splits.get(split)
        if ds is None or len(ds) == 0:
            continue
        path = folder / beton_name(dataset, split, cfg)
        images, labels = imageset_arrays(ds)
        digest = source_digest(images, labels)
        if path.is_file() and not overwrite:
            check_beton(path, dataset=dataset, split=split, source_sha256=digest)
            log(f"ffcv: {path} is up to date ({len(ds)} images)")
        else:
            write_beton(images, labels, path, num_classes=len(ds.classes), dataset=dataset, split=split,
                        encoding=cfg.ffcv_encoding, jpeg_quality=cfg.ffcv_jpeg_quality,
                        num_workers=cfg.num_workers, progress=progress, image_size=cfg.image_size,
                        # the training split keeps its stored squares for FFCV's random-resized-crop decoder
                        max_resolution=max(ds.shape[1:]) if cfg.image_size and split == "train" else None)
            log(f"ffcv: wrote {path} ({len(ds)} images, {cfg.ffcv_encoding})")
        out[split] = path
    return out
