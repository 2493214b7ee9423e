"""CIFAR-10/100 readers against files written in the exact canonical format by tests/cifar_format.py."""

import pickle

import numpy as np
import pytest
import torch

from tests.cifar_format import CIFAR10_CLASSES, CIFAR100_FINE, py2_pickle, write_cifar10, write_cifar100
from visionlaunch.datasets import DatasetNotFound, load_dataset
from visionlaunch.datasets.cifar import FORMATS
from visionlaunch.errors import VisionlaunchError


def _load(name, split, root, **kw):
    kw.setdefault("verify", False)
    return load_dataset(name, split, root=root, cache_dir=None, progress=False, **kw)


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100")
    return root, write_cifar100(root, n_train=500, n_test=200, seed=3)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    return root, write_cifar10(root, n_train=503, n_test=100, seed=4)  # uneven: batches of 100 and 103


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_round_trip(cifar100, split):
    root, written = cifar100
    data = _load("cifar100", split, root)
    images, labels = written[split]
    assert data.shape == (3, 32, 32) and data.images.dtype == torch.uint8 and data.images.is_contiguous()
    assert np.array_equal(data.images.numpy(), images) and np.array_equal(data.labels.numpy(), labels)
    assert data.classes == CIFAR100_FINE and len(data.classes) == 100
    assert data.name == "cifar100" and "cifar-100-python" in data.source


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_round_trip(cifar10, split):
    root, written = cifar10
    data = _load("cifar10", split, root)
    images, labels = written[split]
    assert np.array_equal(data.images.numpy(), images) and np.array_equal(data.labels.numpy(), labels)
    assert data.classes == CIFAR10_CLASSES and data.name == "cifar10"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_reads_the_same_arrays(cifar10, cifar100, name, monkeypatch):
    """torchvision's own reader (checksums patched off) sees exactly what ours does: the format is canonical."""
    import torchvision.datasets
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    root = (cifar10 if name == "cifar10" else cifar100)[0]
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    for split in ("train", "test"):
        theirs = cls(str(root), train=split == "train", download=False)
        ours = _load(name, split, root)
        assert np.array_equal(theirs.data, ours.images.permute(0, 2, 3, 1).numpy())  # theirs is NHWC
        assert list(theirs.targets) == ours.labels.tolist()
        assert theirs.classes == ours.classes


def test_generated_files_have_the_canonical_keys(cifar100, cifar10):
    root, _ = cifar100
    with open(root / "cifar-100-python" / "train", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # as the CIFAR page's python 3 recipe reads them
    assert set(batch) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (500, 3072)
    assert batch[b"batch_label"] == b"training batch 1 of 1" and batch[b"filenames"][0].endswith(b".png")
    with open(root / "cifar-100-python" / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert set(meta) == {b"fine_label_names", b"coarse_label_names"} and len(meta[b"coarse_label_names"]) == 20
    root, _ = cifar10
    with open(root / "cifar-10-batches-py" / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert set(meta) == {b"num_cases_per_batch", b"label_names", b"num_vis"} and meta[b"num_vis"] == 3072
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        assert set(pickle.load(f, encoding="bytes")) == {b"data", b"labels", b"filenames", b"batch_label"}


def test_generated_images_depend_on_the_class(cifar100):
    _, written = cifar100
    images, labels = written["train"]
    means = np.stack([images[labels == c].mean(axis=(0, 2, 3)) for c in range(100)])
    # Nearest class mean colour alone classifies most images: the data is learnable.
    per_image = images.mean(axis=(2, 3))
    nearest = np.argmin(((per_image[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.9


def test_md5s_are_torchvisions():
    import torchvision.datasets

    for name, cls in (("cifar10", torchvision.datasets.CIFAR10), ("cifar100", torchvision.datasets.CIFAR100)):
        fmt = FORMATS[name]
        assert [list(x) for x in fmt.train] == cls.train_list and [list(x) for x in fmt.test] == cls.test_list
        assert fmt.meta == (cls.meta["filename"], cls.meta["md5"]) and fmt.names_key == cls.meta["key"]
        assert fmt.folder == cls.base_folder


def test_verify_rejects_files_that_are_not_the_official_ones(cifar100):
    root, _ = cifar100
    with pytest.raises(VisionlaunchError) as err:
        _load("cifar100", "test", root, verify=True)
    msg = str(err.value)
    assert "cifar-100-python" in msg and "f0ef6b0ae62326f3e7ffdfab6717acfc" in msg and "data.verify=false" in msg


@pytest.mark.parametrize("name, folder, missing", [("cifar100", "cifar-100-python", "meta"),
                                                   ("cifar10", "cifar-10-batches-py", "data_batch_3")])
def test_missing_files_raise_dataset_not_found(tmp_path, name, folder, missing):
    with pytest.raises(DatasetNotFound) as err:
        _load(name, "train", tmp_path)
    assert str(tmp_path / folder) in str(err.value) and "data.download" in str(err.value)
    (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path, 50, 10)
    (tmp_path / folder / missing).unlink()
    with pytest.raises(DatasetNotFound, match=f"{missing} missing"):
        _load(name, "train", tmp_path)


def _damage(root, obj=None, raw=None):
    path = root / "cifar-100-python" / "test"
    path.write_bytes(raw if raw is not None else py2_pickle(obj))
    return path


@pytest.mark.parametrize("batch, expected", [
    ({"data": np.zeros((4, 3072), np.uint8)}, "expected keys 'data' and 'fine_labels'"),
    ({"data": np.zeros((4, 1024), np.uint8), "fine_labels": [0] * 4}, r"expected a uint8 array of shape \(N, 3072\)"),
    ({"data": np.zeros((4, 3072), np.uint8), "fine_labels": [0] * 3}, "must be 4 integer labels"),
    ({"data": np.zeros((4, 3072), np.uint8), "fine_labels": [0, 1, 100, 2]},
     "label 100 at position 2 of 'fine_labels' is outside 0..99"),
])
def test_structure_is_checked_without_verify(tmp_path, batch, expected):
    write_cifar100(tmp_path, 20, 4)
    path = _damage(tmp_path, batch)
    with pytest.raises(VisionlaunchError, match=expected) as err:
        _load("cifar100", "test", tmp_path)
    assert str(path) in str(err.value)


def test_truncated_or_foreign_pickles_are_refused(tmp_path):
    write_cifar100(tmp_path, 20, 4)
    good = (tmp_path / "cifar-100-python" / "test").read_bytes()
    path = _damage(tmp_path, raw=good[: len(good) // 2])
    with pytest.raises(VisionlaunchError, match="could not be read as a CIFAR python pickle") as err:
        _load("cifar100", "test", tmp_path)
    assert str(path) in str(err.value)
    # A pickle that would run code is refused before anything runs.
    evil = b"\x80\x02cos\nsystem\nU\x04trueq\x00\x85R."
    _damage(tmp_path, raw=evil)
    with pytest.raises(VisionlaunchError, match="unexpected object os.system"):
        _load("cifar100", "test", tmp_path)


def test_wrong_number_of_class_names(tmp_path):
    write_cifar100(tmp_path, 20, 4)
    (tmp_path / "cifar-100-python" / "meta").write_bytes(py2_pickle({"fine_label_names": ["a", "b"]}))
    with pytest.raises(VisionlaunchError, match="expected key 'fine_label_names' with 100 class names, found 2"):
        _load("cifar100", "test", tmp_path)


def test_python3_repickled_files_are_read(tmp_path):
    # People often re-save CIFAR with Python 3 (bytes or str keys); the reader accepts both.
    written = write_cifar100(tmp_path, 20, 6)
    folder = tmp_path / "cifar-100-python"
    for fname, encoding in (("test", "bytes"), ("meta", "latin1")):
        with open(folder / fname, "rb") as f:
            obj = pickle.load(f, encoding=encoding)
        (folder / fname).write_bytes(pickle.dumps(obj, protocol=2))
    data = _load("cifar100", "test", tmp_path)
    assert np.array_equal(data.images.numpy(), written["test"][0]) and data.classes == CIFAR100_FINE


def test_failed_download_is_dataset_not_found(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetNotFound, match="no network access") as err:
        _load("cifar100", "train", tmp_path, download=True)
    assert str(tmp_path / "cifar-100-python") in str(err.value)


def test_download_then_read(tmp_path, monkeypatch):
    import torchvision.datasets

    def fake_download(root, train, download):
        assert download is True
        write_cifar10(root, 10, 10)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    assert len(_load("cifar10", "test", tmp_path, download=True)) == 10


def test_cifar_is_cached(cifar100, tmp_path):
    root, written = cifar100
    cache = tmp_path / "cache"
    for _ in range(2):
        data = load_dataset("cifar100", "train", root=root, verify=False, cache_dir=cache, progress=False)
        assert np.array_equal(data.images.numpy(), written["train"][0])
    assert len(list(cache.glob("cifar100-train-*.pt"))) == 1
