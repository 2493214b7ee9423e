"""Bad input, one row per case: every row runs the real command line and must end with exit status 2, one
paragraph on stderr that names the culprit (the file or the key), no traceback, and nothing left behind (no new,
changed or temporary file in the case's folder, unless the row says what may stay).

Add a case by adding a `Row` to ROWS: `argv` builds the command from the case's folder, `setup` prepares that
folder (files, a copy of a finished run, monkeypatches), `culprit` is what the message must name. `runner`:
  main           `main(argv)` in this process (fast: most rows fail before torch is even needed)
  unprivileged   in one child process without root's right to read and write every file (`setpriv` drops
                 CAP_DAC_OVERRIDE when the tests run as root), so chmod really denies access
Rows that stop a run mid-training (a full disk) pass `kept` to check what must survive instead of "nothing".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import REPO, isolate_environment
from tests.test_ablation import BAD_FILES, write_ablation
from visionlaunch.launch.cli import main
from visionlaunch.trainers import checkpoint
from visionlaunch.trainers.checkpoint import complete_checkpoints
from visionlaunch.trainers.runlock import RunLock

FCN = REPO / "configs" / "mnist_fcn.yaml"
# A training command that gets as far as possible quickly: the embedded MNIST sample, a 16-unit MLP.
QUICK = ["data.name=mnist_sample", "data.train_subset=600", "data.test_subset=200", "data.val_size=100",
         "model.args={hidden: [16]}", "train.progress=false", "report.figures=false"]


def train(d: Path, *overrides: str, name: str = "run") -> list[str]:
    return ["train", "--config", str(FCN), *QUICK, f"output.dir={d / 'runs'}", f"output.name={name}", *overrides]


@dataclass(frozen=True)
class Row:
    id: str
    argv: Callable[[Path], list[str]]
    culprit: Callable[[Path], str] | str          # text the message must contain: a path, a key
    says: tuple[str, ...] = ()                    # more text it must contain
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    needs_run: bool = False                       # copy a finished run to <case>/run first
    runner: str = "main"
    kept: Callable[[Path], None] | None = None    # files may stay: this checks them (and no temporary file stays)
    not_says: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ fixtures


def write(path: Path, data: bytes | str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    return path


def imagefolder(root: Path, image: Callable[[int], Image.Image] | None = None) -> Path:
    """train/ and test/ with classes a and b, three 8x8 images each."""
    image = image or (lambda i: Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)))
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                path = root / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image(i).save(path)
    return root


def imagefolder_train(d: Path, *overrides: str) -> list[str]:
    return train(d, "data.name=imagefolder", f"data.root={d}", "data.path=images", "data.val_size=0",
                 "data.train_subset=null", "data.test_subset=null", *overrides)


def fake_mnist(root: Path, mode: int | None = None) -> None:
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        write(root / "mnist" / "raw" / name, b"\0" * 64, mode)


def weights_file(d: Path) -> Path:
    return d / "run" / "weights" / "last.pt"


def replace_weights(obj) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(d: Path, mp) -> None:
        value = obj(torch.load(weights_file(d), weights_only=True)) if callable(obj) else obj
        if isinstance(value, bytes):
            weights_file(d).write_bytes(value)
        else:
            torch.save(value, weights_file(d))
    return setup


def file_size_limit_after(saves: int, limit: int = 20_000) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """From the `saves`-th checkpoint on, no file may grow past `limit` bytes (as on a full disk; SIGXFSZ ignored so
    that the write fails with EFBIG instead of killing the process). The test restores the limit."""
    def setup(d: Path, mp: pytest.MonkeyPatch) -> None:
        save, calls = checkpoint.Checkpoints.save, [0]

        def limited_save(self, *args, **kwargs):
            out = save(self, *args, **kwargs)
            calls[0] += 1
            if calls[0] == saves:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            return out
        mp.setattr(checkpoint.Checkpoints, "save", limited_save)
    return setup


def kept_epoch_one(d: Path) -> None:
    run = d / "runs" / "run"
    assert torch.load(run / "weights" / "last.pt", weights_only=True)["epoch"] == 1  # the last good weights
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-00000002"]


def kept_two_checkpoints(d: Path) -> None:
    run = d / "runs" / "run"
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-00000001", "step-00000002"]




def resume(d: Path, *overrides: str) -> list[str]:
    """The finished run's own command (so that only what the row changes differs), resumed."""
    return train(d, "train.epochs=1", "train.max_steps_per_epoch=2", *overrides)


def last_checkpoint(d: Path, run: str = "run") -> Path:
    return complete_checkpoints(d / run / "checkpoints")[-1]


def damaged_for_auto(d: Path) -> None:
    """train.resume=auto finds runs/<name>: the finished run there, its only checkpoint without 'step'."""
    (d / "runs").mkdir()
    shutil.move(d / "run", d / "runs" / "run")
    meta_file = last_checkpoint(d, "runs/run") / "visionlaunch.json"
    meta = json.loads(meta_file.read_text())
    del meta["step"]
    meta_file.write_text(json.dumps(meta))


def hold_run_lock(d: Path, mp: pytest.MonkeyPatch) -> None:
    """runs/run is being trained into: its lock is held (flock: a second open file in this process conflicts too).
    The lock lives as long as the monkeypatch; undoing it drops the last reference, which releases the lock."""
    write(d / "runs" / "run" / "metrics.jsonl", "")
    mp.setattr(sys.modules[__name__], "_held_lock", RunLock(d / "runs" / "run").acquire(), raising=False)


def unwritable_folder(d: Path, mp) -> None:
    (d / "run").chmod(0o555)


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def zip_of(path: Path, members: dict[str, bytes], *, flags: int = 0, method: int | None = None) -> Path:
    """A zip of stored members; `flags` are or-ed into, and `method` replaces, what every member's local and central
    headers say (an encrypted member: flag 0x1; a compression method Python cannot read: 97, WavPack)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    data = bytearray(path.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            data[at + flag_at] |= flags
            if method is not None:
                data[at + flag_at + 2:at + flag_at + 4] = method.to_bytes(2, "little")
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


def socket_at(path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the node stays after the socket closes


def device_like_dev_full(path: Path) -> None:
    """A character device of the test's own that fails every write with ENOSPC, as /dev/full does. Root only."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 7))


def predict(d: Path, *args: str) -> list[str]:
    return ["predict", str(d / "run"), *args]


def alias_bomb(levels: int, width: int = 9) -> str:
    """A "billion laughs" config: tracker.tags holds `width`**`levels` strings made of a few lines of anchors and
    aliases (each level an anchored list of `width` aliases of the one before)."""
    keys = ["project", "group", "entity", "run_name", "dir", "mode", "name", "tags"][-levels:]
    lines, previous = ["tracker:"], None
    for level, key in enumerate(keys):
        items = ", ".join(["lol"] * width if previous is None else [f"*l{level - 1}"] * width)
        lines.append(f"  {key}: &l{level} [{items}]")
        previous = key
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- rows

ROWS = [
    # --- config: read and validated before torch is imported
    Row("config-missing", lambda d: ["train", "--config", str(d / "none.yaml")], lambda d: str(d / "none.yaml"),
        ("does not exist",)),
    Row("config-invalid-yaml", lambda d: ["train", "--config", str(d / "c.yaml")], lambda d: str(d / "c.yaml"),
        ("not valid YAML",), setup=lambda d, mp: write(d / "c.yaml", "data: [unclosed\n")),
    Row("config-not-utf8", lambda d: ["train", "--config", str(d / "c.yaml")], lambda d: str(d / "c.yaml"),
        ("not UTF-8",), setup=lambda d, mp: write(d / "c.yaml", "train:\n  epochs: 2\n".encode("utf-16"))),
    Row("config-unreadable", lambda d: ["train", "--config", str(d / "c.yaml")], lambda d: str(d / "c.yaml"),
        ("Permission denied",), setup=lambda d, mp: write(d / "c.yaml", "train: {epochs: 1}\n", 0o000),
        runner="unprivileged"),
    Row("config-folder", lambda d: ["train", "--config", str(d)], lambda d: str(d), ("is a folder",)),
    Row("override-form", lambda d: train(d, "train.epochs"), "train.epochs", ("section.key=value",)),
    Row("unknown-key", lambda d: train(d, "bad.key=1"), "'bad'", ("Valid keys",)),
    Row("negative-epochs", lambda d: train(d, "train.epochs=-3"), "train.epochs"),
    Row("seed-negative", lambda d: train(d, "train.seed=-1"), "train.seed"),
    Row("seed-over-32-bits", lambda d: train(d, f"train.seed={2**32}"), "train.seed"),
    Row("split-seed-negative", lambda d: train(d, "data.split_seed=-5"), "data.split_seed"),
    Row("report-seed-over-32-bits", lambda d: train(d, f"report.seed={2**40}"), "report.seed"),
    Row("unknown-dataset", lambda d: train(d, "data.name=svhn"), "data.name"),
    Row("imagefolder-without-path", lambda d: train(d, "data.name=imagefolder"), "data.path"),
    Row("fallback-not-mnist", lambda d: train(d, "data.name=cifar10", "data.fallback=sample"), "fallback"),
    Row("config-duplicate-key", lambda d: ["train", "--config", str(d / "c.yaml")], lambda d: str(d / "c.yaml"),
        ("'epochs' twice", "lines 2 and 4"), setup=lambda d, mp: write(d / "c.yaml", "train:\n  epochs: 2\n  seed: 1\n"
                                                                                    "  epochs: 3\n")),
    Row("config-alias-bomb", lambda d: ["train", "--config", str(d / "c.yaml")], lambda d: str(d / "c.yaml"),
        ("expands to more than 100000 values through its aliases", "line 7"), not_says=("lol",),
        setup=lambda d, mp: write(d / "c.yaml", alias_bomb(7))),
    Row("config-nested-too-deep", lambda d: ["train", "--config", str(d / "c.yaml")], lambda d: str(d / "c.yaml"),
        ("nests deeper than 64 levels",), setup=lambda d, mp: write(d / "c.yaml", "model:\n  args: " + "[" * 5000
                                                                     + "]" * 5000 + "\n")),
    Row("override-alias-bomb", lambda d: train(d, "model.args={" + ", ".join(
        f"l{i}: &l{i} [{', '.join(['1'] * 10 if i == 0 else [f'*l{i - 1}'] * 10)}]" for i in range(6)) + "}"),
        "model.args", ("expands to more than 100000 values",)),
    Row("override-duplicate-key", lambda d: train(d, "model.args={hidden: [8], hidden: [16]}"), "'hidden' twice"),
    Row("lr-infinite", lambda d: train(d, "optim.lr=.inf"), "optim.lr", ("finite number",)),
    Row("betas-nan", lambda d: train(d, "optim.betas=[.nan, 0.999]"), "optim.betas", ("finite number",)),
    Row("epochs-boolean", lambda d: train(d, "train.epochs=true"), "train.epochs", ("not true/false",)),
    Row("val-size-boolean", lambda d: train(d, "data.val_size=false"), "data.val_size", ("not true/false",)),
    Row("model-arg-boolean", lambda d: train(d, "model.args={hidden: [true]}"), "'hidden'", ("not true/false",)),
    # --- the model and the run folder
    Row("unknown-model", lambda d: train(d, "model.name=resnet9000"), "resnet9000"),
    Row("unknown-model-arg", lambda d: train(d, "model.args={hiden: [3]}"), "hiden"),
    Row("unknown-tsne-layer", lambda d: train(d, "report.tsne_layer=no_such_layer", "report.figures=true"),
        "no_such_layer"),
    Row("fp16-on-cpu", lambda d: train(d, "train.precision=fp16"), "train.precision=fp16", ("needs a GPU",)),
    Row("batch-not-divisible", lambda d: train(d, "train.batch_size=50", "train.grad_accum=3"), "train.batch_size",
        ("Choose a multiple of 3",)),
    Row("output-dir-under-a-file", lambda d: train(d, f"output.dir={d / 'a_file' / 'runs'}"),
        lambda d: str(d / "a_file"), ("not a writable folder",), setup=lambda d, mp: write(d / "a_file", "")),
    Row("existing-run-folder", lambda d: train(d), lambda d: str(d / "runs" / "run"), ("already exists",),
        setup=lambda d, mp: write(d / "runs" / "run" / "keep.txt", "mine")),
    Row("run-name-dot", lambda d: train(d, "output.overwrite=true", name="."), "output.name", ("'.'",),
        setup=lambda d, mp: write(d / "runs" / "other" / "metrics.jsonl", "{}\n")),
    Row("run-name-dotdot", lambda d: train(d, "output.overwrite=true", name=".."), "output.name", ("'..'",),
        setup=lambda d, mp: write(d / "thesis.tex", "years of work")),
    Row("run-name-absolute", lambda d: train(d, "output.overwrite=true", name=str(d)), "output.name",
        setup=lambda d, mp: write(d / "thesis.tex", "years of work")),
    Row("overwrite-a-folder-that-is-not-a-run", lambda d: train(d, "output.overwrite=true"),
        lambda d: str(d / "runs" / "run"), setup=lambda d, mp: write(d / "runs" / "run" / "keep.txt", "mine")),
    Row("run-folder-locked-by-another-process", lambda d: train(d, "train.resume=auto"),
        lambda d: str(d / "runs" / "run"), ("in use by another training process",), setup=hold_run_lock),
    Row("compare-out-into-a-run-folder", lambda d: ["compare", str(d / "run"), str(d / "run2"), "--out",
                                                    str(d / "run" / "metrics.jsonl")],
        lambda d: str(d / "run" / "metrics.jsonl"), ("inside the run folder",), needs_run=True,
        setup=lambda d, mp: shutil.copytree(d / "run", d / "run2")),
    Row("resume-not-a-checkpoint", lambda d: train(d, f"train.resume={d / 'empty'}"), lambda d: str(d / "empty"),
        ("is not a checkpoint folder",), setup=lambda d, mp: (d / "empty").mkdir()),
    Row("resume-other-config", lambda d: resume(d, f"train.resume={d / 'run'}", "optim.lr=0.3"), "optim.lr",
        ("different configuration",), needs_run=True),
    Row("resume-torn-metadata", lambda d: resume(d, f"train.resume={d / 'run'}"), lambda d: str(last_checkpoint(d)),
        ("incomplete or corrupt",), needs_run=True,
        setup=lambda d, mp: write(last_checkpoint(d) / "visionlaunch.json", "{not json")),
    Row("resume-partial-checkpoint", lambda d: resume(d, f"train.resume={d / 'run'}"),
        lambda d: str(last_checkpoint(d)), ("is partial: optimizer.bin missing",), needs_run=True,
        setup=lambda d, mp: (last_checkpoint(d) / "optimizer.bin").unlink()),
    Row("resume-auto-nothing-usable", lambda d: resume(d, "train.resume=auto"), "step-00000002",
        ("no checkpoint of", "lacks step"), needs_run=True, setup=lambda d, mp: damaged_for_auto(d)),
    # --- data
    Row("mnist-missing", lambda d: train(d, "data.name=mnist", f"data.root={d / 'empty'}"),
        lambda d: str(d / "empty"), ("MNIST",)),
    Row("mnist-unreadable", lambda d: train(d, "data.name=mnist", f"data.root={d}", "data.verify=false"),
        lambda d: str(d / "mnist" / "raw" / "train-"), ("Permission denied",),
        setup=lambda d, mp: fake_mnist(d, 0o000), runner="unprivileged"),
    Row("image-unreadable", imagefolder_train, lambda d: str(d / "images" / "train" / "a" / "1.png"),
        ("Permission denied",), setup=lambda d, mp: (imagefolder(d / "images") / "train/a/1.png").chmod(0),
        runner="unprivileged"),
    Row("class-folder-unreadable", imagefolder_train, lambda d: str(d / "images" / "test" / "b"),
        ("Permission denied",), setup=lambda d, mp: (imagefolder(d / "images") / "test/b").chmod(0),
        runner="unprivileged"),
    Row("image-decompression-bomb", imagefolder_train, lambda d: str(d / "images" / "test" / "a" / "0.png"),
        ("too large to decode safely",),
        setup=lambda d, mp: (imagefolder(d / "images"), mp.setattr(Image, "MAX_IMAGE_PIXELS", 20))),
    Row("image-float-pixels", imagefolder_train, lambda d: str(d / "images" / "train" / "a" / "0.tif"),
        ("floating-point pixels",),
        setup=lambda d, mp: (imagefolder(d / "images"), Image.fromarray(np.zeros((8, 8), np.float32)).save(
            d / "images" / "train" / "a" / "0.tif"))),
    Row("image-not-an-image", imagefolder_train, lambda d: str(d / "images" / "train" / "b" / "2.png"),
        ("not a readable image",),
        setup=lambda d, mp: write(imagefolder(d / "images") / "train" / "b" / "2.png", b"not a png")),
    # --- a full disk or a file-size limit in the middle of a run: stop, keep the last good files
    Row("weights-write-fails", lambda d: train(d, "train.epochs=2", "train.max_steps_per_epoch=2"),
        lambda d: str(d / "runs" / "run" / "weights" / "last.pt"), ("file-size limit", "still holds"),
        setup=file_size_limit_after(1), kept=kept_epoch_one),
    Row("checkpoint-write-fails",
        lambda d: train(d, "train.epochs=1", "train.max_steps_per_epoch=4", "train.checkpoint_every=1", "train.batch_size=32",
                        "train.keep_checkpoints=9"),
        "step-00000003", ("file-size limit", "step-00000002 is intact"),
        setup=file_size_limit_after(2), kept=kept_two_checkpoints),
    # --- evaluate / figures of a damaged run folder
    Row("evaluate-missing-run", lambda d: ["evaluate", str(d / "nowhere")], lambda d: str(d / "nowhere"),
        ("not a finished visionlaunch run folder",)),
    Row("evaluate-data-unknown-key", lambda d: ["evaluate", str(d / "run"), "--data", "bogus_key=1"], "'bogus_key'",
        ("Valid keys: name, root, path",), not_says=("augment", "tracker"), needs_run=True),
    Row("evaluate-corrupt-run-yaml", lambda d: ["evaluate", str(d / "run")], lambda d: str(d / "run" / "run.yaml"),
        ("not valid UTF-8 YAML",), needs_run=True, setup=lambda d, mp: write(d / "run" / "run.yaml", "a: [b\n")),
    Row("figures-corrupt-run-yaml", lambda d: ["figures", str(d / "run")], lambda d: str(d / "run" / "run.yaml"),
        ("not a mapping",), needs_run=True, setup=lambda d, mp: write(d / "run" / "run.yaml", "- a list\n")),
    Row("evaluate-plain-state-dict", lambda d: ["evaluate", str(d / "run")], lambda d: str(weights_file(d)),
        ("a plain state_dict",), needs_run=True, setup=replace_weights(lambda ckpt: ckpt["model"])),
    Row("evaluate-weights-list", lambda d: ["evaluate", str(d / "run")], lambda d: str(weights_file(d)),
        ("is a list",), needs_run=True, setup=replace_weights([torch.zeros(3)])),
    Row("evaluate-weights-foreign-pickle", lambda d: ["evaluate", str(d / "run")], lambda d: str(weights_file(d)),
        ("refuses to load",), not_says=("weights_only",), needs_run=True,
        setup=replace_weights({"model": np.zeros(3)})),
    Row("evaluate-weights-truncated", lambda d: ["evaluate", str(d / "run")], lambda d: str(weights_file(d)),
        ("cannot read the weights file",), needs_run=True, setup=replace_weights(b"truncated")),
    Row("evaluate-weights-empty", lambda d: ["evaluate", str(d / "run")], lambda d: str(weights_file(d)),
        ("cannot read the weights file",), not_says=("Errno",), needs_run=True, setup=replace_weights(b"")),
    Row("figures-weights-of-another-model", lambda d: ["figures", str(d / "run")], lambda d: str(weights_file(d)),
        ("do not fit model",), needs_run=True,
        setup=replace_weights(lambda ckpt: {**ckpt, "model": {"w": torch.zeros(2)}})),
    # --- report, compare
    Row("report-missing-run", lambda d: ["report", str(d / "nope")], lambda d: str(d / "nope"), ("does not exist",)),
    Row("report-into-unwritable-folder", lambda d: ["report", str(d / "run")],
        lambda d: str(d / "run" / "report.html"), ("Permission denied",), needs_run=True, setup=unwritable_folder,
        runner="unprivileged"),
    Row("compare-one-run", lambda d: ["compare", str(d / "run")], "at least two run folders", needs_run=True),
    Row("compare-missing-run", lambda d: ["compare", str(d / "run"), str(d / "missing")], lambda d: str(d / "missing"),
        ("does not exist",), needs_run=True),
    Row("compare-same-run-twice", lambda d: ["compare", str(d / "run"), str(d / "run")], lambda d: str(d / "run"),
        ("more than once",), needs_run=True,
        setup=lambda d, mp: shutil.copytree(d / "run", d / "run2")),
    Row("compare-out-under-a-file", lambda d: ["compare", str(d / "run"), str(d / "run2"), "--out",
                                               str(d / "a_file" / "c.html")],
        lambda d: str(d / "a_file"), ("is a file, not a folder",), needs_run=True,
        setup=lambda d, mp: (shutil.copytree(d / "run", d / "run2"), write(d / "a_file", ""))),
    Row("compare-into-unwritable-folder", lambda d: ["compare", str(d / "run"), str(d / "run2"), "--out",
                                                     str(d / "ro" / "c.html")],
        lambda d: str(d / "ro" / "c"), ("Permission denied",), needs_run=True, runner="unprivileged",
        setup=lambda d, mp: (shutil.copytree(d / "run", d / "run2"), (d / "ro").mkdir(), (d / "ro").chmod(0o555))),
    # --- ablations
    Row("ablation-missing", lambda d: ["ablate", str(d / "none.yaml")], lambda d: str(d / "none.yaml"),
        ("does not exist",)),
    Row("ablation-list", lambda d: ["ablate", str(d / "list.yaml")], lambda d: str(d / "list.yaml"),
        ("must hold a mapping",), setup=lambda d, mp: write(d / "list.yaml", "- a\n- b\n")),
    Row("ablation-name-too-long", lambda d: ["ablate", str(d / "a.yaml"), "--out", str(d / "out")],
        lambda d: str(d / "a.yaml"), ("bytes long", "Nothing was written"),
        setup=lambda d, mp: write_ablation(d / "a.yaml", base=str(FCN), variants=[{"name": "v" * 240}])),
    Row("ablation-unknown-only", lambda d: ["ablate", str(d / "a.yaml"), "--dry-run", "--only", "lr-0.3"], "'lr-0.3'",
        ("has no run or setting",),
        setup=lambda d, mp: write_ablation(d / "a.yaml", base=str(FCN), grid={"optim.lr": [0.1]})),
    *[Row(f"ablation-{case.replace(' ', '-')}", lambda d: ["ablate", str(d / "bad.yaml"), "--out", str(d / "out")],
          lambda d: str(d / "bad.yaml"), (expected,),
          setup=lambda d, mp, tree=tree: write_ablation(d / "bad.yaml", **tree)) for case, (tree, expected) in
      BAD_FILES.items()],
    # --- predict and export: archives that cannot be read, outputs that must not be replaced
    Row("predict-zip-holding-only-a-zip", lambda d: predict(d, str(d / "outer.zip")), lambda d: str(d / "outer.zip"),
        ("outer.zip:inner.zip", "pass it as a PATH of its own"), not_says=("every file in it was tried",),
        needs_run=True, setup=lambda d, mp: zip_of(d / "outer.zip", {
            "inner.zip": zip_of(d / "inner.zip", {"a.png": png_bytes()}).read_bytes()})),
    Row("predict-encrypted-zip-member", lambda d: predict(d, str(d / "secret.zip")), lambda d: str(d / "secret.zip"),
        ("encrypted",), needs_run=True, setup=lambda d, mp: zip_of(d / "secret.zip", {"a.png": png_bytes()}, flags=1)),
    Row("predict-unsupported-zip-method", lambda d: predict(d, str(d / "wavpack.zip")),
        lambda d: str(d / "wavpack.zip"), ("a method Python cannot read",), needs_run=True,
        setup=lambda d, mp: zip_of(d / "wavpack.zip", {"a.png": png_bytes()}, method=97)),
    Row("predict-archive-unreadable", lambda d: predict(d, str(d / "locked.zip")), lambda d: str(d / "locked.zip"),
        ("Permission denied",), not_says=("truncated or damaged",), needs_run=True, runner="unprivileged",
        setup=lambda d, mp: zip_of(d / "locked.zip", {"a.png": png_bytes()}).chmod(0)),
    Row("predict-subfolder-unreadable", lambda d: predict(d, str(d / "photos")), lambda d: str(d / "photos" / "sub"),
        ("cannot be listed", "Permission denied"), needs_run=True, runner="unprivileged",
        setup=lambda d, mp: (write(d / "photos" / "sub" / "a.png", png_bytes()), (d / "photos" / "sub").chmod(0))),
    Row("predict-out-socket", lambda d: predict(d, str(d / "a.png"), "--out", str(d / "out.sock")),
        lambda d: str(d / "out.sock"), ("is a socket", "Nothing was written"), needs_run=True,
        setup=lambda d, mp: (write(d / "a.png", png_bytes()), socket_at(d / "out.sock"))),
    Row("predict-out-dangling-link", lambda d: predict(d, str(d / "a.png"), "--out", str(d / "out.csv")),
        lambda d: str(d / "out.csv"), ("a dangling link",), needs_run=True,
        setup=lambda d, mp: (write(d / "a.png", png_bytes()), (d / "out.csv").symlink_to(d / "nowhere" / "x.csv"))),
    Row("predict-out-full-device", lambda d: predict(d, str(d / "a.png"), "--out", str(d / "full")),
        lambda d: str(d / "full"), ("No space left on device",), needs_run=True,
        setup=lambda d, mp: (write(d / "a.png", png_bytes()), device_like_dev_full(d / "full"))),
    Row("export-out-socket", lambda d: ["export", str(d / "run"), "--format", "torchscript", "--out",
                                        str(d / "out.sock")],
        lambda d: str(d / "out.sock"), ("is a socket",), needs_run=True, setup=lambda d, mp: socket_at(d / "out.sock")),
    # --- prepare, submit
    Row("prepare-ffcv-option-without-ffcv", lambda d: ["prepare", "--dataset", "mnist"], "--dataset",
        ("only in its ffcv form",)),
    Row("prepare-ffcv-without-dataset", lambda d: ["prepare", "ffcv"], "--dataset NAME",
        ("needs --dataset NAME or --config FILE",)),
    Row("submit-resume-missing", lambda d: ["submit", "--resume", str(d / "missing")], lambda d: str(d / "missing"),
        ("there is no such run folder",)),
    Row("submit-resume-with-train-args", lambda d: ["submit", "--resume", str(d), "--", "--config", str(FCN)],
        "--resume", ("takes no training arguments",)),
]


# ---------------------------------------------------------------------------------------------------- runners


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One tiny finished run (two optimizer steps on the embedded MNIST sample), copied by the rows that need it."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, root)
        assert main(train(root, "train.epochs=1", "train.max_steps_per_epoch=2")) == 0
    return root / "runs" / "run"


def _snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in root.rglob("*")}


def _prepare(row: Row, d: Path, mp: pytest.MonkeyPatch, finished_run: Path | None) -> dict:
    d.mkdir(parents=True)
    if row.needs_run:
        shutil.copytree(finished_run, d / "run")
    if row.setup:
        row.setup(d, mp)
    return _snapshot(d)


def _run_in_process(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        except BaseException:  # what would reach the user as a traceback
            traceback.print_exc(file=err)
            code = 1
    return code, err.getvalue()


_CHILD = """
import contextlib, io, json, sys, traceback
from visionlaunch.launch.cli import main
results = {}
for row_id, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc(file=err)
            code = 1
    results[row_id] = [code, err.getvalue()]
print(json.dumps(results))
"""


def _unprivileged_prefix() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    # Root keeps its uid but loses the capabilities that override file permissions, so chmod 000 denies it too.
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def unprivileged_results(tmp_path_factory, finished_run) -> dict[str, tuple[int, str, Path, dict]]:
    """The unprivileged rows, run together in one child process (one start-up instead of one per row)."""
    prefix = _unprivileged_prefix()
    if prefix is None:
        pytest.skip("permission cases need setpriv (util-linux) when the tests run as root")
    root = tmp_path_factory.mktemp("unprivileged")
    rows = [row for row in ROWS if row.runner == "unprivileged"]
    prepared = {}
    with pytest.MonkeyPatch.context() as mp:
        for row in rows:
            d = root / row.id
            prepared[row.id] = (d, _prepare(row, d, mp, finished_run))
    env = {**os.environ, "VISIONLAUNCH_CACHE": str(root / "cache"), "WANDB_MODE": "disabled", "MPLBACKEND": "Agg"}
    proc = subprocess.run([*prefix, sys.executable, "-c", _CHILD, json.dumps({r.id: r.argv(prepared[r.id][0])
                                                                             for r in rows})],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {row_id: (code, err, *prepared[row_id]) for row_id, (code, err) in results.items()}


@pytest.fixture
def restore_limits():
    """A row may lower the file-size limit of this process: ignore SIGXFSZ meanwhile, restore both after."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    signal.signal(signal.SIGXFSZ, handler)


_TEMPORARY = re.compile(r"(^\..*\.tmp$)|(^\.tmp-)|(^\.old-)")


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, tmp_path, monkeypatch, request, restore_limits):
    if row.runner == "unprivileged":
        code, err, d, before = request.getfixturevalue("unprivileged_results")[row.id]
    else:
        d = tmp_path / "case"
        run = request.getfixturevalue("finished_run") if row.needs_run else None
        before = _prepare(row, d, monkeypatch, run)
        code, err = _run_in_process(row.argv(d))
        resource.setrlimit(resource.RLIMIT_FSIZE, restore_limits)  # the row may have lowered it
    culprit = row.culprit(d) if callable(row.culprit) else row.culprit
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    message = err[err.index("visionlaunch: error:"):] if "visionlaunch: error:" in err else ""
    assert message, err[-3000:]
    assert "\n\n" not in message.strip(), message  # one paragraph
    assert culprit in message, (culprit, message)
    for text in row.says:
        assert text in message, (text, message)
    for text in row.not_says:
        assert text not in message, (text, message)
    if "named above" in message:  # then they are: each on a line of its own before the error
        assert "skipped " in err[:err.index("visionlaunch: error:")], err
    after = _snapshot(d)
    if row.kept is None:
        assert {k: v for k, v in after.items() if before.get(k, "new") != v} == {}, "files were left behind"
    else:
        row.kept(d)
        assert not [p for p in after if _TEMPORARY.search(Path(p).name)], "temporary files were left behind"


# ------------------------------------------------------------------------ the same classes, beyond exit 2


def test_config_errors_come_before_torch_is_imported(tmp_path):
    """`visionlaunch train` with a bad key answers at once: the config is validated before torch is loaded."""
    code = ("import sys\nfrom visionlaunch.launch.cli import main\n"
            f"rc = main(['train', '--config', {str(FCN)!r}, 'bad.key=1'])\n"
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr[-2000:]
    assert "unknown key 'bad'" in proc.stderr and "Traceback" not in proc.stderr


def test_environment_errors_are_one_paragraph_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from visionlaunch.launch import cli

    def fail(exc):
        def run(args, argv):
            raise exc
        monkeypatch.setattr(cli, "_models", run)  # the command main() runs for `visionlaunch models`
        return cli.main(["models"])

    assert fail(OSError(28, "No space left on device", "/x/metrics.jsonl")) == 2
    err = capsys.readouterr().err
    assert "/x/metrics.jsonl: No space left on device. The disk is full" in err and "Traceback" not in err
    assert fail(yaml.YAMLError("bad")) == 2
    assert fail(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")) == 2
    assert fail(Image.DecompressionBombError("Image size (1 pixels) exceeds limit")) == 2
    assert "too large to decode safely" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug: traceback, exit 1
        fail(ZeroDivisionError("division by zero"))
    with pytest.raises(KeyError):
        fail(KeyError("step"))


def test_a_cache_that_cannot_be_written_only_costs_speed(tmp_path, restore_limits):
    """The dataset cache under a file-size limit (as on a full disk): a warning, the data, and no file left."""
    from visionlaunch.datasets.load import cached
    from visionlaunch.datasets.imageset import ImageSet

    data = ImageSet(images=torch.zeros(200, 1, 28, 28, dtype=torch.uint8), labels=torch.zeros(200, dtype=torch.int64),
                    classes=["0"], name="mnist", source="test")
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    with pytest.warns(RuntimeWarning, match="could not write dataset cache file .*File too large"):
        got = cached(tmp_path / "cache", "mnist", "train", str(source), [source], lambda: data, verified=True)
    assert got is data
    assert list((tmp_path / "cache").iterdir()) == []  # no partial cache file, no temporary file


def test_short_runs_train_with_onecycle(tmp_path, capsys):
    """train.max_steps_per_epoch=2 train.epochs=2 crashed in PyTorch's OneCycleLR (a one-step warm-up)."""
    assert main(train(tmp_path, "train.epochs=2", "train.max_steps_per_epoch=2", "schedule.name=onecycle")) == 0
    lines = [json.loads(line) for line in (tmp_path / "runs" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in lines if r["kind"] == "final"] == [4]


def test_resume_auto_skips_a_checkpoint_whose_metadata_lacks_keys(tmp_path, capsys):
    """train.resume=auto falls back to the previous complete checkpoint, and says so."""
    args = train(tmp_path, "train.epochs=2", "train.max_steps_per_epoch=2", "train.resume=auto")
    assert main(args) == 0
    run = tmp_path / "runs" / "run"
    newest = complete_checkpoints(run / "checkpoints")[-1]
    meta = json.loads((newest / "visionlaunch.json").read_text())
    del meta["step"]
    (newest / "visionlaunch.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"skipped the damaged checkpoint(s) {newest.name} (its visionlaunch.json lacks step)" in err
    assert "resuming from" in err and "step-00000002" in err
    finals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in finals if r["kind"] == "final"] == [4]
