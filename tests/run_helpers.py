"""Helpers shared by the distributed, checkpoint and preemption tests: small real MNIST runs launched the way a
user launches them, and comparisons of two run folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from visionlaunch.runfolder import read_metrics
from visionlaunch.trainers import losses

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train.py"
FAULT_TRAIN_PY = REPO / "tests" / "fault_train.py"
FCN = REPO / "configs" / "mnist_fcn.yaml"

# Real MNIST, small: 1,700 training images (300 held out for validation), 500 test images, a 32-unit MLP.
SMALL = ["data.train_subset=2000", "data.test_subset=500", "data.val_size=300", "train.epochs=2",
         "train.progress=false", "report.figures=false", "train.log_every=1"]
# Equivalence across process counts needs a model without BatchNorm (per-rank statistics) and without random
# draws (dropout, augmentation: one stream per rank), in fp32 (bf16 rounds each rank's and each micro-batch's
# partial gradient on its own; train.precision=auto would choose bf16 on a CPU that has it).
DETERMINISTIC = ["model.args={hidden: [32], batch_norm: false, dropout: 0}", "augment.crop_padding=0",
                 "train.batch_size=48", "train.precision=fp32"]
# Everything that carries state across a checkpoint: BatchNorm buffers, dropout (global RNG), augmentation
# (the pipeline's generator), EMA, momentum.
STATEFUL = ["model.args={hidden: [32], batch_norm: true, dropout: 0.2}", "augment.crop_padding=1",
            "train.batch_size=50", "train.ema_decay=0.9", "train.checkpoint_every=6"]

# Fields that measure the wall clock, not the computation.
TIMING = {"time", "seconds", "images_per_s"}


def train_args(data_root: Path, out_dir: Path, name: str, *overrides: str) -> list[str]:
    return ["--config", str(FCN), f"data.root={data_root}", f"output.dir={out_dir}", f"output.name={name}", *SMALL,
            *overrides]


def free_port() -> int:
    with socket.socket() as s:  # not the default 29500: other jobs on the machine may hold it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_launcher(script: Path = TRAIN_PY, *launch_flags: str) -> list[str]:
    """The CPU recipe from the README (with ACCELERATE_USE_CPU=1 from env()): a real 2-rank gloo group."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(free_port()), *launch_flags, str(script)]


def env(**extra: str | None) -> dict:
    """The test's environment (its data cache, WANDB_MODE) for a child; a None value removes a variable."""
    e = {k: v for k, v in os.environ.items() if k != "VL_TEST_FAULT"}
    e.update({"PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1"})
    for key, value in extra.items():
        if value is None:
            e.pop(key, None)
        else:
            e[key] = value
    return e


def run(cmd: list[str], timeout: float = 240, **env_extra: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(**env_extra), timeout=timeout, cwd=REPO)


def weights(run_dir: Path, which: str = "last") -> dict:
    return torch.load(run_dir / "weights" / f"{which}.pt", map_location="cpu", weights_only=True)["model"]


def max_weight_difference(a: Path, b: Path, which: str = "last") -> float:
    wa, wb = weights(a, which), weights(b, which)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def records(run_dir: Path, kind: str | None = None) -> list[dict]:
    """metrics.jsonl without the wall-clock fields, optionally one kind of record."""
    out = [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir / "metrics.jsonl")]
    return [r for r in out if kind is None or r["kind"] == kind]


def require_mnist() -> Path:
    """The shared real-data folder, with the `shared_data` fixture's rule (skip locally, fail in CI), for
    module-scoped fixtures that cannot use a function-scoped one."""
    import pytest

    from tests.conftest import SHARED_DATA
    if not (SHARED_DATA / "mnist" / "raw").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real test data not found at {SHARED_DATA}; CI must have ../shared/data")
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


def assert_same_records(a: list[dict], b: list[dict], tol: float) -> None:
    """Same records in the same order; numbers equal within `tol` (absolute)."""
    assert len(a) == len(b), (len(a), len(b))
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), (ra, rb)
        for key in ra:
            va, vb = ra[key], rb[key]
            if isinstance(va, float) or isinstance(vb, float):
                assert abs(va - vb) <= tol, (key, ra, rb)
            else:
                assert va == vb, (key, ra, rb)


def signal_at_training_step(monkeypatch, signum: int, at: int):
    """Deliver `signum` to this very process (as a scheduler would) in the `at`-th training forward of the loss;
    returns a function that takes the fault away again (for the resumed run)."""
    forward, calls = losses.CrossEntropyLoss.forward, {"n": 0}

    def signalling_forward(self, logits, targets):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == at:
                os.kill(os.getpid(), signum)
        return forward(self, logits, targets)

    monkeypatch.setattr(losses.CrossEntropyLoss, "forward", signalling_forward)
    return lambda: monkeypatch.setattr(losses.CrossEntropyLoss, "forward", forward)
