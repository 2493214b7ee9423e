"""From the data section of the config to train/val/test tensors, normalisation constants and a note that
says plainly which data the run used; and the choice of loader backend (tensor, torch or ffcv) that feeds them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionlaunch.config import DataConfig
from visionlaunch.datasets.mixed_size import center_crop
from visionlaunch.datasets import (DatasetNotFound, ImageSet, default_cache_dir, load_dataset, normalization_stats,
                                   resolve_data_root, train_val_split)
from visionlaunch.datasets.cifar import unofficial_note
from visionlaunch.datasets.loaders import TensorLoader, TorchLoader
from visionlaunch.datasets.split import class_coverage_warning, stratified_subset


@dataclass
class DataBundle:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    note: str
    name: str  # the dataset actually used (differs from the config after a fallback)
    val_size: int | float  # the data.val_size actually used (lower than the config's on the fallback sample)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def in_shape(self) -> tuple[int, int, int]:
        # The test set's: with data.image_size the training images are larger stored squares that the
        # random-resized crop brings to the model's input size.
        return self.test.shape


def prepare_data(cfg: DataConfig, log=print, progress: bool = True) -> DataBundle:
    root = resolve_data_root(cfg.root)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    kwargs = dict(root=root, path=cfg.path, download=cfg.download, verify=cfg.verify, cache_dir=cache,
                  progress=progress)
    if cfg.image_size:
        kwargs.update(image_size=cfg.image_size, max_upscale=cfg.max_upscale)
    name, val_size = cfg.name, cfg.val_size
    try:
        train = load_dataset(name, "train", **kwargs)
    except DatasetNotFound as exc:
        if cfg.fallback != "sample":
            raise
        log(f"NOTE: the full MNIST dataset was not found ({exc}) -- training on the small real MNIST sample "
            "embedded in the package instead. Results are NOT comparable to full-MNIST numbers.")
        name = "mnist_sample"
        train = load_dataset(name, "train", **kwargs)
        if val_size >= 1 and val_size * 2 > len(train):
            # A count meant for the 60k set would swallow the sample: hold out the same 1/12 share instead.
            val_size = round(len(train) / 12)
            log(f"NOTE: data.val_size lowered to {val_size} for the {len(train)}-image sample")
    test = load_dataset(name, "test", **kwargs)
    if note := unofficial_note([train, test]):
        log(note)
    # Constants from the full training set, before any subset, so a quick run normalises like a full one.
    mean, std = normalization_stats(train, log)
    train = stratified_subset(train, cfg.train_subset, cfg.split_seed, "train")
    test = stratified_subset(test, cfg.test_subset, cfg.split_seed, "test")
    val = None
    if val_size:
        train, val = train_val_split(train, val_size, cfg.split_seed)
    for ds, what in ((train, "training"), (val, "validation"), (test, "test")):
        warning = class_coverage_warning(ds, what) if ds is not None else None
        if warning:
            log(warning)
    if cfg.image_size:  # evaluation sees the centre crop; training crops at random in the batch pipeline
        test = center_crop(test, cfg.image_size)
        val = center_crop(val, cfg.image_size) if val is not None else None
    note = (f"{name}: {len(train)} train, {len(val) if val is not None else 0} val (held out of train, seed "
            f"{cfg.split_seed}), {len(test)} test images of shape {tuple(train.shape)}"
            f"{f' (cropped to {cfg.image_size} px)' if cfg.image_size else ''}, {len(train.classes)} "
            f"classes; source: {train.source}" + ("; not the official files (md5), content checked"
                                                   if train.unofficial or test.unofficial else ""))
    return DataBundle(train=train, val=val, test=test, mean=mean, std=std, note=note, name=name,
                      val_size=val_size)


def make_loader(kind: str, images, labels, batch_size: int, *, beton=None, verify_beton: bool = True, augment=None,
                channels_last: bool = False, **kwargs):
    """A loader backend by name, over uint8 images and int64 labels. `max_steps` is the epoch's step budget.
    `beton` (the split's .beton file; `verify_beton=False` when the caller has just checked it against its
    manifest), `augment` (an AugmentConfig) and `channels_last` are for the ffcv backend, which augments in its
    own pipeline; the others ignore them. `resized_crop` (a ResizedCrop, training with data.image_size) is made
    by the torch and ffcv loaders, and by the batch pipeline for tensor."""
    if kind == "tensor":
        kwargs.pop("num_workers", None)
        kwargs.pop("resized_crop", None)
        return TensorLoader(images, labels, batch_size, **kwargs)
    if kind == "torch":
        return TorchLoader(images, labels, batch_size, **kwargs)
    if kind == "ffcv":
        from visionlaunch.ffcv_builders.loader import FfcvLoader
        aug = {} if augment is None else dict(crop_padding=augment.crop_padding, flip=augment.flip,
                                               cutout=augment.cutout)
        if not kwargs.get("train"):
            kwargs.pop("resized_crop", None)
        return FfcvLoader(beton, batch_size, channels_last=channels_last, verify=verify_beton, **aug, **kwargs)
    raise ValueError(f"unknown loader {kind!r}")
