"""MNIST reader: the real official files, and every way the files can be absent or damaged."""

import gzip
import shutil
import urllib.error

import numpy as np
import pytest
import torch

from visionlaunch.datasets import DatasetNotFound, load_dataset
from visionlaunch.datasets.mnist import MD5
from visionlaunch.errors import VisionlaunchError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # SOURCES.md
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load(root, split="test", **kw):
    kw.setdefault("cache_dir", None)
    return load_dataset("mnist", split, root=root, progress=False, **kw)


def _copy_test_split(shared_data, folder, gunzip=False):
    """The official test files copied into `folder`, gzipped as shipped or uncompressed."""
    folder.mkdir(parents=True, exist_ok=True)
    for base in TEST_FILES:
        src = shared_data / "mnist" / "raw" / f"{base}.gz"
        if gunzip:
            (folder / base).write_bytes(gzip.decompress(src.read_bytes()))
        else:
            shutil.copy(src, folder / f"{base}.gz")
    return folder


def test_real_mnist_train_and_test(shared_data):
    train = _load(shared_data, "train")
    assert len(train) == 60000 and train.shape == (1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous()
    assert train.labels.bincount().tolist() == TRAIN_COUNTS
    assert train.images.float().mean().item() / 255 == pytest.approx(0.1307, abs=5e-4)
    assert train.classes == [str(d) for d in range(10)] and train.name == "mnist"
    assert "train-images-idx3-ubyte.gz" in train.source and str(shared_data) in train.source

    test = _load(shared_data, "test")
    assert len(test) == 10000 and test.labels.bincount().tolist() == TEST_COUNTS
    # Official first test digits, a cheap guard against any mix-up of files or byte order.
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_torchvision_layout_with_uncompressed_files(shared_data, tmp_path):
    _copy_test_split(shared_data, tmp_path / "MNIST" / "raw", gunzip=True)
    plain = _load(tmp_path)
    official = _load(shared_data)
    assert torch.equal(plain.images, official.images) and torch.equal(plain.labels, official.labels)
    assert "MNIST/raw" in plain.source


def test_missing_files_raise_dataset_not_found(shared_data, tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        _load(tmp_path, "train")
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and str(tmp_path / "mnist" / "raw") in msg
    assert "data.download" in msg
    # Half a split is still absent, and absent (not corrupt) is what lets the caller fall back.
    folder = _copy_test_split(shared_data, tmp_path / "mnist" / "raw")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFound, match="t10k-labels-idx1-ubyte"):
        _load(tmp_path)


def test_truncated_idx_file_is_named(shared_data, tmp_path):
    folder = _copy_test_split(shared_data, tmp_path / "mnist" / "raw", gunzip=True)
    images = folder / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1000])
    with pytest.raises(VisionlaunchError) as err:
        _load(tmp_path)
    msg = str(err.value)
    assert str(images) in msg and "truncated" in msg and "10000 images" in msg and "7840016 bytes" in msg
    assert not isinstance(err.value, DatasetNotFound)


def test_truncated_gzip_file(shared_data, tmp_path):
    folder = _copy_test_split(shared_data, tmp_path / "mnist" / "raw")
    images = folder / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:500_000])
    with pytest.raises(VisionlaunchError, match="md5"):  # verify catches it first, by checksum
        _load(tmp_path)
    with pytest.raises(VisionlaunchError) as err:
        _load(tmp_path, verify=False)
    assert str(images) in str(err.value) and "not a complete gzip file" in str(err.value)


def test_wrong_md5(shared_data, tmp_path):
    folder = _copy_test_split(shared_data, tmp_path / "mnist" / "raw")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    # Same content, different compression: a valid file that is not byte-identical to the official one.
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes()), compresslevel=1))
    with pytest.raises(VisionlaunchError) as err:
        _load(tmp_path)
    msg = str(err.value)
    assert str(labels) in msg and MD5["t10k-labels-idx1-ubyte.gz"] in msg and "data.verify=false" in msg
    assert torch.equal(_load(tmp_path, verify=False).labels, _load(shared_data).labels)


def test_swapped_files_fail_on_magic_number(shared_data, tmp_path):
    folder = _copy_test_split(shared_data, tmp_path / "mnist" / "raw", gunzip=True)
    images, labels = folder / TEST_FILES[0], folder / TEST_FILES[1]
    data = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(data)
    with pytest.raises(VisionlaunchError, match="magic number is 2049, expected 2051"):
        _load(tmp_path)


def test_label_out_of_range_and_count_mismatch(shared_data, tmp_path):
    folder = _copy_test_split(shared_data, tmp_path / "mnist" / "raw", gunzip=True)
    labels = folder / TEST_FILES[1]
    original = labels.read_bytes()
    data = bytearray(original)
    data[8 + 17] = 10
    labels.write_bytes(bytes(data))
    with pytest.raises(VisionlaunchError, match="label 10 at position 17 is outside 0..9"):
        _load(tmp_path)
    # A consistent labels file with one label fewer: header and size agree, but the split does not.
    fewer = original[:4] + (9999).to_bytes(4, "big") + original[8:-1]
    labels.write_bytes(fewer)
    with pytest.raises(VisionlaunchError, match="10000 images but .* 9999 labels"):
        _load(tmp_path)


def test_failed_download_is_a_clear_dataset_not_found(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x, got:\n"
                           "<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetNotFound) as err:
        _load(tmp_path, "train", download=True)
    msg = str(err.value)
    assert "no network access" in msg and str(tmp_path / "MNIST" / "raw") in msg and "\n" not in msg


def test_download_puts_files_where_they_are_found(shared_data, tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_mnist(root, train, download):  # what torchvision does: the .gz files into root/MNIST/raw
        calls.append((root, train, download))
        _copy_test_split(shared_data, tmp_path / "MNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    test = _load(tmp_path, download=True)
    assert calls == [(str(tmp_path), False, True)]
    assert len(test) == 10000
    _load(tmp_path, download=True)  # present now: no second download
    assert len(calls) == 1


def test_urlerror_from_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetNotFound, match="URLError"):
        _load(tmp_path, download=True)


def test_image_values_match_idx_bytes(shared_data):
    # Pixel (row 0 = top) layout: the reader must not transpose or flip.
    raw = gzip.decompress((shared_data / "mnist" / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw, np.uint8, count=784, offset=16).reshape(28, 28)
    assert np.array_equal(_load(shared_data).images[0, 0].numpy(), first)
