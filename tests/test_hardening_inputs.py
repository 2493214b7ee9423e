"""Hostile inputs beyond exit 2 (the refusals are rows of test_bad_input_matrix.py): one path from file to pixels for
training, `evaluate` and `predict`; outputs that name devices, FIFOs and /dev/stdout-like links, written into and
never replaced; FIFOs, link cycles and special archive members named and counted, never blocking; an archive bomb
that costs no memory."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionlaunch
from tests.test_bad_input_matrix import finished_run  # noqa: F401  (a fixture: one tiny finished MNIST run)
from visionlaunch.datasets import imagefolder
from visionlaunch.datasets.entries import MAX_MEMBER_BYTES
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.launch.predict import iter_images

SIDE = 16
ORIENTATION = 0x0112




def _pattern(seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def _smooth(blue: int) -> np.ndarray:
    """Red rising left to right, green top to bottom: survives JPEG, and shows any turn."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] * 15
    return np.stack([x, y, np.full_like(x, blue)], axis=2).astype(np.uint8)


def _wide_gray() -> np.ndarray:
    return (np.arange(SIDE * SIDE, dtype=np.uint32).reshape(SIDE, SIDE) * 257).astype(np.uint16)  # k x 257: k in 8 bits


def _write_hard_images(folder: Path) -> None:
    """A 16-bit PNG, a palette PNG with a transparent colour, a CMYK JPEG and a JPEG with an EXIF rotation."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_wide_gray()).save(folder / "wide16.png")
    Image.fromarray(_pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
        folder / "palette.png", transparency=0)
    Image.fromarray(_smooth(60)).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(_smooth(200)).save(folder / "rotated.jpg", exif=exif, quality=95)


def _dataset(root: Path, test_files) -> Path:
    Image.fromarray(_pattern(9)).save((root / "train" / "a").mkdir(parents=True) or root / "train" / "a" / "t.png")
    test_files(root / "test" / "a")
    return root


def _both_paths(root: Path, channels: int) -> tuple[dict, dict]:
    """{file: uint8 CHW} as the ImageFolder reader (training, evaluate --data) and as predict decode the test split."""
    data = imagefolder.read(root, "test", progress=False)
    files = sorted(str(p) for p in (root / "test" / "a").iterdir())  # the reader's order: class, then name
    read = dict(zip(files, data.images.numpy()))
    skipped: list = []
    predicted = dict(iter_images([root / "test"], (channels, SIDE, SIDE), skipped))
    assert skipped == []
    return read, predicted


def test_the_imagefolder_reader_and_predict_decode_every_file_alike(tmp_path):
    root = _dataset(tmp_path / "colour", _write_hard_images)
    read, predicted = _both_paths(root, 3)
    assert sorted(read) == sorted(predicted) and len(read) == 4
    for name in read:
        assert np.array_equal(read[name], predicted[name]), name
    test = root / "test" / "a"
    # 16-bit: scaled (k x 257 -> k), not clipped at 255; gray copied to the three channels.
    assert np.array_equal(read[str(test / "wide16.png")], np.repeat(_wide_gray()[None] // 257, 3, axis=0))
    # EXIF orientation applied: the stored pixels turned 90 degrees clockwise (JPEG noise aside).
    rotated = read[str(test / "rotated.jpg")].transpose(1, 2, 0).astype(int)
    assert np.abs(rotated - np.rot90(_smooth(200), k=-1)).mean() < 4
    assert np.abs(rotated - _smooth(200)).mean() > 40
    # The transparent palette colour keeps the colour beneath; CMYK comes back close to the RGB it was made from.
    with Image.open(test / "palette.png") as im:
        assert np.array_equal(read[str(test / "palette.png")].transpose(1, 2, 0), np.asarray(im.convert("RGB")))
    assert np.abs(read[str(test / "cmyk.jpg")].transpose(1, 2, 0).astype(int) - _smooth(60)).mean() < 4


def test_gray_datasets_and_one_channel_models_see_the_same_16_bit_pixels(tmp_path):
    def gray_files(folder: Path) -> None:
        folder.mkdir(parents=True)
        Image.fromarray(_wide_gray()).save(folder / "wide16.png")
        Image.fromarray(_pattern()[:, :, 0]).save(folder / "gray8.png")

    root = _dataset(tmp_path / "gray", gray_files)
    (root / "train" / "a" / "t.png").unlink()
    Image.fromarray(_pattern(9)[:, :, 0]).save(root / "train" / "a" / "t.png")
    read, predicted = _both_paths(root, 1)
    assert {v.shape for v in read.values()} == {(1, SIDE, SIDE)}
    for name in read:
        assert np.array_equal(read[name], predicted[name]), name
    assert np.array_equal(read[str(root / "test" / "a" / "wide16.png")][0], _wide_gray() // 257)


def test_a_float_tiff_is_refused_by_both_for_the_same_reason(tmp_path):
    def float_file(folder: Path) -> None:
        folder.mkdir(parents=True)
        Image.fromarray(np.full((SIDE, SIDE), 0.5, np.float32)).save(folder / "float.tif")
        Image.fromarray(_pattern()).save(folder / "ok.png")

    root = _dataset(tmp_path / "float", float_file)
    with pytest.raises(VisionlaunchError) as refused:
        imagefolder.read(root, "test", progress=False)
    skipped: list = []
    assert len(list(iter_images([root / "test"], (3, SIDE, SIDE), skipped))) == 1
    [(name, why)] = skipped
    assert name == str(root / "test" / "a" / "float.tif") and name in str(refused.value)
    assert "floating-point pixels" in why and why.removeprefix("not a readable image (")[:-1] in str(refused.value)


# ------------------------------------------------------------------------ predict on odd folders and archives


def _predict(run: Path, *args) -> tuple[int, str]:
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["predict", str(run), *map(str, args)])
    return code, err.getvalue()


def _digit(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pattern()[:, :, 0]).save(path)
    return path


def test_a_fifo_in_a_folder_is_named_never_opened(finished_run, tmp_path, no_hang):
    _digit(tmp_path / "in" / "a.png")
    os.mkfifo(tmp_path / "in" / "pipe.png")
    code, err = _predict(finished_run, tmp_path / "in")
    assert code == 0, err
    assert f"skipped {tmp_path / 'in' / 'pipe.png'}: a FIFO" in err and "1 image(s) classified" in err
    assert "1 file(s) skipped" in err


def test_a_link_cycle_is_named_and_each_image_classified_once(finished_run, tmp_path, no_hang):
    _digit(tmp_path / "in" / "sub" / "a.png")
    os.symlink("..", tmp_path / "in" / "sub" / "up")
    out = tmp_path / "preds.csv"
    code, err = _predict(finished_run, tmp_path / "in", "--out", out)
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 2  # the header and a.png, once
    assert f"skipped {tmp_path / 'in' / 'sub' / 'up'}: a link to" in err and "1 file(s) skipped" in err


def test_archive_members_that_are_not_files_are_named_and_counted(finished_run, tmp_path):
    archive = tmp_path / "odd.tar"
    image = _digit(tmp_path / "a.png").read_bytes()
    with tarfile.open(archive, "w") as tar:
        for name, kind, link in [("a.png", tarfile.REGTYPE, ""), ("../escape.png", tarfile.REGTYPE, ""),
                                 ("hard.png", tarfile.LNKTYPE, "a.png"), ("soft.png", tarfile.SYMTYPE, "a.png"),
                                 ("pipe.png", tarfile.FIFOTYPE, ""), ("null.png", tarfile.CHRTYPE, "")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(image) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(image) if kind == tarfile.REGTYPE else None)
    code, err = _predict(finished_run, archive)
    assert code == 0, err
    for name, says in [("../escape.png", "'..' part"), ("hard.png", "a hard link"), ("soft.png", "a symbolic link"),
                       ("pipe.png", "a FIFO"), ("null.png", "a device")]:
        line = next((line for line in err.splitlines() if line.startswith(f"skipped {archive}:{name}: ")), "")
        assert says in line, (name, err)
    assert "1 image(s) classified" in err and "5 file(s) skipped" in err


def test_an_archive_bomb_is_skipped_without_reading_it(finished_run, tmp_path):
    """A 256 MiB member (a few hundred KB of zip) beside a real image: named as too large, never read. The peak
    memory of the command stays within 64 MiB of the same command on the image alone (before this bound: +383 MiB)."""
    image = _digit(tmp_path / "a.png")
    small, bomb = tmp_path / "small.zip", tmp_path / "bomb.zip"
    for archive in (small, bomb):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.write(image, "a.png")
            if archive == bomb:
                with zf.open("big.png", "w", force_zip64=True) as member:
                    for _ in range(4 * MAX_MEMBER_BYTES >> 20):
                        member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 2 << 20

    def peak(archive: Path) -> tuple[int, str]:
        # A child that runs the command as its only child: RUSAGE_CHILDREN is then that command's peak.
        measure = ("import resource, subprocess, sys\n"
                   "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                   "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
                   "sys.stderr.write(p.stderr)")
        source = Path(visionlaunch.__file__).resolve().parents[1]  # the package under test, wherever it is
        env = {**os.environ, "WANDB_MODE": "disabled", "MPLBACKEND": "Agg", "PYTHONPATH": str(source)}
        proc = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "visionlaunch", "predict",
                               str(finished_run), str(archive)], capture_output=True, text=True, env=env,
                              timeout=300)
        code, kib = map(int, proc.stdout.split())
        assert code == 0, proc.stderr[-3000:]
        return kib << 10, proc.stderr

    base, _ = peak(small)
    used, err = peak(bomb)
    assert f"skipped {bomb}:big.png: {4 * MAX_MEMBER_BYTES:,} bytes, over the 64 MiB" in err, err[-2000:]
    assert used < base + MAX_MEMBER_BYTES, (used >> 20, base >> 20)


# ------------------------------------------------------------------------ outputs that are not regular files


def _char_device(path: Path, minor: int) -> Path:
    """A memory device node of the test's own (1, 3): like /dev/null; (1, 7): like /dev/full). Root only."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    return path


def _read_fifo(path: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def reader():
        with open(path, "rb") as f:
            got.append(f.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, got


def test_predict_writes_into_a_device_and_leaves_it_a_device(finished_run, tmp_path):
    node = _char_device(tmp_path / "null", 3)
    code, err = _predict(finished_run, _digit(tmp_path / "in" / "a.png"), "--out", node)
    assert code == 0, err
    assert stat.S_ISCHR(node.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "null"]  # no temporary file, no file beside it


def test_predict_writes_into_a_fifo_and_through_a_link_to_it(finished_run, tmp_path, no_hang):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    image = _digit(tmp_path / "in" / "a.png")
    for target in (fifo, link):
        thread, got = _read_fifo(fifo)
        code, err = _predict(finished_run, image, "--out", target)
        thread.join(30)
        assert code == 0, err
        assert got and got[0].decode().startswith("file,class_1,prob_1") and str(image) in got[0].decode()
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()


def test_a_dev_stdout_like_link_is_written_through_not_replaced(finished_run, tmp_path):
    """A link to /proc/self/fd/N (what /dev/stdout is) names this process's open file: written into, in place."""
    captured = tmp_path / "captured.csv"
    image = _digit(tmp_path / "in" / "a.png")
    with open(captured, "w") as stdout:
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{stdout.fileno()}")
        inode = captured.stat().st_ino
        code, err = _predict(finished_run, image, "--out", link)
    assert code == 0, err
    assert link.is_symlink() and captured.stat().st_ino == inode
    assert captured.read_text().startswith("file,class_1")


def test_a_link_to_a_regular_file_replaces_the_file_and_keeps_the_link(finished_run, tmp_path):
    target = tmp_path / "kept" / "preds.csv"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "preds.csv"
    link.symlink_to(target)
    code, err = _predict(finished_run, _digit(tmp_path / "in" / "a.png"), "--out", link)
    assert code == 0, err
    assert link.is_symlink() and target.read_text().startswith("file,class_1")
    assert sorted(p.name for p in target.parent.iterdir()) == ["preds.csv"]


def test_export_and_compare_write_into_a_device_and_place_nothing_beside_it(finished_run, tmp_path, capsys):
    node = _char_device(tmp_path / "null", 3)
    assert main(["export", str(finished_run), "--format", "torchscript", "--out", str(node)]) == 0
    second = tmp_path / "run2"
    shutil.copytree(finished_run, second)
    assert main(["compare", str(finished_run), str(second), "--out", str(node)]) == 0
    assert stat.S_ISCHR(node.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "run2"]  # no null.json, no null-curves.png
    capsys.readouterr()


def test_a_socket_is_never_replaced(tmp_path):
    from visionlaunch.atomic import atomic_write_text

    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(VisionlaunchError, match="is a socket"):
            atomic_write_text(path, "x")
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_an_imagefolder_path_that_is_a_fifo_is_refused_not_opened(tmp_path, no_hang):
    from visionlaunch.datasets import load_dataset

    os.mkfifo(tmp_path / "data.tar")
    with pytest.raises(VisionlaunchError, match="is neither a folder nor a file"):
        load_dataset("imagefolder", "train", root=tmp_path, path="data.tar", progress=False, cache_dir=None)


def test_an_imagefolder_archive_refuses_an_image_member_over_the_limit(tmp_path, monkeypatch):
    """The member limit, made small here: an image member over it stops the dataset naming it (never read); a
    large member that is not an image is not read at all, so it does not matter."""
    from tests.test_datasets_imagefolder import _load, make_folder, make_tar
    from visionlaunch.datasets import entries

    make_folder(tmp_path / "ds")
    monkeypatch.setattr(entries, "MAX_MEMBER_BYTES", 4096)
    big = bytes(5000)
    make_tar(tmp_path / "ds", tmp_path / "big.tar", extra={"train/cat/notes.txt": big, "train/cat/zz.png": big})
    with pytest.raises(VisionlaunchError, match=r"big.tar:train/cat/zz.png is 5,000 bytes, over the"):
        _load(tmp_path, path="big.tar")
    make_tar(tmp_path / "ds", tmp_path / "notes.tar", extra={"train/cat/notes.txt": big})
    assert len(_load(tmp_path, path="notes.tar")) == 12
