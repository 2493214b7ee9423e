"""Build the embedded MNIST sample: a seeded, class-stratified subset of the official MNIST files.

    python -m visionlaunch.datasets.make_sample --root /path/with/mnist/raw [--out FILE]

Writes an .npz (np.savez_compressed) with train_images/train_labels/test_images/test_labels (uint8, 28x28),
train_index/test_index (positions in the official files, so every image can be traced back) and seed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from visionlaunch.atomic import atomic_write
from visionlaunch.datasets.load import load_dataset
from visionlaunch.datasets.paths import resolve_data_root
from visionlaunch.datasets.embedded_sample import sample_resource
from visionlaunch.datasets.split import stratified_indices

N_TRAIN, N_TEST, SEED = 5000, 1000, 0


def build_sample(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = SEED) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"seed": np.array(seed, dtype=np.int64)}
    for split, count in (("train", n_train), ("test", n_test)):
        # verify=True: the sample must come from the byte-exact official files.
        full = load_dataset("mnist", split, root=root, verify=True, cache_dir=None, progress=False)
        index = stratified_indices(full.labels, count, torch.Generator().manual_seed(seed))
        arrays[f"{split}_images"] = full.images[index, 0].numpy()
        arrays[f"{split}_labels"] = full.labels[index].numpy().astype(np.uint8)
        arrays[f"{split}_index"] = index.numpy().astype(np.int32)
    return arrays


def write_sample(arrays: dict[str, np.ndarray], out: Path) -> None:
    with atomic_write(out) as tmp, open(tmp, "wb") as f:  # a file object: numpy then adds no ".npz" suffix
        np.savez_compressed(f, **arrays)


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
    write_sample(arrays, out)
    md5 = hashlib.md5(out.read_bytes(), usedforsecurity=False).hexdigest()
    for split in ("train", "test"):
        counts = np.bincount(arrays[f"{split}_labels"], minlength=10).tolist()
        print(f"{split}: {len(arrays[f'{split}_labels'])} images, per class {counts}")
    print(f"wrote {out} ({out.stat().st_size} bytes, md5 {md5})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
