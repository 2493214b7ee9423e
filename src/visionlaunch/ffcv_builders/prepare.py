"""Which `.beton` files a run uses, and making sure they exist and hold exactly the run's samples.

Files live in `data.ffcv_dir` (default: `ffcv/` inside the data cache), one per split, named after what was
selected: `mnist-train-val5000-seed0.beton`, `mnist-val-val5000-seed0.beton`, `mnist-test.beton`, with
`-sub<N>` for data.train_subset / data.test_subset (seeded samples), `-jpeg<Q>` for JPEG encoding and `-side<M>`
for a training split of photos stored at their own aspect ratio. A file that exists is used only when its manifest
matches it and the digest of the run's samples (see manifest.py).

A split held in memory (an ImageSet) is written from its tensor. A split read out of core (an indexed source) is
written streaming (stream.py); the training split of an ImageFolder with data.image_size then keeps each photo's
aspect ratio, its longer side at most data.ffcv_max_resolution px, so that FFCV's random-resized crop samples the
whole photo.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

from visionlaunch.config import DataConfig
from visionlaunch.datasets import default_cache_dir
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.ffcv_builders.manifest import check_beton, source_digest
from visionlaunch.ffcv_builders.photos import default_max_side
from visionlaunch.ffcv_builders.stream import FolderIndex, array_samples, is_folder_backed, view_of, write_source
from visionlaunch.ffcv_builders.writer import imageset_arrays, write_beton

SPLITS = ("train", "val", "test")


def beton_dir(cfg: DataConfig) -> Path:
    if cfg.ffcv_dir:
        return Path(cfg.ffcv_dir).expanduser()
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return cache / "ffcv"


def beton_name(dataset: str, split: str, cfg: DataConfig, max_side: int | None = None) -> str:
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
        if split != "train" and (cfg.eval_image_size or cfg.eval_crop_ratio != 0.875):  # another evaluation view
            parts.append(f"eval{cfg.eval_image_size or cfg.image_size}r{cfg.eval_crop_ratio:g}")
    if max_side:
        parts.append(f"side{max_side}")
    if cfg.ffcv_encoding == "jpeg":
        parts.append(f"jpeg{cfg.ffcv_jpeg_quality}")
    return "-".join(parts) + ".beton"


def photo_side(ds, split: str, cfg: DataConfig) -> int | None:
    """The longer side of the stored photos when the split is written at its own aspect ratio (the training split
    of a folder read out of core, with data.image_size), else None."""
    if split != "train" or not cfg.image_size or isinstance(ds, ImageSet) or not is_folder_backed(ds):
        return None
    return cfg.ffcv_max_resolution or default_max_side(cfg.image_size)


def ensure_betons(splits: dict, dataset: str, cfg: DataConfig, *, overwrite: bool = False,
                  progress: bool = True, log=print) -> dict[str, Path]:
    """The beton of every non-empty split (an ImageSet, or an indexed source read out of core), written when
    missing (or when `overwrite`). An existing file that is truncated, foreign or stale stops with a
    VisionlaunchError unless `overwrite` is set."""
    folder = beton_dir(cfg)
    out = {}
    for split in SPLITS:
        ds = splits.get(split)
        if ds is None or len(ds) == 0:
            continue
        side = photo_side(ds, split, cfg)
        path = folder / beton_name(dataset, split, cfg, side)
        common = dict(dataset=dataset, split=split, encoding=cfg.ffcv_encoding, jpeg_quality=cfg.ffcv_jpeg_quality,
                      num_workers=cfg.num_workers, progress=progress, image_size=cfg.image_size, log=log)
        if isinstance(ds, ImageSet) or not is_folder_backed(ds):  # in memory (or an array-backed source)
            images, labels = imageset_arrays(ds) if isinstance(ds, ImageSet) else array_samples(ds)
            digest, explain = source_digest(images, labels), None
            # the training split keeps its stored squares for FFCV's random-resized-crop decoder
            write = partial(write_beton, images, labels, path, num_classes=len(ds.classes), **common,
                            max_resolution=max(images.shape[1:3]) if cfg.image_size and split == "train" else None)
        else:  # streamed from the files, one sample per writer worker at a time
            index = FolderIndex(ds, view_of(ds, side))
            digest, explain = index.digest(), index.describe_change
            write = partial(write_source, ds, path, **common, max_side=side, max_upscale=cfg.max_upscale, index=index)
        if path.is_file() and not overwrite:
            check_beton(path, dataset=dataset, split=split, source_sha256=digest, explain=explain)
            log(f"ffcv: {path} is up to date ({len(ds)} images)")
        else:
            write()
            log(f"ffcv: wrote {path} ({len(ds)} images, {cfg.ffcv_encoding}"
                f"{f', photos at their aspect ratio up to {side} px' if side else ''})")
        out[split] = path
    return out
