"""The GPU paths, on a real CUDA device: `pytest -m gpu` (bench/gpu_check.py runs them). Every test skips without
CUDA, so the suite passes on a CPU-only machine; CI has no GPU.

What each shows: the tensor loader keeps the dataset resident on the GPU and cuts the same rank shards as on the
CPU (and its pinned-memory fallback gives the same batches); bf16 and fp16 autocast really run the model in the
half type; fp16 loss scaling skips exactly the step whose gradient is infinite and halves the scale; channels_last
reaches the model and its weights; train.compile=true trains the compiled forward and saves plain weights; a run
stopped by SIGTERM on the GPU resumes to bitwise the uninterrupted run's weights; `visionlaunch evaluate`
reproduces a GPU run's test accuracy; FFCV's ToDevice delivers the stored pixels on the GPU.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import require_ffcv
from tests.run_helpers import FAULT_TRAIN_PY, STATEFUL, env, max_weight_difference, records, train_args
from visionlaunch.config import load_config
from visionlaunch.datasets import ImageSet
from visionlaunch.datasets.loaders import TensorLoader
from visionlaunch.launch.cli import main
from visionlaunch.trainers.checkpoint import complete_checkpoints
from visionlaunch.trainers.data import DataBundle
from visionlaunch.trainers.trainer import Trainer

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")]
CUDA = torch.device("cuda")
CNN = ["model.name=cnn", "model.args={channels: [8, 16], convs_per_stage: 1, hidden: [32], batch_norm: true}"]


def blocks(n: int, seed: int = 0) -> ImageSet:
    """A learnable 10-class set: class c is a bright 6x6 block at one of 10 places, on noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    for c in range(10):
        r, k = (c // 5) * 14 + 4, (c % 5) * 5 + 1
        images[labels == c, :, r:r + 6, k:k + 6] = 255
    return ImageSet(images, labels, [str(c) for c in range(10)], "mnist", "generated blocks (test)")


def bundle(n_train: int = 2048, n_test: int = 500) -> DataBundle:
    return DataBundle(train=blocks(n_train), val=None, test=blocks(n_test, seed=1), mean=(0.3,), std=(0.3,),
                      note="generated blocks", name="mnist", val_size=0)


def trainer(tmp_path, name: str, *overrides: str) -> Trainer:
    cfg = load_config(None, ["data.val_size=0", "train.epochs=1", "train.batch_size=64", "train.progress=false",
                             "report.figures=false", "train.log_every=1", "optim.lr=0.05", *CNN,
                             f"output.dir={tmp_path}", f"output.name={name}", *overrides])
    return Trainer(cfg, data=bundle(), argv=["test_gpu"])


def fit(t: Trainer) -> dict:
    with t:
        return t.fit()


def record_dtypes(model: torch.nn.Module) -> list:
    """Output dtypes of the model's first convolution, appended on every training forward."""
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, args, out: seen.append(out.dtype) if mod.training else None)
    return seen


def test_tensor_loader_is_resident_on_the_gpu_and_cuts_the_same_shards():
    n = 1000
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.arange(n)

    def epoch(device, rank, **kw):
        loader = TensorLoader(images, labels, 50, train=True, seed=3, device=device, rank=rank, world=2, **kw)
        loader.set_epoch(1)
        return loader, list(loader)

    for rank in range(2):
        gpu, gpu_batches = epoch(CUDA, rank)
        assert gpu.resident and gpu.images.is_cuda and gpu.labels.is_cuda and gpu.note is None
        _, cpu_batches = epoch(torch.device("cpu"), rank)
        spill, spill_batches = epoch(CUDA, rank, memory_budget=1)  # too big: pinned CPU memory, copied per batch
        assert not spill.resident and spill.images.is_pinned() and "does not fit" in spill.note
        assert len(gpu_batches) == len(cpu_batches) == len(spill_batches) == 10
        for (x, y), (xc, yc), (xs, ys) in zip(gpu_batches, cpu_batches, spill_batches):
            assert x.is_cuda and y.is_cuda and xs.is_cuda and ys.is_cuda
            assert torch.equal(y.cpu(), yc) and torch.equal(ys.cpu(), yc)  # the same samples in the same order
            assert torch.equal(x[:, 0, 0, 0].long().cpu(), yc % 256)  # each image with its own label
    shards = [torch.cat([y for _, y in epoch(CUDA, r)[1]]).cpu() for r in range(2)]
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(n))  # 1000 = 2 x 10 x 50: nothing trimmed


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_runs_the_model_in_the_half_type_and_learns(tmp_path, precision, dtype):
    t = trainer(tmp_path, precision, f"train.precision={precision}", "train.epochs=2")
    seen = record_dtypes(t.raw_model)
    final = fit(t)
    assert t.accelerator.device.type == "cuda" and next(t.raw_model.parameters()).is_cuda
    assert seen and set(seen) == {dtype}
    assert next(t.raw_model.parameters()).dtype == torch.float32  # the weights stay float32
    steps = records(tmp_path / precision, "step")
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"] and final["test_acc"] > 0.9


def test_fp16_loss_scaling_skips_the_step_with_an_infinite_gradient_and_halves_the_scale(tmp_path):
    t = trainer(tmp_path, "fp16", "train.precision=fp16")
    scaler, steps = t.accelerator.scaler, t.steps_per_epoch
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    # Start from a modest scale (public API), so that no step overflows by itself: only the poisoned one.
    scaler.load_state_dict({"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                            "_growth_tracker": 0})
    bad = 3  # the optimizer step whose gradient is made infinite
    calls = {"backward": 0, "steps": 0}
    weight = next(p for p in t.raw_model.parameters() if p.dim() == 4)

    def poison(grad):
        calls["backward"] += 1
        return torch.full_like(grad, float("inf")) if calls["backward"] == bad else grad

    weight.register_hook(poison)
    scales = []
    update = scaler.update

    def recording_update(*args, **kwargs):
        update(*args, **kwargs)
        scales.append(scaler.get_scale())

    scaler.update = recording_update
    inner = t.optimizer.optimizer  # the torch optimizer inside Accelerate's wrapper: counts the real steps
    inner.register_step_post_hook(lambda *args: calls.__setitem__("steps", calls["steps"] + 1))
    start = scaler.get_scale()
    final = fit(t)
    # One halving, at the poisoned step, and no other change (the scale grows only after 2000 clean steps).
    assert scales == [start] * (bad - 1) + [start / 2] * (steps - bad + 1)
    assert t.state.skipped_steps == 1 and final["skipped_steps"] == 1
    assert calls["steps"] == steps - 1  # the weights were not updated at the skipped step
    assert t.scheduler.last_epoch == steps - 1  # nor did the schedule advance
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())
    assert records(tmp_path / "fp16", "step")[-1]["skipped_steps"] == 1


def test_channels_last_reaches_the_model_and_gives_the_same_first_step(tmp_path):
    plain = trainer(tmp_path, "plain")
    fit(plain)
    t = trainer(tmp_path, "cl", "train.channels_last=true")
    layouts = []
    t.raw_model.register_forward_pre_hook(
        lambda mod, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    fit(t)
    assert layouts and all(layouts)
    convs = [m.weight for m in t.raw_model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) and w.shape[-1] > 1 for w in convs)
    a, b = records(tmp_path / "plain", "step"), records(tmp_path / "cl", "step")
    assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-3  # same weights, same batch: another memory layout only
    assert abs(records(tmp_path / "plain", "final")[0]["test_acc"] - records(tmp_path / "cl", "final")[0]["test_acc"]) < 0.05


def _gpu_env() -> dict:
    # Deterministic cuBLAS (a fixed workspace), so that two runs of the same steps give the same bits.
    return env(ACCELERATE_USE_CPU=None, CUBLAS_WORKSPACE_CONFIG=":4096:8")


def test_a_checkpoint_written_on_the_gpu_resumes_to_bitwise_the_same_weights(tmp_path, shared_data):
    ref_args = train_args(shared_data, tmp_path, "ref", *STATEFUL)
    ref = subprocess.run([sys.executable, str(FAULT_TRAIN_PY), *ref_args], capture_output=True, text=True,
                         env=_gpu_env(), timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "on cuda" in ref.stderr
    args = train_args(shared_data, tmp_path, "cut", *STATEFUL, "train.resume=auto")
    # SIGTERM from inside at micro-batch 40 of 68 (the second epoch), after the step-36 checkpoint.
    cut = subprocess.run([sys.executable, str(FAULT_TRAIN_PY), *args], capture_output=True, text=True,
                         env={**_gpu_env(), "VL_TEST_FAULT": "action=signal,signal=SIGTERM,step=40"}, timeout=300)
    assert cut.returncode == 75, cut.stderr[-3000:]
    stopped = complete_checkpoints(tmp_path / "cut" / "checkpoints")[-1]
    assert 34 < int(stopped.name.split("-")[1]) < 68
    resumed = subprocess.run([sys.executable, str(FAULT_TRAIN_PY), *args], capture_output=True, text=True,
                             env=_gpu_env(), timeout=300)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
    for which in ("last", "ema_last"):
        assert max_weight_difference(tmp_path / "ref", tmp_path / "cut", which) == 0.0, which


def test_evaluate_reproduces_a_gpu_runs_test_accuracy(tmp_path, shared_data, capsys):
    assert main(["train", *train_args(shared_data, tmp_path, "run", *CNN, "train.precision=bf16",
                                      "train.channels_last=true")]) == 0
    run = tmp_path / "run"
    assert "device: cuda" in (run / "run.yaml").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    acc = records(run, "final")[0]["test_acc"]
    assert "reproduced exactly" in out and f"{100 * acc:.2f}%" in out


def test_ffcv_to_device_delivers_the_stored_pixels_on_the_gpu(tmp_path):
    require_ffcv()
    from visionlaunch.ffcv_builders import FfcvLoader, write_beton

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (600, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 600)
    path = tmp_path / "rgb.beton"
    write_beton(images, labels, path, num_classes=10, dataset="rgb", split="test", progress=False)
    loader = FfcvLoader(path, 128, train=False, seed=0, device=CUDA, clone=True)
    batches = list(loader)
    assert all(x.is_cuda and y.is_cuda and x.dtype == torch.uint8 for x, y in batches)
    got = torch.cat([x for x, _ in batches]).cpu()
    assert torch.equal(got, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(torch.cat([y for _, y in batches]).cpu(), torch.from_numpy(labels).long())
    train = FfcvLoader(path, 100, train=True, seed=0, device=CUDA, crop_padding=2, flip=True, channels_last=True)
    x, y = next(iter(train))
    assert x.is_cuda and x.shape == (100, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)


def test_compile_trains_the_compiled_forward_and_saves_plain_weights(tmp_path):
    plain = trainer(tmp_path, "plain")
    fit(plain)
    t = trainer(tmp_path, "compiled", "train.compile=true")
    assert isinstance(t.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    final = fit(t)
    a, b = records(tmp_path / "plain", "step"), records(tmp_path / "compiled", "step")
    assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-3 and final["test_acc"] > 0.9
    saved = torch.load(tmp_path / "compiled" / "weights" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert saved.keys() == t.raw_model.state_dict().keys() and not any("_orig_mod" in k for k in saved)
