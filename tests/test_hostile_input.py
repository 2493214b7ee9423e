"""Hostile input beyond the rows of test_bad_input_matrix.py: what they must show needs more than exit status 2 and
one paragraph. An alias bomb's memory is measured; a closed output pipe ends quietly; a real (tmpfs) disk fills up
during a checkpoint; a dataset with a constant channel trains; the strict YAML reader keeps what YAML allows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO
from tests.test_bad_input_matrix import alias_bomb, imagefolder_train, train
from visionlaunch.atomic import atomic_write_text
from visionlaunch.config import load_config
from visionlaunch.datasets.stats import STD_FLOOR
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.runfolder import MetricsWriter, complete_checkpoints
from visionlaunch.trainers import checkpoint
from visionlaunch.trainers.trackers import CsvTracker
from visionlaunch.yamlfiles import YamlRefused, read_yaml


def _child_env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "VISIONLAUNCH_CACHE": str(tmp_path / "cache"),
            "WANDB_MODE": "disabled", "MPLBACKEND": "Agg"}


# ------------------------------------------------------------------------------------------- YAML alias bomb


PEAK_MEMORY_MB = 300  # the refusal takes ~35 MB; validating the bomb's 387 million values took gigabytes


def test_an_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    """Nine levels of nine aliases (9**9 values if expanded): refused at once, the peak memory of the command
    measured. The child may not map more than 2 GiB, so that a regression fails fast instead of filling memory."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(8) + "train:\n  epochs: &e [" + ", ".join(["*l7"] * 9) + "]\n")
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from visionlaunch.launch.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\nsys.exit(status)")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--config", str(bomb)], capture_output=True, text=True,
                          env=_child_env(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{bomb} expands to more than 100000 values through its aliases" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 1000
    # The peak resident memory of the command itself (VmHWM, kB): ru_maxrss would include the forked copy of pytest.
    peak_mb = int(proc.stdout.split()[-1]) / 1024
    assert peak_mb < PEAK_MEMORY_MB, f"peak memory {peak_mb:.0f} MB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]  # no run folder, no cache


def test_the_strict_reader_keeps_what_yaml_allows():
    # Merge keys: overriding a merged key is what they are for, not a duplicate.
    assert read_yaml("base: &b {epochs: 2, seed: 1}\ntrain:\n  <<: *b\n  epochs: 3\n") == {
        "base": {"epochs": 2, "seed": 1}, "train": {"epochs": 3, "seed": 1}}
    # Anchors used a few times, and an empty document.
    assert read_yaml("a: &x [1, 2]\nb: *x\nc: *x\n") == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}
    assert read_yaml("") is None
    with pytest.raises(YamlRefused, match=r"'lr' twice in one mapping \(lines 3 and 4\)"):
        read_yaml("train: {epochs: 1}\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(YamlRefused, match="contains itself"):
        read_yaml("tags: &a [x, *a]\n")
    with pytest.raises(YamlRefused, match="nests deeper than 64 levels"):
        read_yaml("a: " + "[" * 65 + "]" * 65)
    read_yaml("a: " + "[" * 60 + "]" * 60)  # deep, but within the bound
    with pytest.raises(YamlRefused, match=r"holds more than 100000 values \(in the value on line 2\)"):
        read_yaml("a: 1\nb: [" + ", ".join(["0"] * 100_001) + "]\n")  # written out, no alias: said so


def test_numbers_stay_lax_where_yaml_is_not_strict():
    """Booleans are refused for numbers, but an int for a float, and 1e-3 (a string to YAML 1.1) still work."""
    cfg = load_config(None, ["optim.lr=1e-3", "schedule.div_factor=10", "train.epochs=3", "data.val_size=0.1",
                             "augment.crop_scale=[0.5, 1]", "augment.flip=true"])
    assert cfg.optim.lr == 0.001 and cfg.schedule.div_factor == 10.0 and cfg.train.epochs == 3
    assert cfg.data.val_size == 0.1 and cfg.augment.crop_scale == (0.5, 1.0) and cfg.augment.flip is True
    for bad in ("train.seed=true", "optim.momentum=false", "augment.crop_scale=[true, 1]", "schedule.min_lr=.inf",
                "data.max_upscale=.nan", "optim.betas=[0.9, .inf]"):
        with pytest.raises(VisionlaunchError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config(None, [bad])


# ---------------------------------------------------------------------------------------- closed output pipe


@pytest.mark.parametrize("argv, status", [(["show-config"], 141), (["show-config", "--keys"], 141),
                                          (["models"], 141), (["--help"], 0)], ids=lambda v: str(v))
def test_a_closed_output_pipe_ends_quietly(tmp_path, argv, status):
    """`visionlaunch ... | head -1`, with head already gone: no traceback, no 'Exception ignored', the status of a
    program that SIGPIPE ended (128 + 13), as `yes | head -1` ends."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "visionlaunch", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=_child_env(tmp_path), cwd=tmp_path, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (status, "")


# -------------------------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs of its own (root only; skipped where mounting is not permitted), always unmounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True, timeout=30)


def fill_disk_after(saves: int, disk: Path, leave: int, mp: pytest.MonkeyPatch) -> None:
    """After the `saves`-th checkpoint, a file takes all of `disk`'s free space but `leave` bytes."""
    save, calls = checkpoint.Checkpoints.save, [0]

    def save_then_fill(self, *args, **kwargs):
        out = save(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == saves:
            stat = os.statvfs(disk)
            (disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave))
        return out
    mp.setattr(checkpoint.Checkpoints, "save", save_then_fill)


# A 1024-unit MLP: its model.safetensors and optimizer.bin are 3.3 MB each. 3.5 MB left: the model is written and
# torch.save of the optimizer fails (a RuntimeError without errno, which was reported as an I/O error); 20 kB left:
# safetensors fails on the model (and removes its torn file).
@pytest.mark.parametrize("leave, torn", [(3_500_000, "optimizer.bin"), (20_000, "model.safetensors")])
def test_a_full_disk_during_a_checkpoint_is_named_as_such(small_disk, monkeypatch, capsys, leave, torn):
    fill_disk_after(2, small_disk, leave, monkeypatch)
    code = main(train(small_disk, "train.epochs=1", "train.max_steps_per_epoch=4", "train.checkpoint_every=1",
                      "train.batch_size=32", "train.keep_checkpoints=9", "model.args={hidden: [1024]}"))
    err = capsys.readouterr().err
    run = small_disk / "runs" / "run"
    assert code == 2, err[-3000:]
    assert f"{run}/checkpoints/.tmp-step-00000003/{torn}: No space left on device. The disk is full" in err
    assert "I/O error" not in err and "Traceback" not in err
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-00000001", "step-00000002"]
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_a_full_disk_under_the_metrics_files_names_them(small_disk):
    """metrics.jsonl and metrics.csv are appended line by line; write() names no file, the error must. Closing after
    the failure does not raise again (it would replace the first error in the trainer's clean-up)."""
    jsonl, csv = MetricsWriter(small_disk / "metrics.jsonl"), CsvTracker(small_disk / "metrics.csv")
    csv.start()
    stat = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize))
    for write, name in ((lambda: jsonl.write({"kind": "step", "loss": 1.0}), "metrics.jsonl"),
                        (lambda: csv.log({"train/loss": 1.0} | {f"x{i}": i for i in range(2000)}, step=1), "metrics.csv")):
        with pytest.raises(OSError) as raised:
            write()
        assert raised.value.filename == str(small_disk / name) and "No space left" in raised.value.strerror
    jsonl.close()
    csv.finish()


def test_a_full_disk_under_a_run_file_names_it(small_disk):
    """Run files (config.yaml, run.yaml, summaries) are written whole through a temporary file: the error names the
    file meant, not the temporary one or none, and no temporary file stays."""
    stat = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize))
    with pytest.raises(OSError) as raised:
        atomic_write_text(small_disk / "config.yaml", "train:\n  epochs: 3\n" * 1000)
    assert raised.value.filename == str(small_disk / "config.yaml") and "No space left" in raised.value.strerror
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


# ------------------------------------------------------------------------------------------ constant channel


def test_a_constant_channel_trains_with_a_floor_under_its_std(tmp_path, capsys):
    """Pure red images (red 255, blue 0 everywhere; green tells the classes apart) were refused: 'normalisation std
    values must be positive'. Now they train, and a NOTE names the channels whose std was raised."""
    for split in ("train", "test"):
        for label, green in (("a", 40), ("b", 200)):
            for i in range(4):
                pixels = np.zeros((8, 8, 3), np.uint8)
                pixels[..., 0], pixels[..., 1] = 255, green + 5 * i
                path = tmp_path / "images" / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    code = main(imagefolder_train(tmp_path, "train.epochs=2", "train.batch_size=4", "optim.lr=0.01"))
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "NOTE: channels 0, 2 of the imagefolder training images vary by less than one grey level" in err
    weights = torch.load(tmp_path / "runs" / "run" / "weights" / "last.pt", weights_only=True)
    assert weights["std"][0] == weights["std"][2] == STD_FLOOR and weights["std"][1] > 0.1
    assert all(torch.isfinite(t).all() for t in weights["model"].values())
    assert main(["evaluate", str(tmp_path / "runs" / "run")]) == 0


def test_every_yaml_file_is_read_by_the_strict_reader():
    """Config, ablation, run and report files all go through yamlfiles.read_yaml: no second, lax YAML reader."""
    src = REPO / "src" / "visionlaunch"
    lax = [str(p.relative_to(src)) for p in src.rglob("*.py") if p.name != "yamlfiles.py"
           and any(call in p.read_text() for call in ("yaml.safe_load(", "yaml.load(", "yaml.full_load("))]
    assert lax == []
