"""The small real MNIST sample shipped inside the package (for when the full files are absent), and the command
that builds it: a seeded, class-stratified subset of the official MNIST files.

    python -m visionlaunch.datasets.mnist_sample --root /path/with/mnist/raw [--out FILE]

The file is an .npz (np.savez_compressed) with train_images/train_labels/test_images/test_labels (uint8, 28x28),
train_index/test_index (positions in the official files, so every image can be traced back) and seed.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from visionlaunch.atomic import atomic_write
from visionlaunch.datasets import mnist
from visionlaunch.datasets.files import file_digest, resolve_data_root
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.datasets.split import stratified_indices
from visionlaunch.errors import VisionlaunchError

SAMPLE_FILE = "mnist_sample.npz"
N_TRAIN, N_TEST, SEED = 5000, 1000, 0


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
            "`python -m visionlaunch.datasets.mnist_sample --root <folder with mnist/raw>`.") from exc
    return ImageSet(
        images=torch.from_numpy(images).unsqueeze(1).contiguous(),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(mnist.CLASSES),
        name="mnist_sample",
        source=(f"embedded MNIST sample ({n_train} train / {n_test} test images drawn, stratified by class, from "
                "the official MNIST files; see visionlaunch/datasets/sample/README.md)"),
    )


def build_sample(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = SEED) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"seed": np.array(seed, dtype=np.int64)}
    for split, count in (("train", n_train), ("test", n_test)):
        # verify=True: the sample must come from the byte-exact official files.
        full = mnist.read(mnist.locate(root, split, download=False), split, verify=True)
        index = stratified_indices(full.labels, count, torch.Generator().manual_seed(seed))
        arrays[f"{split}_images"] = full.images[index, 0].numpy()
        arrays[f"{split}_labels"] = full.labels[index].numpy().astype(np.uint8)
        arrays[f"{split}_index"] = index.numpy().astype(np.int32)
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="data root holding mnist/raw or MNIST/raw (default: "
                        "$VISIONLAUNCH_DATA, else ./data)")
    parser.add_argument("--out", default=None, help="output .npz (default: the file inside the package)")
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    parser.add_argument("--n-test", type=int, default=N_TEST)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(str(sample_resource()))
    arrays = build_sample(resolve_data_root(args.root), args.n_train, args.n_test, args.seed)
    with atomic_write(out) as tmp, open(tmp, "wb") as f:  # a file object: numpy then adds no ".npz" suffix
        np.savez_compressed(f, **arrays)
    md5 = file_digest(out)
    for split in ("train", "test"):
        counts = np.bincount(arrays[f"{split}_labels"], minlength=10).tolist()
        print(f"{split}: {len(arrays[f'{split}_labels'])} images, per class {counts}")
    print(f"wrote {out} ({out.stat().st_size} bytes, md5 {md5})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
