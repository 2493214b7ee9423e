"""Checkpoint and resume in one process: a run stopped by SIGTERM at a random step, or SIGKILLed while writing a
checkpoint, resumes (train.resume=auto) to the same final weights, EMA weights and metrics.jsonl as a run that
was never interrupted; checkpoints it cannot continue are refused before any step, naming the problem.

The runs carry every kind of state across the cut: BatchNorm buffers, dropout (global RNG), augmentation (the
pipeline's own generator), momentum, the EMA and the OneCycle schedule."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.run_helpers import (FAULT_TRAIN_PY, STATEFUL, assert_same_records, env, max_weight_difference, records,
                               require_mnist, run, train_args)
from visionlaunch.trainers.data import make_loader
from visionlaunch.launch.cli import main
from visionlaunch.trainers.checkpoint import complete_checkpoints

STEPS = 2 * (1700 // 50)  # two epochs of 34 optimizer steps


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The uninterrupted run."""
    data = require_mnist()
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAUNCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("WANDB_MODE", "disabled")
        assert main(["train", *train_args(data, out, "ref", *STATEFUL)]) == 0
    return out / "ref"


def _assert_same_run(ref_dir, run_dir, note=""):
    for which in ("last", "best", "ema_last", "ema_best"):
        assert max_weight_difference(ref_dir, run_dir, which) <= 1e-6, f"{which} {note}"
    assert_same_records(records(ref_dir), records(run_dir), tol=1e-6)


def test_checkpoints_every_n_steps_and_at_epoch_ends_keep_the_last_k(ref):
    # checkpoint_every=6 and keep_checkpoints=2: step 66 (every 6) and step 68 (the last epoch's end).
    assert [p.name for p in complete_checkpoints(ref / "checkpoints")] == ["step-00000066", "step-00000068"]
    assert not list((ref / "checkpoints").glob(".tmp-*"))
    meta = json.loads((ref / "checkpoints" / "step-00000068" / "visionlaunch.json").read_text())
    assert meta["finished"] and meta["epoch"] == 2 and meta["step_in_epoch"] == 0 and meta["world_size"] == 1


def test_sigterm_at_a_random_step_then_resume_gives_the_uninterrupted_run(ref, tmp_path, shared_data):
    after = random.randint(2, STEPS - 20)  # leaves >= 20 slowed steps for the signal to land in
    args = train_args(shared_data, tmp_path, "cut", *STATEFUL, "train.resume=auto")
    # A real signal from outside, to a real training process (slowed down so the signal lands mid-run).
    proc = subprocess.Popen([sys.executable, str(FAULT_TRAIN_PY), *args], env=env(VL_TEST_FAULT="sleep=0.03"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"kind": "step"') >= after:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, f"signal after step {after}: {stderr[-3000:]}"
    assert "received SIGTERM" in stderr and "train.resume=auto" in stderr
    stopped = complete_checkpoints(tmp_path / "cut" / "checkpoints")[-1]
    assert 0 < int(stopped.name.split("-")[1]) < STEPS

    assert main(["train", *args]) == 0
    _assert_same_run(ref, tmp_path / "cut", f"(signal after step {after})")


@pytest.mark.parametrize("save", [1, random.randint(2, 5)], ids=["first-save", "later-save"])
def test_sigkill_while_writing_a_checkpoint_keeps_the_last_good_one(ref, tmp_path, shared_data, capsys, save):
    args = train_args(shared_data, tmp_path, "killed", *STATEFUL, "train.resume=auto")
    proc = run([sys.executable, str(FAULT_TRAIN_PY), *args], VL_TEST_FAULT=f"action=kill_in_checkpoint,save={save}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    folder = tmp_path / "killed" / "checkpoints"
    torn = folder / f".tmp-step-{6 * save:08d}"
    assert (torn / "model.safetensors").is_file() and not (torn / "visionlaunch.json").exists()
    good = complete_checkpoints(folder)
    assert [p.name for p in good] == [f"step-{6 * s:08d}" for s in range(max(1, save - 2), save)]

    capsys.readouterr()
    # Resumed with the other loader backend: both feed the same batches, mid-epoch too.
    assert main(["train", *args, "data.loader=torch", "data.num_workers=0"]) == 0
    err = capsys.readouterr().err
    if good:
        assert f"resuming from {good[-1]}" in err
    else:  # killed before any checkpoint was complete: the run starts again in its folder
        assert "no complete checkpoint" in err
    _assert_same_run(ref, tmp_path / "killed", f"(killed in save {save})")
    assert not list(folder.glob(".tmp-*"))  # the torn folder was cleaned up


def _copy_of(ref, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(ref, run_dir)
    return run_dir


def _damage_model(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _drop_rank_state(ckpt):
    (ckpt / "rank_state_0.pt").unlink()


def _garble_meta(ckpt):
    (ckpt / "visionlaunch.json").write_text('{"format": 1, "step": ')


def _garble_rng(ckpt):
    (ckpt / "random_states_0.pkl").write_bytes(b"not a pickle")


def _other_world(ckpt):
    meta = json.loads((ckpt / "visionlaunch.json").read_text())
    meta["world_size"] = 2
    (ckpt / "visionlaunch.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, overrides, expected", [
    (None, ["model.args={hidden: [64], batch_norm: true, dropout: 0.2}"], "model.args: checkpoint"),
    (None, ["train.batch_size=25"], "train.batch_size: checkpoint 50, now 25"),
    (_damage_model, [], "cannot load the checkpoint"),
    (_drop_rank_state, [], "partial: rank_state_0.pt missing"),
    (_garble_meta, [], "incomplete or corrupt"),
    (_garble_rng, [], "cannot load the checkpoint"),
    (_other_world, [], "written by 2 processes and this run has 1"),
], ids=["other-model", "other-batch", "truncated-model", "missing-rank-state", "torn-meta", "corrupt-rng",
        "other-process-count"])
def test_resume_refuses_checkpoints_it_cannot_continue_before_any_step(ref, tmp_path, shared_data, capsys,
                                                                      damage, overrides, expected):
    run_dir = _copy_of(ref, tmp_path)
    ckpt = run_dir / "checkpoints" / "step-00000066"
    if damage:
        damage(ckpt)
    before = (run_dir / "metrics.jsonl").read_bytes()
    code = main(["train", *train_args(shared_data, tmp_path, "copy", *STATEFUL, *overrides,
                                      f"train.resume={ckpt}")])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # nothing ran, and the run folder is kept


def test_resume_from_something_that_is_not_a_checkpoint(tmp_path, shared_data, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["train", *train_args(shared_data, tmp_path, "x", f"train.resume={tmp_path / 'empty'}")])
    assert code == 2 and "is not a checkpoint folder" in capsys.readouterr().err


def test_resume_auto_of_a_finished_run_trains_nothing_more(ref, tmp_path, shared_data, capsys):
    run_dir = _copy_of(ref, tmp_path)
    assert main(["train", *train_args(shared_data, tmp_path, "copy", *STATEFUL, "train.resume=auto")]) == 0
    assert "is the end of training" in capsys.readouterr().err
    _assert_same_run(ref, run_dir)


@pytest.mark.parametrize("kind", ["tensor", "torch"])
def test_an_epoch_resumed_at_batch_k_yields_exactly_the_remaining_batches(kind):
    images = torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1)
    labels = torch.arange(103)
    for rank in (0, 1):
        make = lambda: make_loader(kind, images, labels, 7, train=True, seed=4, device=torch.device("cpu"),
                                   rank=rank, world=2, num_workers=0)
        full, part = make(), make()
        full.set_epoch(3)
        whole = [y.tolist() for _, y in full]
        part.set_epoch(3, start_batch=5)
        assert [y.tolist() for _, y in part] == whole[5:] and len(part) == len(whole)
