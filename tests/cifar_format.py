"""Write small CIFAR-10 / CIFAR-100 datasets in the exact canonical python format, for tests and end-to-end runs.

The canonical files were pickled by Python 2's cPickle: dicts whose keys and strings are Python 2 `str`
(so Python 3 sees b'data' with encoding="bytes" and 'data' with encoding="latin1", as torchvision reads them),
label lists of ints, and a uint8 numpy array pickled through numpy.core.multiarray._reconstruct. Python 3's pickle
cannot write Python 2 strings, so `_Py2Pickler` emits the protocol-2 opcodes directly.

Images are learnable: each class has its own mean colour and horizontal stripe frequency (unchanged by a
horizontal flip), plus per-pixel noise.

    python tests/cifar_format.py --root data --cifar100 5000 1000
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# CIFAR-100 superclasses and their five classes each (the dataset's published table), in coarse-label order.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_COARSE = list(CIFAR100_SUPERCLASSES)
CIFAR100_FINE = sorted(c for members in CIFAR100_SUPERCLASSES.values() for c in members)  # fine labels: alphabetical
FINE_TO_COARSE = [next(i for i, members in enumerate(CIFAR100_SUPERCLASSES.values()) if fine in members)
                  for fine in CIFAR100_FINE]


class Py2Str(bytes):
    """A Python 2 `str` (bytes written with the STRING opcodes)."""


class _Py2Pickler:
    """Protocol-2 pickle writer for the few types the CIFAR files contain, as Python 2 wrote them."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def dumps(self, obj) -> bytes:
        self.save(obj)
        self.out += b"."  # STOP
        return bytes(self.out)

    def save(self, obj) -> None:
        if obj is None:
            self.out += b"N"
        elif obj is True or obj is False:
            self.out += b"\x88" if obj else b"\x89"  # NEWTRUE / NEWFALSE
        elif isinstance(obj, (int, np.integer)):
            self._int(int(obj))
        elif isinstance(obj, (str, bytes)):
            self._str(obj.encode("latin1") if isinstance(obj, str) else bytes(obj))
        elif isinstance(obj, tuple):
            self._tuple(obj)
        elif isinstance(obj, list):
            self.out += b"]"  # EMPTY_LIST, then APPENDS in batches of 1000 like pickle itself
            for i in range(0, len(obj), 1000):
                self.out += b"("
                for item in obj[i:i + 1000]:
                    self.save(item)
                self.out += b"e"
        elif isinstance(obj, dict):
            self.out += b"}("  # EMPTY_DICT, MARK ... SETITEMS
            for key, value in obj.items():
                self.save(key)
                self.save(value)
            self.out += b"u"
        elif isinstance(obj, np.ndarray):
            self._array(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])  # BININT1
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)  # BININT2
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)  # BININT
        else:
            raise ValueError(f"integer {v} too large for this writer")

    def _str(self, b: bytes) -> None:
        if len(b) < 256:
            self.out += b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING
        else:
            self.out += b"T" + struct.pack("<I", len(b)) + b  # BINSTRING

    def _tuple(self, t: tuple) -> None:
        if len(t) == 0:
            self.out += b")"
            return
        if len(t) > 3:
            self.out += b"("
        for item in t:
            self.save(item)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(t), b"t")

    def _global(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def _array(self, a: np.ndarray) -> None:
        if a.dtype != np.uint8:
            raise TypeError("only uint8 arrays occur in CIFAR files")
        # ndarray.__reduce__ under Python 2 numpy: _reconstruct(ndarray, (0,), 'b'), then
        # __setstate__((1, shape, dtype, is_fortran, raw bytes)); dtype('u1', 0, 1) with its own state.
        self._global("numpy.core.multiarray", "_reconstruct")
        self._global("numpy", "ndarray")
        self.save((0,))
        self.save(Py2Str(b"b"))
        self.out += b"\x87R"  # TUPLE3, REDUCE
        self.out += b"("
        self.save(1)
        self.save(tuple(int(d) for d in a.shape))
        self._global("numpy", "dtype")
        self.save((Py2Str(b"u1"), 0, 1))
        self.out += b"R"
        self.save((3, Py2Str(b"|"), None, None, None, -1, -1, 0))
        self.out += b"b"  # BUILD (dtype state)
        self.save(False)
        self.save(Py2Str(np.ascontiguousarray(a).tobytes()))
        self.out += b"tb"  # TUPLE (from MARK), BUILD (array state)


def py2_pickle(obj) -> bytes:
    """Pickle `obj` as Python 2 would: every str and bytes becomes a Python 2 str."""
    return _Py2Pickler().dumps(obj)


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(py2_pickle(obj))
    tmp.replace(path)


def make_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 32, 32) uint8 images whose colour and stripes depend on the class."""
    class_rng = np.random.default_rng(1234 + num_classes)  # the same class look for every split and seed
    colours = class_rng.uniform(40, 215, size=(num_classes, 3))
    freqs = class_rng.integers(1, 6, size=num_classes)
    rows = np.arange(32)
    stripes = 30 * np.sin(2 * np.pi * freqs[:, None] * rows[None, :] / 32)  # (classes, 32)
    base = colours[labels][:, :, None, None] + stripes[labels][:, None, :, None]
    noisy = base + rng.normal(0, 25, size=(len(labels), 3, 32, 32))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)  # balanced, in random order like the originals


def _filenames(labels: np.ndarray, names: list[str], start: int) -> list[str]:
    return [f"{names[label]}_s_{start + i:06d}.png" for i, label in enumerate(labels)]


Written = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images (N, 3, 32, 32), labels (N,))


def write_cifar100(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> Written:
    """Write root/cifar-100-python/{train,test,meta}; return {split: (images (N,3,32,32), fine labels)}."""
    folder = Path(root) / "cifar-100-python"
    rng = np.random.default_rng(seed)
    written = {}
    for split, n, batch_label in (("train", n_train, "training batch 1 of 1"),
                                  ("test", n_test, "testing batch 1 of 1")):
        fine = _labels(n, 100, rng)
        images = make_images(fine, 100, rng)
        _write(folder / split, {
            "filenames": _filenames(fine, CIFAR100_FINE, 0 if split == "train" else n_train),
            "batch_label": batch_label,
            "fine_labels": fine.tolist(),
            "coarse_labels": [FINE_TO_COARSE[f] for f in fine],
            "data": images.reshape(n, 3072),
        })
        written[split] = (images, fine.astype(np.int64))
    _write(folder / "meta", {"fine_label_names": CIFAR100_FINE, "coarse_label_names": CIFAR100_COARSE})
    return written


def write_cifar10(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> Written:
    """Write root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; return {split: (images, labels)}."""
    folder = Path(root) / "cifar-10-batches-py"
    rng = np.random.default_rng(seed)
    written = {}
    train_labels = _labels(n_train, 10, rng)
    train_images = make_images(train_labels, 10, rng)
    bounds = np.linspace(0, n_train, 6).astype(int)  # five training batches, as in the original
    for b in range(5):
        lo, hi = bounds[b], bounds[b + 1]
        _write(folder / f"data_batch_{b + 1}", {
            "batch_label": f"training batch {b + 1} of 5",
            "labels": train_labels[lo:hi].tolist(),
            "data": train_images[lo:hi].reshape(hi - lo, 3072),
            "filenames": _filenames(train_labels[lo:hi], CIFAR10_CLASSES, lo),
        })
    written["train"] = (train_images, train_labels.astype(np.int64))
    test_labels = _labels(n_test, 10, rng)
    test_images = make_images(test_labels, 10, rng)
    _write(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1",
        "labels": test_labels.tolist(),
        "data": test_images.reshape(n_test, 3072),
        "filenames": _filenames(test_labels, CIFAR10_CLASSES, 0),
    })
    written["test"] = (test_images, test_labels.astype(np.int64))
    _write(folder / "batches.meta", {"num_cases_per_batch": int(bounds[1] - bounds[0]),
                                     "label_names": CIFAR10_CLASSES, "num_vis": 3072})
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="write small CIFAR-format datasets (read them with data.verify=false)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--cifar100", type=int, nargs=2, metavar=("N_TRAIN", "N_TEST"))
    parser.add_argument("--cifar10", type=int, nargs=2, metavar=("N_TRAIN", "N_TEST"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cifar100:
        write_cifar100(args.root, *args.cifar100, seed=args.seed)
    if args.cifar10:
        write_cifar10(args.root, *args.cifar10, seed=args.seed)


if __name__ == "__main__":
    main()
