"""From the data section of the config to train/val/test tensors (or, out of core, an indexed source of the training
split that decodes one sample when asked), normalisation constants and a note that says plainly which data the run
used; and the choice of loader backend (tensor, torch or ffcv) that feeds them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from visionlaunch.config import DataConfig
from visionlaunch.datasets.mixed_size import center_crop, eval_geometry
from visionlaunch.datasets import (DatasetNotFound, ImageSet, default_cache_dir, imagefolder, load_dataset,
                                   normalization_stats, resolve_data_root, train_val_split)
from visionlaunch.datasets.cifar import unofficial_note
from visionlaunch.datasets.imagefolder import class_names
from visionlaunch.datasets.load import open_source
from visionlaunch.datasets.loaders import SourceLoader, TensorLoader, TorchLoader
from visionlaunch.datasets.order import FULL_SHUFFLE
from visionlaunch.datasets.source import ArraySource, CenterCrop
from visionlaunch.datasets.split import class_coverage_warning, stratified_subset


@dataclass
class DataBundle:
    train: ImageSet  # or, out of core, an indexed source (datasets/source.py)
    val: ImageSet | None  # ... held out of it: a source too
    test: ImageSet  # always in memory (the reports draw from it)
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


def prepare_data(cfg: DataConfig, log=print, progress: bool = True, plan=None) -> DataBundle:
    """The run's data. `plan(train_source, test_bytes) -> bool`, when given, sees the training split as an indexed
    source (nothing decoded) and the test split's decoded size, and says whether the training split (and the
    validation split held out of it) stays out of core, decoded on demand; without it everything is in memory."""
    root = resolve_data_root(cfg.root)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    kwargs = dict(root=root, path=cfg.path, download=cfg.download, verify=cfg.verify, cache_dir=cache,
                  progress=progress)
    if cfg.image_size:
        kwargs.update(image_size=cfg.image_size, max_upscale=cfg.max_upscale)
    name, val_size = cfg.name, cfg.val_size
    try:
        train, test = _read_splits(name, kwargs, plan)
    except DatasetNotFound as exc:
        if cfg.fallback != "sample":
            raise
        log(f"NOTE: the full MNIST dataset was not found ({exc}) -- training on the small real MNIST sample "
            "embedded in the package instead. Results are NOT comparable to full-MNIST numbers.")
        name = "mnist_sample"
        train, test = _read_splits(name, kwargs, plan)
        if val_size >= 1 and val_size * 2 > len(train):
            # A count meant for the 60k set would swallow the sample: hold out the same 1/12 share instead.
            val_size = round(len(train) / 12)
            log(f"NOTE: data.val_size lowered to {val_size} for the {len(train)}-image sample")
    if cfg.class_names:  # display names for the class folders
        names = class_names(_beside(root, cfg.class_names), train.classes)
        train, test = (_named(ds, names) for ds in (train, test))
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
    cropped = ""
    if cfg.image_size:  # evaluation sees the centre crop; training crops at random in the batch pipeline
        side, size = eval_geometry(cfg.image_size, cfg.eval_image_size, cfg.eval_crop_ratio)
        test = center_crop(test, side, size)
        if val is not None:
            val = center_crop(val, side, size) if isinstance(val, ImageSet) else CenterCrop(val, side, size)
        cropped = f" (cropped to {cfg.image_size} px" + (f"; evaluated at {size} px: the centre {side} px resized"
                                                         if (side, size) != (cfg.image_size,) * 2 else "") + ")"
    note = (f"{name}: {len(train)} train, {len(val) if val is not None else 0} val (held out of train, seed "
            f"{cfg.split_seed}), {len(test)} test images of shape {tuple(train.shape)}{cropped}, {len(train.classes)} "
            f"classes; source: {train.source}" + ("; not the official files (md5), content checked"
                                                   if train.unofficial or test.unofficial else ""))
    return DataBundle(train=train, val=val, test=test, mean=mean, std=std, note=note, name=name,
                      val_size=val_size)


def _beside(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _named(ds, names: list[str]):
    if isinstance(ds, ImageSet):
        return replace(ds, classes=names)
    ds.classes = names
    return ds


def _read_splits(name: str, kwargs: dict, plan) -> tuple:
    """(train, test): train in memory, or as the indexed source that `plan` keeps out of core; test in memory."""
    if name == "imagefolder":  # a folder is walked once, for the plan's index, the cache's key and the reader
        location = imagefolder.locate(kwargs["root"], kwargs["path"])
        kwargs = {**kwargs, "scanned": imagefolder.scan(location, kwargs["progress"])}
    if plan is None:
        return load_dataset(name, "train", **kwargs), load_dataset(name, "test", **kwargs)
    # An index of the files, the layout checked as in memory; with the size of one image when all have one size.
    source = open_source(name, "train", estimate=True, **kwargs)
    if isinstance(source, ArraySource):  # the canonical sets, read whole anyway: their test split says its size
        test = load_dataset(name, "test", **kwargs)
        return (source if plan(source, test.images.nbytes) else source.data), test
    # An ImageFolder: the test split's size from the index too; the training split is decoded (or fails) first, as
    # in memory, before the test split is decoded and cached.
    if plan(source, source.split_bytes("test")):
        # every header checked now (one size for every image); photos of mixed sizes have no header check
        train = open_source(name, "train", **kwargs) if source.estimated else source
    else:
        train = load_dataset(name, "train", **kwargs)
    return train, load_dataset(name, "test", **kwargs)


def split_loader(kind: str, ds, batch_size: int, *, order=FULL_SHUFFLE, **kwargs):
    """`make_loader` over an ImageSet; over an indexed source (out of core), the torch backend's SourceLoader or the
    ffcv backend's loader in the epoch order `order`."""
    if isinstance(ds, ImageSet):
        return make_loader(kind, ds.images, ds.labels, batch_size, **kwargs)
    if kind == "ffcv":  # the split's .beton, read through the page cache in the same order
        return make_loader(kind, None, None, batch_size, order=order, **kwargs)
    for key in ("beton", "verify_beton", "augment", "channels_last"):
        kwargs.pop(key, None)
    return SourceLoader(ds, batch_size, order=order, **kwargs)


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
