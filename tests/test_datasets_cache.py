"""The decoded-tensor cache: hits are identical and fast; changed sources, bad files and odd dirs are handled."""

import gzip
import os
import shutil
import time
import warnings

import pytest
import torch

from visionlaunch.datasets import load_dataset
from visionlaunch.errors import VisionlaunchError

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load(root, cache, split="test", **kw):
    return load_dataset("mnist", split, root=root, cache_dir=cache, progress=False, **kw)


def _plain_test_split(shared_data, root):
    """Uncompressed copies of the official test files (editable in place) under root/mnist/raw."""
    folder = root / "mnist" / "raw"
    folder.mkdir(parents=True)
    for base in TEST_FILES:
        (folder / base).write_bytes(gzip.decompress((shared_data / "mnist" / "raw" / f"{base}.gz").read_bytes()))
    return folder


def test_cache_hit_is_identical_and_fast(shared_data, tmp_path):
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    first = _load(shared_data, cache, "train")
    t1 = time.perf_counter()
    again = _load(shared_data, cache, "train")
    t2 = time.perf_counter()
    print(f"MNIST train: decode + write cache {t1 - t0:.2f} s, load from cache {t2 - t1:.3f} s")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert again.classes == first.classes and again.name == "mnist" and again.source == first.source
    assert again.images.is_contiguous() and again.images.dtype == torch.uint8
    assert t2 - t1 < 2.0
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("mnist-train-") and entries[0].suffix == ".pt"


def test_modified_source_invalidates_the_cache(shared_data, tmp_path):
    folder = _plain_test_split(shared_data, tmp_path)
    cache = tmp_path / "cache"
    before = _load(tmp_path, cache)
    labels = folder / TEST_FILES[1]
    data = bytearray(labels.read_bytes())
    data[8] = (data[8] + 1) % 10  # same size: only the content (and mtime) changes
    labels.write_bytes(bytes(data))
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after = _load(tmp_path, cache)
    assert after.labels[0] == (before.labels[0] + 1) % 10
    assert torch.equal(after.labels[1:], before.labels[1:])
    assert len(list(cache.glob("*.pt"))) == 1  # the stale entry for this source was removed


def test_replacing_the_folder_contents_invalidates_the_cache(shared_data, tmp_path):
    # A different file at the same path (e.g. re-downloaded) must be read again.
    folder = _plain_test_split(shared_data, tmp_path)
    cache = tmp_path / "cache"
    _load(tmp_path, cache)
    for base in TEST_FILES:
        (folder / base).unlink()
        shutil.copy(shared_data / "mnist" / "raw" / f"{base}.gz", folder / f"{base}.gz")
    again = _load(tmp_path, cache)
    assert "t10k-images-idx3-ubyte.gz" in again.source


def test_corrupt_cache_file_is_ignored_and_rebuilt(shared_data, tmp_path):
    cache = tmp_path / "cache"
    good = _load(shared_data, cache)
    (entry,) = cache.glob("*.pt")
    for damage in (entry.read_bytes()[:1000], b"not a torch file", b""):
        entry.write_bytes(damage)
        with pytest.warns(RuntimeWarning, match="ignoring unreadable dataset cache file"):
            rebuilt = _load(shared_data, cache)
        assert torch.equal(rebuilt.images, good.images) and torch.equal(rebuilt.labels, good.labels)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # rewritten: the next load is a clean hit
            assert torch.equal(_load(shared_data, cache).labels, good.labels)


def test_cache_with_wrong_contents_is_rebuilt(shared_data, tmp_path):
    cache = tmp_path / "cache"
    good = _load(shared_data, cache)
    (entry,) = cache.glob("*.pt")
    torch.save({"version": 1, "name": "mnist", "images": torch.zeros(3), "labels": torch.zeros(3)}, entry)
    with pytest.warns(RuntimeWarning, match="ignoring unreadable"):
        assert torch.equal(_load(shared_data, cache).images, good.images)


def test_unverified_cache_is_not_served_to_a_verified_load(shared_data, tmp_path):
    folder = tmp_path / "mnist" / "raw"
    folder.mkdir(parents=True)
    for base in TEST_FILES:
        raw = gzip.decompress((shared_data / "mnist" / "raw" / f"{base}.gz").read_bytes())
        (folder / f"{base}.gz").write_bytes(gzip.compress(raw, compresslevel=1))  # right data, wrong md5
    cache = tmp_path / "cache"
    assert len(_load(tmp_path, cache, verify=False)) == 10000
    with pytest.raises(VisionlaunchError, match="md5"):
        _load(tmp_path, cache, verify=True)


def test_no_cache_dir_writes_nothing_and_no_temp_files_are_left(shared_data, tmp_path):
    _load(shared_data, None)
    assert not (tmp_path / "cache").exists()
    cache = tmp_path / "cache"
    _load(shared_data, cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".pt")] == []


def test_unwritable_cache_only_warns(shared_data, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="could not write dataset cache file"):
        data = _load(shared_data, blocker / "cache")
    assert len(data) == 10000
