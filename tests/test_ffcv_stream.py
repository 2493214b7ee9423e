""".beton files written streaming from an ImageFolder of real photos in mixed sizes (CIFAR-10 JPEGs rescaled by
bench/make_mixed_imagefolder.py), read out of core by the ffcv backend: the training split's photos keep their
aspect ratio, labels and pixels are the source's, a killed conversion publishes nothing and the next one
replaces its leftover, a full disk and a folder changed since conversion stop with one named paragraph (exit 2), a
corrupt JPEG is named and the next photo stands in for it, and a short run on disk residency learns.

Only the training test compiles FFCV's pipelines (about 15 s of numba); the others read the files' own metadata
and bytes. Every test has a timeout: an error inside an FFCV worker could otherwise hang.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, require_ffcv, require_shared_data
from tests.run_helpers import records
from visionlaunch.datasets.folder_index import FolderSource
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main

pytestmark = pytest.mark.timeout(300)
SIDE = 49  # data.ffcv_max_resolution's default for data.image_size=32: round(37 * 4 / 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """500 train / 200 test photos, 40..160 px wide, aspect 3:4..4:3."""
    require_ffcv()
    archive = require_shared_data() / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    out = tmp_path_factory.mktemp("photos") / "mixed"
    subprocess.run([sys.executable, str(REPO / "bench" / "make_mixed_imagefolder.py"), str(archive), str(out),
                    "--train-per-class", "50", "--test-per-class", "20"], check=True, capture_output=True)
    return out


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "mixed")


def _stored(beton):
    """Every stored sample of a raw RGB beton: (height, width), pixels (H, W, 3) and label, from FFCV's metadata
    and the file's bytes (no pipeline compiled)."""
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    images, labels = reader.metadata["f0"], reader.metadata["f1"]
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    out = []
    for meta, label in zip(images, labels):
        h, w, ptr = int(meta["height"]), int(meta["width"]), int(meta["data_ptr"])
        assert meta["mode"] == 1  # raw
        out.append(((h, w), np.array(data[ptr:ptr + h * w * 3]).reshape(h, w, 3), int(label)))
    return out


def _prepare(folder, out, *extra):
    return main(["prepare", "ffcv", "--dataset", "imagefolder", f"data.path={folder}", "data.image_size=32",
                 "data.residency=disk", "data.val_size=50", "--out", str(out), *extra])


def test_photos_keep_their_aspect_ratio_labels_and_pixels(folder, tmp_path, capsys):
    from visionlaunch.ffcv_builders import check_beton
    from visionlaunch.ffcv_builders.photos import decode_photo

    assert _prepare(folder, tmp_path / "b") == 0
    err = capsys.readouterr().err
    assert "data plan: training split out of core (data.residency=disk): read from its .beton file through the OS " \
           "page cache" in err
    train = next((tmp_path / "b").glob(f"imagefolder-*-train-val50-seed0-size32-side{SIDE}.beton"))
    source = FolderSource(folder, "train", image_size=32, progress=False)
    # The training part of the split: the source's samples minus the 50 held out, in the source's order.
    from visionlaunch.datasets.split import train_val_split
    part, _ = train_val_split(source, 50, 0)
    stored = _stored(train)
    assert len(stored) == len(part) == 450
    shapes = set()
    for i, ((h, w), pixels, label) in enumerate(stored):
        path = Path(source.display(int(part.index[i])))
        assert label == int(source.labels[part.index[i]])
        with Image.open(path) as im:
            ow, oh = im.size
        assert max(h, w) == min(SIDE, max(ow, oh))  # the longer side capped, never enlarged
        assert abs(w / h - ow / oh) < 0.05 * ow / oh  # the photo's own aspect ratio, not a square
        assert np.array_equal(pixels, decode_photo(path, str(path), SIDE, 32, 4.0))
        shapes.add((h, w))
    assert len(shapes) > 10 and any(h != w for h, w in shapes)
    # The evaluation splits hold the fixed-size centre crops every backend evaluates on.
    val = next((tmp_path / "b").glob("imagefolder-*-val-val50-seed0-size32.beton"))
    assert {s for s, _, _ in _stored(val)} == {(32, 32)}
    # A second run finds the files current; a truncated one is refused.
    assert _prepare(folder, tmp_path / "b") == 0 and "up to date" in capsys.readouterr().err
    with open(train, "r+b") as f:
        f.truncate(train.stat().st_size - 100)
    with pytest.raises(VisionlaunchError, match="truncated"):
        check_beton(train)


WRITER = textwrap.dedent("""
    import resource, signal, sys, time
    from pathlib import Path
    from visionlaunch.datasets.folder_index import FolderSource
    from visionlaunch.errors import VisionlaunchError
    from visionlaunch.ffcv_builders import photos, stream
    folder, out, limit, delay = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    decode = photos.decode_photo
    def slow(*args):  # a slow disk, so that the conversion can be caught half-way
        time.sleep(delay)
        return decode(*args)
    stream.decode_photo = slow
    source = FolderSource(folder, "train", image_size=32, progress=False)
    try:
        stream.write_source(source, out, dataset="mixed", split="train", image_size=32, max_side=160,
                            progress=False)
    except VisionlaunchError as exc:
        print("ERROR:", exc, file=sys.stderr)
        sys.exit(2)
""")


def _writer(folder, out, limit=0, delay=0.0):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(out), str(limit), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _nothing_published(out):
    assert not out.exists() and not os.path.exists(str(out) + ".json")
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))


def _children(pid):
    """The processes whose parent is `pid` (from /proc: every Linux kernel has it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _gone(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is dead
    except OSError:
        return True


def test_killed_conversion_publishes_nothing_and_the_next_one_replaces_its_leftover(folder, tmp_path):
    from visionlaunch.ffcv_builders import check_beton
    from visionlaunch.ffcv_builders.stream import write_source

    out = tmp_path / "train.beton"
    proc = _writer(folder, out, delay=0.1)  # 0.1 s an image: 25 s of work for each of the 2 workers
    deadline, tmp, workers = time.time() + 120, [], []
    try:
        while time.time() < deadline and proc.poll() is None and not tmp:
            tmp = list(tmp_path.glob(".train.beton.*.tmp"))
            time.sleep(0.05)
        time.sleep(2)  # mid-conversion: the workers are decoding and writing under the temporary name
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the converting process only, as the OOM killer would
        proc.wait(timeout=30)
        deadline = time.time() + 8  # far less than the work the workers had left
        while time.time() < deadline and not all(_gone(w) for w in workers):
            time.sleep(0.1)
        assert workers and all(_gone(w) for w in workers), "writer workers outlived the converting process"
    finally:
        with contextlib.suppress(ProcessLookupError):  # anything of the group still alive
            os.killpg(proc.pid, signal.SIGKILL)
    assert tmp and tmp[0].exists(), "the writer never started writing, or finished before the kill"
    assert not out.exists() and not os.path.exists(str(out) + ".json")
    logs = []
    source = FolderSource(folder, "train", image_size=32, progress=False)
    written = write_source(source, out, dataset="mixed", split="train", image_size=32, max_side=160, progress=False,
                           log=logs.append)  # no lock left behind: it does not wait
    assert any(str(tmp[0]) in m and "interrupted" in m for m in logs) and not any("waiting" in m for m in logs), logs
    assert not tmp[0].exists() and check_beton(out).count == written.count == 500


def test_full_disk_names_the_file_and_removes_the_temporary_one(folder, tmp_path):
    out = tmp_path / "train.beton"
    proc = _writer(folder, out, limit=3 * 2**20)  # about 15 MiB needed
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err[-3000:]
    message = err.split("ERROR:", 1)[1]
    assert "train.beton" in message and "free space" in message and "Nothing was published" in message
    _nothing_published(out)


def test_a_corrupt_jpeg_is_named_and_the_next_photo_stands_in(folder, tmp_path, capfd):
    from visionlaunch.ffcv_builders.stream import write_source

    copy = _copy(folder, tmp_path)
    bad = sorted((copy / "train" / "dog").iterdir())[7]
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated download
    source = FolderSource(copy, "train", image_size=32, progress=False)
    i = next(k for k in range(len(source)) if Path(source.display(k)) == bad)
    out = tmp_path / "b" / "train.beton"
    write_source(source, out, dataset="mixed", split="train", image_size=32, max_side=SIDE, progress=False)
    err = capfd.readouterr().err
    assert err.count(f"WARNING: {bad} is not a readable image") == 1, err[-3000:]
    assert f"Until then sample {i + 1} of the split (its image and label) stands in for sample {i} wherever" in err
    stored = _stored(out)
    assert len(stored) == len(source)  # nothing skipped: the positions of every other sample hold
    (shape, pixels, label), (next_shape, next_pixels, next_label) = stored[i], stored[i + 1]
    assert shape == next_shape and np.array_equal(pixels, next_pixels) and label == next_label == source.labels[i + 1]
    # The command goes on the same way and names the file.
    assert _prepare(copy, tmp_path / "c") == 0
    assert f"WARNING: {bad} is not a readable image" in capfd.readouterr().err


def test_a_folder_changed_since_conversion_is_described(folder, tmp_path, capsys):
    copy = _copy(folder, tmp_path)
    assert _prepare(copy, tmp_path / "b") == 0
    capsys.readouterr()
    cats = sorted((copy / "train" / "cat").iterdir())
    shutil.copy(cats[0], copy / "train" / "cat" / "zz_new.jpg")  # added
    cats[1].unlink()  # removed
    with Image.open(cats[2]) as im:  # edited in place
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(cats[2], quality=80)
    assert _prepare(copy, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "is stale: the imagefolder train files changed since it was written" in err
    assert f"1 file added (first: {copy / 'train' / 'cat' / 'zz_new.jpg'})" in err
    assert f"1 file removed (first: {cats[1]})" in err
    assert f"1 file modified (size or modification time) (first: {cats[2]})" in err
    assert "--overwrite" in err
    assert _prepare(copy, tmp_path / "b", "--overwrite") == 0


def test_training_on_disk_residency_reads_the_photos_and_learns(folder, tmp_path, capsys):
    args = ["train", "--config", str(REPO / "configs" / "mnist_fcn.yaml"), "data.name=imagefolder",
            f"data.path={folder}", "data.image_size=32", "data.val_size=50", "data.residency=disk",
            "data.loader=ffcv", f"data.ffcv_dir={tmp_path / 'b'}",
            "model.args={hidden: [128], batch_norm: true, dropout: 0}", "augment.crop_padding=0", "augment.flip=true", "train.batch_size=25", "train.epochs=6", "optim.lr=0.01",
            "train.progress=false", "report.figures=false", f"output.dir={tmp_path / 'runs'}", "output.name=r"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "read from its .beton file through the OS page cache" in out.out + out.err
    assert list((tmp_path / "b").glob(f"*-train-*-side{SIDE}.beton"))
    run = records(tmp_path / "runs" / "r")
    train_epochs = [r for r in run if r["kind"] == "epoch" and r["split"] == "train"]
    assert [r["n"] for r in train_epochs] == [450] * 6  # every training sample once an epoch (18 batches of 25)
    final = [r for r in run if r["kind"] == "final"][0]
    assert final["test_acc"] >= 0.2, final  # 10 classes: chance is 10%


def test_ffcv_reads_in_the_local_order_and_ranks_interleave_to_one_process(tmp_path):
    """Out of core, the ffcv backend visits the epoch's local (block + window) order of datasets/order.py: each
    rank its shard, every sample once, and a resumed epoch exactly the rest."""
    import torch

    from visionlaunch.datasets.loaders import ShardedLoader
    from visionlaunch.datasets.order import EpochOrder
    from visionlaunch.ffcv_builders import FfcvLoader, write_beton

    n, order = 300, EpochOrder(block=4, buffer=3)  # windows of 12 samples: far from a full shuffle
    write_beton(np.zeros((n, 8, 8, 3), np.uint8), np.arange(n), tmp_path / "ids.beton", num_classes=n,
                dataset="ids", split="train", progress=False)

    def ids(rank=0, world=1, epoch=1, start=0, batch=10):
        loader = FfcvLoader(tmp_path / "ids.beton", batch, train=True, seed=3, device=torch.device("cpu"),
                            rank=rank, world=world, order=order, num_workers=1)
        loader.set_epoch(epoch, start)
        return torch.cat([y for _, y in loader])

    one = ids(batch=10)
    assert torch.equal(one, order(n, 3, 1)[:300]) and sorted(one.tolist()) == list(range(n))
    windows = one.reshape(-1, 12)  # each window of 12 positions holds 3 whole blocks of 4 consecutive samples
    assert all(len({int(i) // 4 for i in w}) == 3 for w in windows[:-1])
    ranks = [ids(rank=r, world=2, batch=5) for r in range(2)]
    assert torch.equal(torch.stack(ranks, 1).flatten(), one)  # rank r takes positions r, r + 2, ...
    assert torch.equal(ids(epoch=1, start=7), one[70:])  # resumed at batch 7
    assert not torch.equal(ids(epoch=2), one)
    reference = ShardedLoader(n, 10, train=True, seed=3, order=order)  # what the tensor and torch backends cut
    reference.set_epoch(1)
    assert torch.equal(reference.remaining(), one)


def test_the_page_cache_reader_holds_no_python_object_per_sample(tmp_path):
    """FFCV's OSCacheManager builds three per-sample dictionaries (about 460 bytes a sample in every process); the
    ffcv backend reads through a lean one that keeps the allocation table as numpy arrays, and reads the same."""
    import tracemalloc

    import torch
    from ffcv.memory_managers import OSCacheManager
    from ffcv.reader import Reader

    from visionlaunch.ffcv_builders import FfcvLoader, write_beton
    from visionlaunch.ffcv_builders.loader import lean_os_cache

    n = 20_000
    images = np.random.default_rng(0).integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
    write_beton(images, np.arange(n) % 7, tmp_path / "many.beton", num_classes=7, dataset="many", split="train",
                progress=False)
    reader = Reader(str(tmp_path / "many.beton"))

    def bytes_per_sample(manager):
        tracemalloc.start()
        made = manager(reader)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak / n, made

    ffcv_bytes, ffcv_made = bytes_per_sample(OSCacheManager)
    lean_bytes, lean_made = bytes_per_sample(lean_os_cache())
    assert ffcv_bytes > 300 and lean_bytes < 40, (ffcv_bytes, lean_bytes)
    assert np.array_equal(lean_made.ptrs, ffcv_made.ptrs) and np.array_equal(lean_made.sizes, ffcv_made.sizes)
    loader = FfcvLoader(tmp_path / "many.beton", 1000, train=False, seed=0, device=torch.device("cpu"), clone=True)
    assert type(loader.loader.memory_manager) is lean_os_cache()
    read = torch.cat([x for x, _ in loader])
    assert torch.equal(read, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_a_large_file_is_not_read_whole_at_every_start_unless_it_changed(tmp_path, monkeypatch):
    """Over FULL_CHECK_BYTES, a beton whose size, modification time and ends match its manifest is trusted without
    reading it whole; a changed end (the allocation table) or a new modification time sends it to the full SHA-256."""
    from visionlaunch.ffcv_builders import check_beton, manifest, write_beton

    beton = tmp_path / "big.beton"
    write_beton(np.zeros((300, 8, 8, 3), np.uint8), np.arange(300) % 3, beton, num_classes=3, dataset="big",
                split="train", progress=False)
    monkeypatch.setattr(manifest, "FULL_CHECK_BYTES", 0)  # every file counts as large
    full_reads = []
    real_digest = manifest.file_digest
    monkeypatch.setattr(manifest, "file_digest", lambda *a: full_reads.append(a) or real_digest(*a))
    check_beton(beton)
    assert full_reads == []  # trusted: size, time and ends as written
    os.utime(beton)  # touched, same bytes: read whole, and accepted
    check_beton(beton)
    assert len(full_reads) == 1
    written = beton.stat().st_mtime_ns
    data = bytearray(beton.read_bytes())
    data[-10] ^= 0xFF  # the allocation table, same size, the old modification time put back
    beton.write_bytes(bytes(data))
    os.utime(beton, ns=(written, written))
    with pytest.raises(VisionlaunchError, match="SHA-256 differs"):
        check_beton(beton)
