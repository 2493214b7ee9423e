"""Loader throughput: images/s that each backend (tensor, torch, ffcv) delivers in the batch contract (augmented,
normalised float32 NCHW batches on the training device), for CIFAR-shaped and MNIST-shaped data.

    python bench/loaders.py                       # both shapes, every backend, 3 epochs each
    python bench/loaders.py --shapes cifar --epochs 4 --batch-size 512
    python bench/loaders.py --threads 1           # one intra-op thread (much faster on a busy 2-core VM)

For each (shape, backend) it reports the set-up time (building the loader: copying the dataset to the device,
starting workers), the first epoch (FFCV's numba compiling and the workers' start-up land here) and the
steady state (the mean of the later epochs), separately. The same augmentation everywhere: CIFAR 4 px
translate + horizontal flip, MNIST 1 px translate (the presets' choices). Data: random uint8 images of the
real shapes (50,000 x 3 x 32 x 32 and 60,000 x 1 x 28 x 28; raw pixels load at the same speed whatever they
show), written to raw .beton files in a temporary folder for ffcv (conversion time reported, not counted).
Nothing else runs in the timed loop: no model. Prints one JSON object. Not a test: numbers depend on the
machine and on whatever else runs on it (the load average before and after is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from visionlaunch.config import AugmentConfig  # noqa: E402
from visionlaunch.trainers.data import make_loader  # noqa: E402
from visionlaunch.datasets.augment import BatchPipeline  # noqa: E402

SHAPES = {
    "cifar": dict(n=50_000, shape=(3, 32, 32), augment=AugmentConfig(crop_padding=4, flip=True)),
    "mnist": dict(n=60_000, shape=(1, 28, 28), augment=AugmentConfig(crop_padding=1)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_backend(kind: str, images, labels, spec, args, device, beton) -> dict:
    _sync(device)
    t0 = time.perf_counter()
    loader = make_loader(kind, images, labels, args.batch_size, train=True, seed=0, device=device,
                         num_workers=args.workers, beton=beton, augment=spec["augment"])
    pipeline = BatchPipeline(spec["augment"], (0.5,) * spec["shape"][0], (0.25,) * spec["shape"][0], device, seed=0,
                             loader_augments=loader.augments)
    _sync(device)
    setup = time.perf_counter() - t0
    epochs = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        t = time.perf_counter()
        count = 0
        for x, y in loader:
            batch = pipeline.train(x)  # the contract: augmented, normalised float32 NCHW on the device
            count += len(y)
        _sync(device)
        seconds = time.perf_counter() - t
        epochs.append({"seconds": round(seconds, 3), "images_per_s": round(count / seconds)})
        del batch
    steady = epochs[1:] or epochs
    steady_rate = sum(e["images_per_s"] for e in steady) / len(steady)
    first = epochs[0]
    # Warm-up: what the first epoch costs beyond a steady one, plus building the loader.
    warmup = setup + first["seconds"] - len(labels) // args.batch_size * args.batch_size / steady_rate
    return {"backend": kind, "setup_s": round(setup, 3), "first_epoch_s": first["seconds"],
            "first_epoch_images_per_s": first["images_per_s"], "steady_images_per_s": round(steady_rate),
            "warmup_s": round(warmup, 2), "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--backends", nargs="+", default=["tensor", "torch", "ffcv"],
                        choices=["tensor", "torch", "ffcv"])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per backend; the first is the warm-up one")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="torch DataLoader processes / ffcv threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, help="images per dataset (default: the real sizes)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's "
                                                    "choice, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "torch": torch.__version__,
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]},
        "batch_size": args.batch_size, "workers": args.workers, "epochs": args.epochs, "results": []}
    if "ffcv" in args.backends:
        from visionlaunch.ffcv_builders import require_ffcv
        require_ffcv()  # fails early when the extra is missing; keeps torch's thread count as it is
        from importlib.metadata import version
        report["machine"]["ffcv"] = version("ffcv")
    with tempfile.TemporaryDirectory(prefix="vl-bench-") as tmp:
        for name in args.shapes:
            spec = SHAPES[name]
            n = args.n or spec["n"]
            g = torch.Generator().manual_seed(0)
            images = torch.randint(0, 256, (n, *spec["shape"]), dtype=torch.uint8, generator=g)
            labels = torch.randint(0, 10, (n,), generator=g)
            beton, convert = None, None
            if "ffcv" in args.backends:
                from visionlaunch.ffcv_builders import write_beton
                t = time.perf_counter()
                beton = Path(tmp) / f"{name}.beton"
                write_beton(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), beton, num_classes=10,
                            dataset=name, split="train", num_workers=args.workers, progress=False)
                convert = round(time.perf_counter() - t, 2)
            for kind in args.backends:
                row = bench_backend(kind, images, labels, spec, args, device, beton if kind == "ffcv" else None)
                row["torch_threads"] = torch.get_num_threads()  # after the run: nothing may have changed it
                row.update({"data": name, "images": n, "augment": spec["augment"].model_dump()})
                if kind == "ffcv":
                    row["conversion_s"] = convert
                report["results"].append(row)
                print(f"{name:6s} {kind:7s} steady {row['steady_images_per_s']:>9,} img/s | first epoch "
                      f"{row['first_epoch_images_per_s']:>9,} img/s | warm-up {row['warmup_s']:.1f} s",
                      file=sys.stderr)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
