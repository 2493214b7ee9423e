"""The small real MNIST sample shipped inside the package, for when the full files are absent."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.errors import VisionlaunchError

SAMPLE_FILE = "mnist_sample.npz"


def sample_resource():
    return resources.files("visionlaunch.datasets").joinpath("sample", SAMPLE_FILE)


def load_mnist_sample(split: str) -> ImageSet:
    resource = sample_resource()
    try:
        with resource.open("rb") as f, np.load(f) as z:
            images, labels = z[f"{split}_images"], z[f"{split}_labels"]
            n_train, n_test = len(z["train_labels"]), len(z["test_labels"])
    except (OSError, KeyError, ValueError) as exc:
        raise VisionlaunchError(
            f"the embedded MNIST sample {resource} is missing or unreadable ({exc}); the installation is "
            "incomplete. Reinstall visionlaunch, or rebuild the file with "
            "`python -m visionlaunch.datasets.make_sample --root <folder with mnist/raw>`.") from exc
    return ImageSet(
        images=torch.from_numpy(images).unsqueeze(1).contiguous(),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=[str(d) for d in range(10)],
        name="mnist_sample",
        source=(f"embedded MNIST sample ({n_train} train / {n_test} test images drawn, stratified by class, from "
                "the official MNIST files; see visionlaunch/datasets/sample/README.md)"),
    )
