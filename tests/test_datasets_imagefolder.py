"""ImageFolder reader: generated folders and archives, every layout error, and the real CIFAR-10 JPEG tarball."""

import io
import tarfile
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from visionlaunch.datasets import DatasetNotFound, load_dataset, normalization_stats
from visionlaunch.errors import VisionlaunchError

CLASSES = ["cat", "dog", "emu"]


def _pixels(cls_index: int, i: int, size=(8, 6), mode="RGB") -> np.ndarray:
    """A distinct, reproducible image per (class, index): PNG is lossless, so the reader must return exactly this."""
    w, h = size
    rng = np.random.default_rng(100 * cls_index + i)
    shape = (h, w) if mode == "L" else (h, w, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def make_folder(root, counts=None, size=(8, 6), mode="RGB"):
    """root/{train,test}/<class>/<i>.png with `counts[split]` images per class; returns the expected arrays."""
    counts = counts or {"train": 4, "test": 2}
    expected = {}
    for split, n in counts.items():
        images, labels = [], []
        for c, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = _pixels(c, i + (1000 if split == "test" else 0), size, mode)
                Image.fromarray(px).save(root / split / cls / f"{i:03d}.png")
                images.append(px[None] if mode == "L" else px.transpose(2, 0, 1))
                labels.append(c)
        expected[split] = (np.stack(images), np.array(labels))
    return expected


def make_tar(folder, archive, prefix="", extra=None):
    """Pack `folder` into `archive` (tar, compression from the suffix, or zip), with an optional top-level folder."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, prefix + path.relative_to(folder).as_posix())
            for name, data in (extra or {}).items():
                zf.writestr(prefix + name, data)
        return archive
    mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=prefix + path.relative_to(folder).as_posix(), recursive=False)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def _load(root, split="train", path="ds", **kw):
    kw.setdefault("cache_dir", None)
    return load_dataset("imagefolder", split, root=root, path=path, progress=False, **kw)


@pytest.mark.parametrize("split", ["train", "test"])
def test_folder_round_trip(tmp_path, split):
    expected = make_folder(tmp_path / "ds")
    data = _load(tmp_path, split)
    images, labels = expected[split]
    assert data.shape == (3, 6, 8)  # C, H, W of 8 wide x 6 high images
    assert np.array_equal(data.images.numpy(), images) and np.array_equal(data.labels.numpy(), labels)
    assert data.classes == CLASSES and data.name == "imagefolder" and str(tmp_path / "ds") in data.source


@pytest.mark.parametrize("archive_name, prefix", [("ds.tar.gz", "mydata/"), ("ds.tgz", "./"), ("ds.tar", ""),
                                                  ("ds.zip", "mydata/")])
def test_archives_read_like_the_folder(tmp_path, archive_name, prefix):
    expected = make_folder(tmp_path / "ds")
    extra = {"README.txt": b"notes", "train/cat/.DS_Store": b"\0\0", "train/notes.txt": b"not an image"}
    make_tar(tmp_path / "ds", tmp_path / archive_name, prefix, extra)
    for split in ("train", "test"):
        data = _load(tmp_path, split, path=archive_name)
        assert np.array_equal(data.images.numpy(), expected[split][0])
        assert np.array_equal(data.labels.numpy(), expected[split][1]) and data.classes == CLASSES
        assert "archive" in data.source


def test_archive_with_macos_resource_folder(tmp_path):
    make_folder(tmp_path / "ds")
    archive = make_tar(tmp_path / "ds", tmp_path / "ds.tar.gz", "top/", {"../__MACOSX/._x.png": b"junk"})
    assert len(_load(tmp_path, path=str(archive))) == 12  # absolute path works too


def test_grayscale_only_when_every_image_is_gray(tmp_path):
    expected = make_folder(tmp_path / "ds", mode="L")
    data = _load(tmp_path, "train")
    assert data.shape == (1, 6, 8) and np.array_equal(data.images.numpy(), expected["train"][0])
    # One colour image in the *other* split makes both splits RGB, so train and test shapes always agree.
    Image.fromarray(_pixels(0, 7)).save(tmp_path / "ds" / "test" / "dog" / "colour.png")
    data = _load(tmp_path, "train")
    assert data.shape == (3, 6, 8)
    gray = torch.from_numpy(expected["train"][0])
    assert torch.equal(data.images, gray.expand(-1, 3, -1, -1))  # gray becomes R = G = B


def test_colour_image_after_gray_ones_in_the_same_split(tmp_path):
    expected = make_folder(tmp_path / "ds", mode="L")
    Image.fromarray(_pixels(0, 9)).save(tmp_path / "ds" / "train" / "emu" / "zzz.png")  # decoded last
    data = _load(tmp_path, "train")
    assert data.shape == (3, 6, 8)
    assert torch.equal(data.images[0], torch.from_numpy(expected["train"][0][0]).expand(3, -1, -1))
    assert np.array_equal(data.images[-1].numpy(), _pixels(0, 9).transpose(2, 0, 1))


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's convert('L') saturates 16-bit values above 255; the reader scales them (v x 255 / 65535)."""
    make_folder(tmp_path / "ds", mode="L")
    wide = np.array([[0, 257, 32768, 65535] * 2] * 6, dtype=np.uint16)  # 8 x 6, like make_folder's images
    Image.fromarray(wide).save(tmp_path / "ds" / "train" / "cat" / "000.png")
    assert Image.open(tmp_path / "ds" / "train" / "cat" / "000.png").mode.startswith("I")
    ds = _load(tmp_path, "train")
    assert ds.images.shape[1] == 1  # still a grayscale dataset
    assert ds.images[0, 0, 0, :4].tolist() == [0, 1, 128, 255]


def test_wrong_image_size_names_the_file(tmp_path):
    make_folder(tmp_path / "ds")
    odd = tmp_path / "ds" / "test" / "dog" / "odd.png"
    Image.fromarray(_pixels(1, 0, size=(5, 6))).save(odd)
    for split in ("train", "test"):  # caught whichever split is loaded
        with pytest.raises(VisionlaunchError) as err:
            _load(tmp_path, split)
        msg = str(err.value)
        assert str(odd) in msg and "5x6" in msg and "8x6" in msg


def test_empty_class_folder(tmp_path):
    make_folder(tmp_path / "ds")
    (tmp_path / "ds" / "train" / "fox").mkdir()
    (tmp_path / "ds" / "test" / "fox").mkdir()
    (tmp_path / "ds" / "test" / "fox" / "readme.txt").write_text("no images here")
    with pytest.raises(VisionlaunchError, match=r"train/fox/ holds no images"):
        _load(tmp_path)


def test_empty_class_folder_in_an_archive(tmp_path):
    make_folder(tmp_path / "ds")
    (tmp_path / "ds" / "test" / "fox").mkdir()
    (tmp_path / "ds" / "train" / "fox").mkdir()
    make_tar(tmp_path / "ds", tmp_path / "ds.tar")
    with pytest.raises(VisionlaunchError, match=r"train/fox/ holds no images"):
        _load(tmp_path, path="ds.tar")


def test_splits_without_class_folders(tmp_path):
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "test").mkdir()
    (tmp_path / "ds" / "train" / "notes.txt").write_text("not an image")
    for split in ("train", "test"):
        with pytest.raises(VisionlaunchError, match=r"hold no class folders"):
            _load(tmp_path, split)


def test_mismatched_classes(tmp_path):
    make_folder(tmp_path / "ds")
    for p in (tmp_path / "ds" / "test" / "emu").iterdir():
        p.unlink()
    (tmp_path / "ds" / "test" / "emu").rmdir()
    with pytest.raises(VisionlaunchError) as err:
        _load(tmp_path, "test")
    assert "Only in train/: emu; only in test/: none" in str(err.value)


def test_missing_split(tmp_path):
    make_folder(tmp_path / "ds", counts={"train": 2})
    with pytest.raises(VisionlaunchError, match="has no test/ folder"):
        _load(tmp_path, "train")


def test_unreadable_and_truncated_images(tmp_path):
    make_folder(tmp_path / "ds")
    bad = tmp_path / "ds" / "test" / "cat" / "bad.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(VisionlaunchError, match="is not a readable image") as err:
        _load(tmp_path, "train")  # found while checking the other split's headers
    assert str(bad) in str(err.value)
    bad.unlink()
    cut = tmp_path / "ds" / "train" / "dog" / "001.png"
    cut.write_bytes(cut.read_bytes()[:60])  # a valid header, then nothing
    with pytest.raises(VisionlaunchError) as err:
        _load(tmp_path, "train")
    assert str(cut) in str(err.value)


def test_image_outside_class_folder(tmp_path):
    make_folder(tmp_path / "ds")
    stray = tmp_path / "ds" / "train" / "stray.png"
    Image.fromarray(_pixels(0, 0)).save(stray)
    with pytest.raises(VisionlaunchError, match="outside any class folder"):
        _load(tmp_path)


def test_bad_layout_and_paths(tmp_path):
    (tmp_path / "two" / "a" / "train").mkdir(parents=True)
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(VisionlaunchError, match="expected folders train/ and test/ at the top"):
        _load(tmp_path, path="two")
    with pytest.raises(DatasetNotFound) as err:
        _load(tmp_path, path="nowhere.tar.gz")
    assert str(tmp_path / "nowhere.tar.gz") in str(err.value)
    with pytest.raises(VisionlaunchError, match="needs data.path"):
        _load(tmp_path, path=None)
    (tmp_path / "data.rar").write_bytes(b"Rar!")
    with pytest.raises(VisionlaunchError, match=r"is a file but not an archive \(.tar, .tar.gz"):
        _load(tmp_path, path="data.rar")
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(VisionlaunchError, match="could not be read as a zip archive"):
        _load(tmp_path, path="data.zip")
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(VisionlaunchError, match="could not be read as a tar archive"):
        _load(tmp_path, path="broken.tar.gz")


def test_cache_follows_changes_in_a_folder(tmp_path):
    make_folder(tmp_path / "ds")
    cache = tmp_path / "cache"
    assert len(_load(tmp_path, cache_dir=cache)) == 12
    assert len(_load(tmp_path, cache_dir=cache)) == 12
    Image.fromarray(_pixels(2, 50)).save(tmp_path / "ds" / "train" / "emu" / "new.png")
    assert len(_load(tmp_path, cache_dir=cache)) == 13


def test_progress_bar_goes_to_stderr(tmp_path, capsys, monkeypatch):
    from visionlaunch import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # off a terminal: a plain line per interval, here each image
    make_folder(tmp_path / "ds")
    load_dataset("imagefolder", "train", root=tmp_path, path="ds", cache_dir=None, progress=True)
    captured = capsys.readouterr()
    assert "decoding train images: 12/12 img (100%)" in captured.err and captured.out == ""
    assert "\r" not in captured.err


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cifar-jpeg-cache")


def test_real_cifar10_jpeg_tarball(shared_data, cifar_cache):
    """The 60,000 real CIFAR-10 JPEGs (slow: about 10-20 s on two shared cores), then a fast cached reload."""
    path = "cifar10-jpeg/cifar10-jpeg.tar.gz"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    timings = {}
    for split, n in (("train", 50000), ("test", 10000)):
        t0 = time.perf_counter()
        data = load_dataset("imagefolder", split, root=shared_data, path=path, cache_dir=cifar_cache, progress=False)
        timings[split] = time.perf_counter() - t0
        assert len(data) == n and data.shape == (3, 32, 32) and data.classes == names
        assert data.labels.bincount().tolist() == [n // 10] * 10
        if split == "train":
            mean, std = normalization_stats(data)
            assert mean == pytest.approx((0.491, 0.481, 0.444), abs=0.003)  # SOURCES.md
            assert std == pytest.approx((0.247, 0.243, 0.261), abs=0.01)
    t0 = time.perf_counter()
    again = load_dataset("imagefolder", "train", root=shared_data, path=path, cache_dir=cifar_cache, progress=False)
    timings["cached train"] = time.perf_counter() - t0
    print("CIFAR-10 JPEG tarball load times (s):", {k: round(v, 2) for k, v in timings.items()})
    assert len(again) == 50000 and timings["cached train"] < 3.0
