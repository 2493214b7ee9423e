"""CIFAR-10 and CIFAR-100 from the canonical python pickles (cifar-10-batches-py/, cifar-100-python/)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionlaunch.datasets.download import download_with_torchvision
from visionlaunch.datasets.fileio import md5_file
from visionlaunch.datasets.imageset import DatasetNotFound, ImageSet
from visionlaunch.errors import VisionlaunchError

try:  # numpy >= 2 moved the array reconstructor; the pickles name the old module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


@dataclass(frozen=True)
class CifarFormat:
    title: str
    folder: str
    train: tuple[tuple[str, str], ...]  # (file name, md5)
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    label_key: str
    names_key: str
    num_classes: int
    torchvision_class: str


# The md5 sums are torchvision's (CIFAR10/CIFAR100.train_list, test_list, meta); a test checks they still agree.
FORMATS = {
    "cifar10": CifarFormat(
        title="CIFAR-10", folder="cifar-10-batches-py",
        train=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
               ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
               ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
               ("data_batch_4", "634d18415352ddfa80567beed471001a"),
               ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
        test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        label_key="labels", names_key="label_names", num_classes=10, torchvision_class="CIFAR10"),
    "cifar100": CifarFormat(
        title="CIFAR-100", folder="cifar-100-python",
        train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta=("meta", "7973b15100ade9c7d40fb424638fde48"),
        label_key="fine_labels", names_key="fine_label_names", num_classes=100, torchvision_class="CIFAR100"),
}

# The only globals a CIFAR pickle needs. Anything else means the file is not one, and refusing it also keeps
# unpickling from running arbitrary code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 protocol-2 pickles write bytes
            import codecs

            return codecs.encode
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle") from None


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def unpickle(path: Path) -> dict[str, object]:
    """Load a CIFAR pickle written by Python 2 (str keys) or 3 (bytes or str keys), keys as str."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as exc:
        raise VisionlaunchError(
            f"{path} could not be read as a CIFAR python pickle ({type(exc).__name__}: {exc}); it is probably "
            "truncated or damaged. Delete the folder and download or copy it again.") from exc
    if not isinstance(obj, dict):
        raise VisionlaunchError(f"{path} holds a {type(obj).__name__}, expected the dict of a CIFAR pickle. "
                                "Replace it with the canonical file.")
    return {_text(k): v for k, v in obj.items()}


def _split_files(fmt: CifarFormat, split: str) -> tuple[tuple[str, str], ...]:
    return (fmt.train if split == "train" else fmt.test) + (fmt.meta,)


def locate(name: str, root: Path, split: str, download: bool) -> list[Path]:
    """The batch files of `split` plus the meta file, downloading them first when asked and absent."""
    fmt = FORMATS[name]
    folder = root / fmt.folder

    def missing() -> list[str]:
        return [f for f, _ in _split_files(fmt, split) if not (folder / f).is_file()]

    if missing() and download:
        from torchvision import datasets as tv

        cls = getattr(tv, fmt.torchvision_class)
        download_with_torchvision(lambda: cls(str(root), train=split == "train", download=True),
                                  fmt.title, root, folder)
    if absent := missing():
        raise DatasetNotFound(
            f"{fmt.title} {split} files not found: {', '.join(absent)} missing from {folder}. Put the extracted "
            f"canonical python version ({fmt.folder}/ from the official tarball) under {root}, point data.root "
            "(or $VISIONLAUNCH_DATA) at the folder that holds it, or set data.download=true on a machine with "
            "network access.")
    return [folder / f for f, _ in _split_files(fmt, split)]


def _check_md5(path: Path, expected: str, title: str) -> None:
    actual = md5_file(path)
    if actual != expected:
        raise VisionlaunchError(
            f"{path} has md5 {actual}, but the official {title} file has md5 {expected}. The file is damaged or "
            "is not the official one: delete the folder and download it again, or set data.verify=false to read "
            "files you built yourself in the same format.")


def _class_names(path: Path, fmt: CifarFormat) -> list[str]:
    meta = unpickle(path)
    names = meta.get(fmt.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != fmt.num_classes:
        if names is None:
            found = "no such key"
        else:
            found = f"{len(names)}" if isinstance(names, (list, tuple)) else f"a {type(names).__name__}"
        raise VisionlaunchError(
            f"{path}: expected key {fmt.names_key!r} with {fmt.num_classes} class names, found {found} "
            f"(keys: {sorted(meta)}). Replace it with the canonical {fmt.title} meta file.")
    return [_text(n) for n in names]


def _read_batch(path: Path, fmt: CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle(path)
    data, labels = batch.get("data"), batch.get(fmt.label_key)
    if data is None or labels is None:
        raise VisionlaunchError(
            f"{path}: expected keys 'data' and {fmt.label_key!r} of a {fmt.title} batch, found {sorted(batch)}. "
            f"Replace it with the canonical {fmt.title} file.")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise VisionlaunchError(
            f"{path}: 'data' is a {desc}, expected a uint8 array of shape (N, 3072) (32x32 RGB, channel-major). "
            f"Replace it with the canonical {fmt.title} file.")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise VisionlaunchError(
            f"{path}: {fmt.label_key!r} must be {len(data)} integer labels (one per image), found "
            f"{labels.shape} of {labels.dtype}. Replace it with the canonical {fmt.title} file.")
    if len(labels) and (labels.min() < 0 or labels.max() >= fmt.num_classes):
        bad = int(np.argmax((labels < 0) | (labels >= fmt.num_classes)))
        raise VisionlaunchError(
            f"{path}: label {int(labels[bad])} at position {bad} is outside 0..{fmt.num_classes - 1}. "
            f"Replace it with the canonical {fmt.title} file.")
    return data, labels.astype(np.int64)


def read(name: str, files: list[Path], split: str, verify: bool = True) -> ImageSet:
    fmt = FORMATS[name]
    if verify:
        for path, (_, md5) in zip(files, _split_files(fmt, split)):
            _check_md5(path, md5, fmt.title)
    *batch_paths, meta_path = files
    classes = _class_names(meta_path, fmt)
    batches = [_read_batch(p, fmt) for p in batch_paths]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    return ImageSet(
        images=torch.from_numpy(data.reshape(-1, 3, 32, 32)),  # rows are R, G, B planes: already CHW
        labels=torch.from_numpy(labels),
        classes=classes,
        name=name,
        source=f"{fmt.title} python pickles {', '.join(p.name for p in files)} in {files[0].parent}",
    )
