"""Damaged, foreign, stale and half-written .beton files are refused with a clear message, never loaded as
good; a conversion that fails (a full disk, a killed process) publishes nothing. `visionlaunch prepare ffcv`
writes the run's files once and then checks them."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO, require_ffcv
from visionlaunch.config import DataConfig
from visionlaunch.datasets import ImageSet
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main

import torch

pytestmark = pytest.mark.timeout(240)


def _set(n=400, seed=0, c=3, name="cifar10"):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(images=torch.randint(0, 256, (n, c, 32, 32), dtype=torch.uint8, generator=g),
                    labels=torch.randint(0, 10, (n,), generator=g), classes=[str(i) for i in range(10)], name=name,
                    source="generated")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    require_ffcv()
    from visionlaunch.ffcv_builders.prepare import ensure_betons

    cfg = DataConfig(name="cifar10", ffcv_dir=str(tmp_path_factory.mktemp("betons")))
    splits = {"train": _set(), "val": None, "test": _set(200, seed=1)}
    files = ensure_betons(splits, "cifar10", cfg, progress=False, log=lambda m: None)
    return cfg, splits, files


def _copy(files, tmp_path, split="train"):
    """A private copy of a written beton and its manifest."""
    src = files[split]
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(str(src) + ".json", str(dst) + ".json")
    return dst


def test_files_are_named_after_the_selection_and_reused(written):
    from visionlaunch.ffcv_builders.prepare import ensure_betons

    cfg, splits, files = written
    assert sorted(p.name for p in files.values()) == ["cifar10-test.beton", "cifar10-train-val5000-seed0.beton"]
    before = {p: p.stat().st_mtime_ns for p in files.values()}
    logs = []
    assert ensure_betons(splits, "cifar10", cfg, progress=False, log=logs.append) == files
    assert all("up to date" in m for m in logs) and {p: p.stat().st_mtime_ns for p in files.values()} == before


def test_truncated_beton_is_refused(written, tmp_path):
    from visionlaunch.ffcv_builders import check_beton

    beton = _copy(written[2], tmp_path)
    with open(beton, "r+b") as f:
        f.truncate(beton.stat().st_size // 2)
    with pytest.raises(VisionlaunchError, match="truncated"):
        check_beton(beton)
    from visionlaunch.ffcv_builders import FfcvLoader
    with pytest.raises(VisionlaunchError, match="truncated"):  # the loader checks too, before FFCV reads it
        FfcvLoader(beton, 10, train=True, seed=0, device=torch.device("cpu"))


def test_foreign_beton_is_refused(written, tmp_path):
    from visionlaunch.ffcv_builders import check_beton

    _, _, files = written
    beton = _copy(files, tmp_path, "train")
    # Another valid beton (the test split) dropped in place of the train file, keeping the train manifest.
    shutil.copy(files["test"], beton)
    with pytest.raises(VisionlaunchError, match="truncated or was replaced|SHA-256 differs"):
        check_beton(beton)
    # Same size, other bytes: only the digest can tell.
    data = bytearray(files["train"].read_bytes())
    data[-1000] ^= 0xFF
    beton.write_bytes(bytes(data))
    with pytest.raises(VisionlaunchError, match="SHA-256 differs"):
        check_beton(beton)
    # A consistent file and manifest of another dataset/split, asked for as ours.
    beton = _copy(files, tmp_path, "test")
    with pytest.raises(VisionlaunchError, match="holds split 'test', not 'train'"):
        check_beton(beton, dataset="cifar10", split="train")
    with pytest.raises(VisionlaunchError, match="holds dataset 'cifar10', not 'cifar100'"):
        check_beton(beton, dataset="cifar100")


def test_stale_beton_is_refused_then_rewritten_on_request(written, tmp_path):
    from visionlaunch.ffcv_builders.prepare import ensure_betons

    cfg, splits, _ = written
    cfg = cfg.model_copy(update={"ffcv_dir": str(tmp_path)})
    ensure_betons(splits, "cifar10", cfg, progress=False, log=lambda m: None)
    changed = dict(splits, train=_set(seed=5))  # the source data changed since the file was written
    with pytest.raises(VisionlaunchError, match="is stale"):
        ensure_betons(changed, "cifar10", cfg, progress=False, log=lambda m: None)
    files = ensure_betons(changed, "cifar10", cfg, overwrite=True, progress=False, log=lambda m: None)
    ensure_betons(changed, "cifar10", cfg, progress=False, log=lambda m: None)  # now up to date
    assert files["train"].is_file()


WRITER = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from visionlaunch.errors import VisionlaunchError
    from visionlaunch.ffcv_builders import write_beton
    limit = int(sys.argv[2])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    images = np.random.default_rng(0).integers(0, 256, (40000, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40000) % 10
    try:
        write_beton(images, labels, sys.argv[1], num_classes=10, dataset="big", split="train", progress=False)
    except VisionlaunchError as exc:
        print("ERROR:", exc, file=sys.stderr)
        sys.exit(2)
""")


def _writer(tmp_path, limit=0):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "big.beton"), str(limit)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _no_usable_file(tmp_path):
    from visionlaunch.ffcv_builders import check_beton

    with pytest.raises(VisionlaunchError):
        check_beton(tmp_path / "big.beton")
    assert not (tmp_path / "big.beton").exists() and not (tmp_path / "big.beton.json").exists()


def test_full_disk_stops_the_conversion_with_a_message_and_publishes_nothing(written, tmp_path):
    proc = _writer(tmp_path, limit=20 * 2**20)  # 20 MiB allowed, 123 MiB needed
    try:
        _, err = proc.communicate(timeout=180)
    finally:  # a hang (the bug this guards against) must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err[-3000:]
    assert "ERROR:" in err and ("worker died" in err or "writing" in err) and "free space" in err
    _no_usable_file(tmp_path)
    assert not list(tmp_path.glob(".big.beton.*.tmp"))  # the temporary file is removed too


def test_killed_conversion_leaves_no_file_that_looks_complete(written, tmp_path):
    proc = _writer(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once it has written data under its temporary name
        tmp = list(tmp_path.glob(".big.beton.*.tmp"))
        if tmp and tmp[0].stat().st_size > 8 * 2**20:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the writer and its worker processes
    proc.wait(timeout=30)
    assert tmp, "the writer never started writing"
    _no_usable_file(tmp_path)


def test_prepare_ffcv_command_writes_then_checks_the_files(tmp_path, capsys):
    require_ffcv()
    args = ["prepare", "ffcv", "--dataset", "mnist_sample", "--out", str(tmp_path / "b"), "data.val_size=500",
            "data.test_subset=300"]
    assert main(args) == 0
    out = capsys.readouterr().out.split()
    files = sorted(p for p in out if p.endswith(".beton"))
    assert [os.path.basename(p) for p in files] == ["mnist_sample-test-sub300-seed0.beton",
                                                    "mnist_sample-train-val500-seed0.beton",
                                                    "mnist_sample-val-val500-seed0.beton"]
    assert main(args) == 0 and "up to date" in capsys.readouterr().err
    with open(files[0], "ab") as f:  # damage one
        f.write(b"junk")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "truncated or was replaced" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0
    assert main(["prepare", "ffcv", "--dataset", "mnist_sample", "--encoding", "jpeg", "--out",
                 str(tmp_path / "b"), "data.val_size=500"]) == 2
    assert "needs 3-channel images" in capsys.readouterr().err


def test_prepare_ffcv_cifar100_canonical_files_round_trip(tmp_path, capsys):
    """CIFAR-100 (100 fine labels) from files in the canonical format, as JPEG, read back through FFCV."""
    require_ffcv()
    from tests.cifar_format import write_cifar100
    from visionlaunch.datasets import load_dataset
    from visionlaunch.ffcv_builders import FfcvLoader

    root = tmp_path / "data"
    write_cifar100(root, n_train=300, n_test=100, seed=0)
    assert main(["prepare", "ffcv", "--dataset", "cifar100", "--encoding", "jpeg", "--jpeg-quality", "95",
                 f"data.root={root}", "data.verify=false", "data.val_size=50", "--out", str(tmp_path / "b")]) == 0
    files = sorted(p for p in capsys.readouterr().out.split() if p.endswith(".beton"))
    assert [os.path.basename(p) for p in files] == ["cifar100-test-jpeg95.beton",
                                                    "cifar100-train-val50-seed0-jpeg95.beton",
                                                    "cifar100-val-val50-seed0-jpeg95.beton"]
    test = load_dataset("cifar100", "test", root=root, verify=False, progress=False)
    loader = FfcvLoader(files[0], 64, train=False, seed=0, device=torch.device("cpu"), clone=True)
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, test.labels) and labels.max() < 100
    # Lossy (these test images carry per-pixel noise), yet each decoded image is far closer to its own source
    # than to its neighbour's: the pixels were stored with the right sample.
    own = (images.float() - test.images.float()).abs().mean((1, 2, 3))
    other = (images.float() - test.images.roll(1, 0).float()).abs().mean((1, 2, 3))
    assert (own < other).all() and 0 < own.mean() < 0.5 * other.mean()
