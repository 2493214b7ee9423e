"""Trainer overhead: training images/s of visionlaunch's trainer against a bare PyTorch loop doing the same work.

    python bench/overhead.py                                  # CPU: the mnist_cnn and cifar10_fast models
    python bench/overhead.py --models mnist_cnn --repeats 7 --steps 40
    python bench/overhead.py --set train.precision=fp32       # both sides in fp32 (default: what auto picks)
    python bench/overhead.py --models resnet18_gpu            # GPU: ResNet-18, bf16, channels_last, batch 512

Both sides get the same model (same seed, same initial weights), the same batch size, the same optimizer and
schedule (built by visionlaunch's own `build_optimizer`/`build_scheduler` from the preset), the same precision and
memory layout, and the same data: random uint8 images of the preset's shape, resident in memory on the training
device (the trainer's `tensor` loader; the bare loop indexes the same tensor). Augmentation is off on both sides
(its cost is the loader's, measured by bench/loaders.py). The bare loop is what a user would write: gather a
batch, normalise, forward under autocast, F.cross_entropy, backward (through torch.amp.GradScaler for fp16),
optimizer and scheduler step. The trainer is the real `Trainer.fit()` (Accelerate, metrics, checkpoints, per-epoch
evaluation of a 1-batch test set); its rate is the images/s it records for each training epoch (the time of the
epoch's steps only, CUDA synchronised), and the bare loop's is timed the same way.

Each run trains `--epochs` epochs of `--steps` steps on both sides, their epochs interleaved (trainer, bare,
trainer, bare, ...; the next run opens with the bare loop), so that a drift in the machine's speed hits both sides
alike; the first epoch of each side is warm-up. The ratio trainer / bare is taken for each interleaved pair of epochs
and reported as min / median / max. Prints the processor first, then one JSON object.
A benchmark, not a test: the numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from visionlaunch.config import load_config  # noqa: E402
from visionlaunch.datasets import ImageSet  # noqa: E402
from visionlaunch.datasets.stats import normalization_tensors, normalize_with  # noqa: E402
from visionlaunch.models import build_model  # noqa: E402
from visionlaunch.trainers.data import DataBundle  # noqa: E402
from visionlaunch.trainers.precision import resolve_precision  # noqa: E402
from visionlaunch.trainers.schedules import build_optimizer, build_scheduler  # noqa: E402

# name -> (preset, overrides, input shape, classes). The presets' own batch size, optimizer and layout.
SETUPS = {
    "mnist_cnn": ("configs/mnist_cnn.yaml", [], (1, 28, 28), 10),
    "cifar10_fast": ("configs/cifar10_fast.yaml", [], (3, 32, 32), 10),
    "resnet18_gpu": ("configs/cifar10_resnet18.yaml",
                     ["train.precision=bf16", "train.channels_last=true", "train.batch_size=512"], (3, 32, 32), 10),
}
# What neither side does while timed: augmentation (the loader's cost), TTA, figures, progress bars.
COMMON = ["data.val_size=0", "augment.crop_padding=0", "augment.flip=false", "augment.cutout=0",
          "augment.mixup_alpha=0", "augment.cutmix_alpha=0", "train.tta_flip=false", "train.ema_decay=0",
          "report.figures=false", "train.progress=false", "train.log_every=50"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_data(name: str, shape: tuple[int, int, int], classes: int, n_train: int, n_test: int,
                   seed: int = 0) -> DataBundle:
    """Random uint8 images of the real shape (speed does not depend on what the pixels show)."""
    g = torch.Generator().manual_seed(seed)

    def images(n):
        return ImageSet(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g),
                        torch.randint(0, classes, (n,), generator=g), [str(c) for c in range(classes)], name,
                        "random uint8 images (benchmark)")

    return DataBundle(train=images(n_train), val=None, test=images(n_test), mean=(0.5,) * shape[0],
                      std=(0.25,) * shape[0], note=f"{n_train} random {shape} images (benchmark)", name=name,
                      val_size=0)


def make_config(setup: str, steps: int, epochs: int, device: str, extra: list[str] = ()):
    preset, overrides, shape, classes = SETUPS[setup]
    cfg = load_config(REPO / preset, [*COMMON, *overrides, f"train.epochs={epochs}",
                                      *(["train.device=cpu"] if device == "cpu" else []), *extra])
    data = synthetic_data(cfg.data.name, shape, classes, steps * cfg.train.batch_size, cfg.train.batch_size)
    return cfg, data


class BareLoop:
    """The loop a user would write for the same model, data, optimizer and precision, one epoch per call."""

    def __init__(self, cfg, data, device: torch.device):
        torch.manual_seed(cfg.train.seed)  # the trainer's seed: the same initial weights
        model = build_model(cfg.model.name, data.in_shape, len(data.classes), cfg.model.args)
        self.layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.layout)
        lr = cfg.optim.peak_lr(cfg.train.batch_size)  # as the trainer: optim.lr, scaled with optim.lr_scaling
        self.optimizer = build_optimizer(self.model, cfg.optim, lr)
        self.batch, self.device, self.smoothing = cfg.train.batch_size, device, cfg.optim.label_smoothing
        self.steps = len(data.train) // self.batch
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, lr, self.steps, cfg.train.epochs)
        precision = resolve_precision(cfg.train.precision, device)  # auto: as the trainer resolves it on this device
        self.half = precision.half_dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.images, self.labels = data.train.images.to(device), data.train.labels.to(device)
        self.mean, self.std = normalization_tensors(data.mean, data.std, device)

    def epoch(self, lap=None) -> float:
        """Images/s of one training epoch. `lap(part)`, when given, is called as each part of a step ends (batch,
        inputs, forward, loss, zero_grad, backward, optimizer, schedule): bench/step_profile.py times them."""
        lap = lap or (lambda part: None)
        self.model.train()
        order = torch.randperm(len(self.labels), device=self.device)
        sync(self.device)
        t0 = time.perf_counter()
        for i in range(self.steps):
            lap(None)  # a step starts
            idx = order[i * self.batch:(i + 1) * self.batch]
            images, labels = self.images[idx], self.labels[idx]
            lap("batch")
            x = normalize_with(images, self.mean, self.std).contiguous(memory_format=self.layout)
            lap("inputs")
            with torch.autocast(self.device.type, dtype=self.half, enabled=self.half is not None):
                logits = self.forward(x)
                lap("forward")
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.smoothing)
                lap("loss")
            self.optimizer.zero_grad(set_to_none=True)
            lap("zero_grad")
            self.scaler.scale(loss).backward()
            lap("backward")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lap("optimizer")
            self.scheduler.step()
            lap("schedule")
        sync(self.device)
        return self.steps * self.batch / (time.perf_counter() - t0)


def interleaved_rates(cfg, data, device: torch.device, out_dir: Path, name: str, trainer_first: bool
                      ) -> tuple[list[float], list[float]]:
    """Images/s of each training epoch of the real trainer and of the bare loop, their epochs alternating (trainer,
    bare, trainer, bare, ... or bare first), so that a drift in the machine's speed hits both sides alike. The
    trainer's rate is the one it records (the epoch's steps only), unchanged by the bare epochs run between its
    epochs (after its end-of-epoch evaluation and checkpoint)."""
    from visionlaunch.runfolder import read_metrics
    from visionlaunch.trainers.trainer import Trainer

    output = cfg.output.model_copy(update={"dir": str(out_dir), "name": name, "overwrite": True})
    cfg = cfg.model_copy(update={"output": output})
    bare, bare_rates = BareLoop(cfg, data, device), []
    with Trainer(cfg, data=data, argv=["bench/overhead.py"]) as trainer:
        end_epoch = trainer._end_epoch

        def train_epoch_then_bare(stats):
            end_epoch(stats)
            if len(bare_rates) < cfg.train.epochs:
                bare_rates.append(bare.epoch())

        trainer._end_epoch = train_epoch_then_bare
        if not trainer_first:
            bare_rates.append(bare.epoch())
        trainer.fit()
    records = read_metrics(out_dir / name / "metrics.jsonl")
    return [r["images_per_s"] for r in records if r.get("kind") == "epoch" and r.get("split") == "train"], bare_rates


def spread(values: list[float], digits: int = 3) -> dict:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def compare(setup: str, *, steps: int, epochs: int, repeats: int, device: str, extra: list[str] = (),
            deadline: float | None = None) -> dict:
    """Trainer / bare-loop epoch pairs for one setup, from `repeats` runs of interleaved epochs (each run's first
    epoch on either side is warm-up); stops early (fewer runs) past `deadline`."""
    cfg, data = make_config(setup, steps, epochs, device, extra)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    precision = resolve_precision(cfg.train.precision, dev)
    pairs = []
    with tempfile.TemporaryDirectory(prefix="vl-overhead-") as tmp:
        for r in range(repeats):
            if deadline is not None and pairs and time.monotonic() > deadline:
                break
            # Epochs alternate within a run; which side opens alternates between runs (warmer caches).
            trainer, bare = interleaved_rates(cfg, data, dev, Path(tmp), f"run{r}", trainer_first=r % 2 == 0)
            for epoch, (t, b) in enumerate(zip(trainer, bare)):
                if epoch or epochs == 1:  # the first epoch is warm-up (allocator, cuDNN, autotuning)
                    pairs.append({"run": r, "epoch": epoch + 1, "trainer": round(t, 1), "bare": round(b, 1),
                                  "ratio": round(t / b, 4)})
    return {"setup": setup, "model": cfg.model.name, "model_args": cfg.model.args, "batch": cfg.train.batch_size,
            "optimizer": cfg.optim.name, "precision": precision.name, "precision_reason": precision.reason,
            "channels_last": cfg.train.channels_last,
            "compile": cfg.train.compile, "device": str(dev), "steps_per_epoch": steps, "epochs": epochs,
            "pairs": pairs, "ratio": spread([p["ratio"] for p in pairs]),
            "trainer_images_per_s": spread([p["trainer"] for p in pairs], 1),
            "bare_images_per_s": spread([p["bare"] for p in pairs], 1)}


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    processor = platform.processor() or platform.machine()
    try:  # the model name, e.g. "AMD EPYC"; platform.processor() is often just the architecture
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "processor": processor, "cpus": os.cpu_count(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(SETUPS), default=None,
                   help="default: mnist_cnn cifar10_fast, plus resnet18_gpu on a GPU")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default: 40 for mnist_cnn and on a "
                                                           "GPU, 8 for cifar10_fast on a CPU)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    p.add_argument("--repeats", type=int, default=5, help="runs (each of --epochs interleaved pairs) per model")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides for both sides, e.g. train.precision=fp32 (default: the preset's auto)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or (["mnist_cnn", "cifar10_fast"] + (["resnet18_gpu"] if args.device == "cuda" else []))
    report = {"benchmark": "overhead", "command": " ".join(["python", *sys.argv]), "machine": machine(),
              "results": []}
    m = report["machine"]
    print(f"processor: {m['processor']} ({m['cpus']} CPUs, {m['torch_threads']} torch threads), GPU: {m['gpu']}, "
          f"load average {m['load_average']}", file=sys.stderr, flush=True)
    for setup in models:
        steps = args.steps or (8 if setup == "cifar10_fast" and args.device == "cpu" else 40)
        row = compare(setup, steps=steps, epochs=args.epochs, repeats=args.repeats, device=args.device,
                      extra=args.set)
        report["results"].append(row)
        r = row["ratio"]
        print(f"{setup:13s} trainer {row['trainer_images_per_s']['median']:>9,.0f} img/s | bare "
              f"{row['bare_images_per_s']['median']:>9,.0f} img/s | ratio median {r['median']:.3f} "
              f"(min {r['min']:.3f}, max {r['max']:.3f}, {len(row['pairs'])} pairs)", file=sys.stderr, flush=True)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
