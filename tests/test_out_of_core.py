"""Datasets read out of core (data.residency=disk): an ImageFolder of real photos (CIFAR-10 JPEGs at mixed sizes)
indexed in numpy arrays and decoded one sample per item by DataLoader workers, in the local epoch order. An epoch
visits every sample once, the samples are the in-memory reader's pixels, the random-resized crops depend on (seed,
epoch, sample) only, 2 processes follow 1 process step by step, and a run stopped by SIGTERM mid-epoch resumes
bit for bit."""

import io
import random
import signal
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, isolate_environment, require_shared_data
from tests.run_helpers import (assert_same_records, max_weight_difference, records, run, signal_at_training_step,
                               two_process_launcher)
from visionlaunch.datasets.folder_index import FolderSource
from visionlaunch.datasets.load import load_dataset
from visionlaunch.datasets.loaders import SourceLoader
from visionlaunch.datasets.mixed_size import ResizedCrop
from visionlaunch.datasets.order import EpochOrder
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.trainers import memory_plan
from visionlaunch.trainers.checkpoint import complete_checkpoints

CLASSES = ("airplane", "automobile", "bird", "cat")
PER_CLASS = {"train": 30, "test": 8}
CPU = torch.device("cpu")
SMALL_ORDER = EpochOrder(block=4, buffer=3)  # 12-sample windows: 120 training images make 10 of them


def _write_folder(root, mixed: bool):
    """The first CIFAR-10 JPEGs of each class: copied as they are (32x32), or each rescaled to a random size in
    40..96 px (mixed)."""
    rng = random.Random(0)
    archive = require_shared_data() / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    counts = {(s, c): 0 for s in PER_CLASS for c in CLASSES}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            key = (parts[0], parts[1]) if len(parts) == 3 else None
            if member.isfile() and key in counts and counts[key] < PER_CLASS[key[0]]:
                counts[key] += 1
                target = root.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                data = tar.extractfile(member).read()
                if mixed:
                    with Image.open(io.BytesIO(data)) as im:
                        im.convert("RGB").resize((rng.randint(40, 96), rng.randint(40, 96)),
                                                 Image.Resampling.BICUBIC).save(target, quality=90)
                else:
                    target.write_bytes(data)
            if all(counts[k] == PER_CLASS[k[0]] for k in counts):
                break
    return root


def _archive(folder: Path, target: Path) -> Path:
    """`folder` as an archive of train/ and test/: an uncompressed .tar, a deflated .zip or a .tar.gz."""
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    if target.suffix == ".zip":
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.relative_to(folder).as_posix())
    else:
        with tarfile.open(target, "w:gz" if target.name.endswith(".gz") else "w") as tar:
            for f in files:
                tar.add(f, f.relative_to(folder).as_posix())
    return target


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    found = {"plain": _write_folder(root / "plain", mixed=False), "mixed": _write_folder(root / "mixed", mixed=True)}
    for suffix in (".tar", ".zip", ".tar.gz"):
        found["plain" + suffix] = _archive(found["plain"], root / f"plain{suffix}")
        found["mixed" + suffix] = _archive(found["mixed"], root / f"mixed{suffix}")
    return found


class _Ids:
    """A source whose labels are its sample ids: what a loader yields then names the samples it visited."""

    def __init__(self, base):
        self.base, self.labels, self.shape = base, np.arange(len(base), dtype=np.int64), base.shape

    def __len__(self):
        return len(self.base)

    def decode(self, i):
        return self.base.decode(i)


@pytest.mark.parametrize("kind, image_size", [("plain", None), ("mixed", 32), ("plain.tar", None),
                                               ("mixed.tar", 32), ("plain.zip", None), ("mixed.zip", 32)])
def test_the_folder_index_decodes_what_the_in_memory_reader_stores(folders, kind, image_size):
    """A folder, an uncompressed tar or a zip: the index decodes, sample for sample, what is read into memory."""
    source = FolderSource(folders[kind], "train", image_size=image_size, progress=False)
    memory = load_dataset("imagefolder", "train", root=folders[kind].parent, path=folders[kind].name, progress=False,
                          image_size=image_size)
    assert len(source) == len(memory) == 120 and source.classes == memory.classes == list(CLASSES)
    assert source.shape == memory.shape
    # The index is a few numpy arrays, not a list of Python objects per sample.
    assert source.labels.dtype == np.int64 and isinstance(source.file_sizes, np.ndarray)
    assert not any(isinstance(v, list) and len(v) == len(source) for v in vars(source).values())
    assert np.array_equal(source.labels, memory.labels.numpy())
    if image_size is None:  # planning only: one header read, counted as colour, nothing decoded
        estimate = FolderSource(folders[kind], "train", progress=False, estimate=True)
        assert estimate.shape == (3, 32, 32) and np.array_equal(estimate.labels, source.labels)
        with pytest.raises(RuntimeError, match="cannot decode"):
            estimate.decode(0)
    for i in range(len(source)):
        assert np.array_equal(source.decode(i), memory.images[i].permute(1, 2, 0).numpy()), i


def test_a_zip_of_another_compression_reads_in_memory_and_is_refused_out_of_core(folders, tmp_path):
    folder = folders["plain"]
    target = tmp_path / "bz.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_BZIP2) as zf:
        for f in sorted(f for f in folder.rglob("*") if f.is_file()):
            zf.write(f, f.relative_to(folder).as_posix())
    memory = load_dataset("imagefolder", "train", root=tmp_path, path="bz.zip", progress=False)
    plain = load_dataset("imagefolder", "train", root=folder, path=".", progress=False)
    assert torch.equal(memory.images, plain.images) and torch.equal(memory.labels, plain.labels)
    with pytest.raises(VisionlaunchError, match="compressed with a zip method other than stored or deflated"):
        FolderSource(target, "train", progress=False)


@pytest.mark.parametrize("world", [1, 2])
def test_an_out_of_core_epoch_visits_every_sample_once(folders, world):
    ids = _Ids(FolderSource(folders["mixed"], "train", image_size=32, progress=False))
    seen = []
    for rank in range(world):
        loader = SourceLoader(ids, 10 // world, device=CPU, num_workers=2, train=True, seed=3, rank=rank, world=world,
                              order=SMALL_ORDER, resized_crop=ResizedCrop(32))
        loader.set_epoch(1)
        batches = list(loader)
        assert len(batches) == len(loader) == 12
        assert all(x.shape == (10 // world, 3, 32, 32) and x.dtype == torch.uint8 for x, _ in batches)
        seen += torch.cat([y for _, y in batches]).tolist()
    assert sorted(seen) == list(range(120))  # every sample exactly once (120 = 12 steps x 10)


def test_evaluation_out_of_core_gives_the_samples_in_order(folders):
    source = FolderSource(folders["plain"], "test", progress=False)
    loader = SourceLoader(source, 7, device=CPU, num_workers=0, train=False, seed=0)
    images = torch.cat([x for x, _ in loader])
    assert torch.equal(images, torch.stack([torch.tensor(source.decode(i)).permute(2, 0, 1)
                                            for i in range(len(source))]))


def _batches(source, workers=0, rank=0, world=1, start=0, epoch=2):
    loader = SourceLoader(source, 12 // world, device=CPU, num_workers=workers, train=True, seed=5, rank=rank,
                          world=world, order=SMALL_ORDER, resized_crop=ResizedCrop(32, (0.3, 1.0)))
    loader.set_epoch(epoch, start)
    return list(loader)


def test_crops_depend_on_seed_epoch_and_sample_only(folders):
    source = FolderSource(folders["mixed"], "train", image_size=32, progress=False)
    one = _batches(source)
    # The same with two worker processes ...
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, _batches(source, workers=2)))
    # ... and with two ranks: step k of both covers step k of one process, crops included.
    shards = [_batches(source, rank=r, world=2) for r in range(2)]
    for k, (x, y) in enumerate(one):
        both = torch.cat([shards[0][k][0], shards[1][k][0]])
        labels = torch.cat([shards[0][k][1], shards[1][k][1]])
        # rank r holds global positions r, r+2, ...: interleave them back
        assert torch.equal(torch.stack([both[:6], both[6:]], 1).flatten(0, 1), x)
        assert torch.equal(torch.stack([labels[:6], labels[6:]], 1).flatten(), y)
    # A resumed epoch gives the exact tail; another epoch, other crops.
    tail = _batches(source, start=4)
    assert len(tail) == len(one) - 4 and all(torch.equal(a[0], b[0]) for a, b in zip(one[4:], tail))
    assert not torch.equal(one[0][0], _batches(source, epoch=3)[0][0])


# --- training runs ---------------------------------------------------------------------------------------------

FCN = REPO / "configs" / "mnist_fcn.yaml"
# A tiny deterministic MLP (no BatchNorm, no dropout, no flip) in fp32 (bf16, which train.precision=auto may pick
# here, rounds each rank's partial gradient on its own): 2 processes must follow 1 process.
RUN = ["train.precision=fp32", "data.name=imagefolder", "data.image_size=32", "data.val_size=12", "data.residency=disk",
       "model.args={hidden: [32], batch_norm: false, dropout: 0}", "augment.crop_padding=0", "augment.flip=false",
       "train.batch_size=12", "train.epochs=2", "train.progress=false", "report.figures=false", "train.log_every=1",
       "train.eval_batch_size=20", "optim.lr=0.01"]


def _args(folder, out, name, *extra):
    return ["--config", str(FCN), f"data.path={folder}", f"output.dir={out}", f"output.name={name}", *RUN, *extra]


@pytest.fixture(scope="module")
def one_process(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, out)
        assert main(["train", *_args(folders["mixed"], out, "one", "data.num_workers=1")]) == 0
    return out


def test_two_processes_follow_one_process_out_of_core(folders, one_process, tmp_path):
    proc = run([*two_process_launcher(), *_args(folders["mixed"], one_process, "two", "data.num_workers=0")],
               VISIONLAUNCH_CACHE=str(tmp_path / "cache"), WANDB_MODE="disabled")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "data plan: training split out of core (data.residency=disk)" in proc.stderr
    one, two = one_process / "one", one_process / "two"
    steps1, steps2 = records(one, "step"), records(two, "step")
    assert len(steps1) == len(steps2) == 2 * (108 // 12)
    for a, b in zip(steps1, steps2):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
    assert max_weight_difference(one, two) < 1e-5
    epochs1, epochs2 = records(one, "epoch"), records(two, "epoch")
    expected = [(s, n) for _ in range(2) for s, n in (("train", 108), ("val", 12), ("test", 32))]
    assert [(r["split"], r["n"]) for r in epochs1] == [(r["split"], r["n"]) for r in epochs2] == expected
    assert "residency: disk" in (one / "config.yaml").read_text()


def test_an_uncompressed_tar_trains_out_of_core_as_its_folder(folders, one_process, tmp_path, capsys):
    """The members of a .tar are read where they lie, one per item, by the DataLoader workers: the run is the folder's
    run step for step. A .tar.gz can only be read from its start: data.residency=disk refuses it with the advice."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, tmp_path)
        assert main(["train", *_args(folders["mixed.tar"], tmp_path, "tar", "data.num_workers=1")]) == 0
        assert "data plan: training split out of core (data.residency=disk)" in capsys.readouterr().err
        assert_same_records(records(one_process / "one"), records(tmp_path / "tar"), tol=0)
        assert main(["train", *_args(folders["mixed.tar.gz"], tmp_path, "gz")]) == 2
    message = capsys.readouterr().err.split("visionlaunch: error:", 1)[1]
    assert "data.residency=disk cannot read ImageFolder archive" in message and "gunzip" in message
    assert "Traceback" not in message and not (tmp_path / "gz").exists()


def test_sigterm_mid_epoch_then_resume_is_bit_identical(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory_plan, "OUT_OF_CORE_ORDER", SMALL_ORDER)  # a local order with 9 windows, not one
    assert main(["train", *_args(folders["mixed"], tmp_path, "whole", "data.num_workers=1")]) == 0
    remove_fault = signal_at_training_step(monkeypatch, signal.SIGTERM, 13)  # the middle of the second epoch (9 steps each)
    args = _args(folders["mixed"], tmp_path, "cut", "data.num_workers=1", "train.resume=auto")
    assert main(["train", *args]) == 75
    assert complete_checkpoints(tmp_path / "cut" / "checkpoints")[-1].name == "step-00000013"  # mid-epoch 2
    remove_fault()
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "blocks of 4 samples, 3 blocks per window" in err
    assert max_weight_difference(tmp_path / "whole", tmp_path / "cut") == 0
    assert_same_records(records(tmp_path / "whole"), records(tmp_path / "cut"), tol=0)


def test_indexing_a_folder_holds_no_python_object_per_file(tmp_path):
    """The index of a folder of a million files is built from one walk that the layout checks see whole: if each
    file stays a Python object until the arrays are built, building the index is the peak memory of a large run
    (an entry and a Path per file: about 1 KiB a file; an entry and a record with __slots__: ~580 bytes). The scan
    keeps a file as its folder's number and its name's bytes, so the peak is about the final arrays (its path's
    bytes and three numbers) and a few arrays of numbers over the files."""
    import tracemalloc

    n = 20_000
    for split, count in (("train", n), ("test", 10)):
        for c in range(4):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count // 4):
                (folder / f"{i:08d}-photo.jpg").touch()  # the index decodes nothing: empty files will do
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        source = FolderSource(tmp_path, "train", image_size=32, progress=False)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(source) == n
    per_file = peak / n
    path_bytes = len(source._paths) / n  # the index's own path bytes, kept
    assert per_file < path_bytes + 120, f"{per_file:.0f} bytes per file at the peak of indexing ({path_bytes:.0f} of " \
        "them the path)"
