"""The one in-memory form every reader returns: uint8 images, int64 labels, class names, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from visionlaunch.errors import VisionlaunchError


class DatasetNotFound(VisionlaunchError):
    """The dataset's files are absent (not corrupt), so a caller may fall back to another dataset."""


@dataclass(repr=False)
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W), contiguous, CPU
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]  # class names, index = label
    name: str  # "mnist", "mnist_sample", "cifar10", "cifar100", "imagefolder"
    source: str  # human-readable: where the images came from
    # Optional grouping of the classes (CIFAR-100's 20 coarse superclasses): names, and each class's group index.
    superclasses: list[str] | None = None
    superclass_of: list[int] | None = None
    # Source files that are not the official ones but passed the reader's content check: (path, md5, official md5).
    unofficial: tuple[tuple[str, str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        # Readers and the cache all build ImageSets; checking here catches a bad one where it is made.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"ImageSet.labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"ImageSet has {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"ImageSet labels must lie in 0..{len(self.classes) - 1} (one per class name)")
        self.images = self.images.contiguous()
        self.classes = list(self.classes)
        self.unofficial = tuple(tuple(u) for u in self.unofficial)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images at `index` (int64 positions or a bool mask), as a new ImageSet with the same classes."""
        return replace(self, images=self.images[index], labels=self.labels[index])

    def __repr__(self) -> str:
        return (f"ImageSet(name={self.name!r}, n={len(self)}, shape={self.shape}, classes={len(self.classes)}, "
                f"source={self.source!r})")
