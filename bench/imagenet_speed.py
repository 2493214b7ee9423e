"""Training images/s of the ImageNet ResNet-50 preset's step (configs/imagenet_rn50.yaml: resnet50_imagenet with
BlurPool, SGD, label smoothing, bf16 autocast, channels_last) fed by the ffcv loader's random-resized crop at each
size of its progressive resizing (160 and 192 px), on generated photos: the number to hold against FFCV's published
~24,000 images/s on 8 A100s (about 3,000 per GPU) for the same recipe.

    python bench/imagenet_speed.py OUT.json                 # a GPU: 4096 generated 400x400 JPEGs, batch 256
    python bench/imagenet_speed.py OUT.json --quick         # the same code on a CPU in seconds (a test runs it)

The photos are smooth random fields (low-frequency noise upsampled, so that JPEG sizes and decode times are
photo-like, not noise-like), written once to a JPEG .beton in a temporary folder (its time reported apart). Each
size is measured after `--warmup` steps (the pipeline compiles again when the size changes), over `--steps` steps,
with the device synchronised at both ends. Writes OUT.json: {size: images/s, ...} and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from visionlaunch.config import load_config  # noqa: E402
from visionlaunch.datasets.mixed_size import ResizedCrop  # noqa: E402

PRESET = REPO / "configs" / "imagenet_rn50.yaml"


def generated_photos(n: int, side: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, side, side, 3): smooth random colour fields."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 255
    fields = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    return fields.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def measure(out: Path, *, images: int, side: int, batch: int, steps: int, warmup: int, device: str,
            model_args: dict, sizes: tuple[int, ...]) -> dict:
    from visionlaunch.datasets.augment import BatchPipeline
    from visionlaunch.ffcv_builders import write_beton
    from visionlaunch.ffcv_builders.loader import FfcvLoader
    from visionlaunch.models import build_model
    from visionlaunch.trainers.losses import CrossEntropyLoss

    cfg = load_config(PRESET)
    dev = torch.device(device)
    ramp = cfg.resolution.ramp()
    # the first epoch of the preset's ramp at each size asked for
    epochs = {size: next(e for e in range(cfg.train.epochs) if ramp.size_at(e) == size) for size in sizes}
    crop = ResizedCrop(cfg.data.image_size, tuple(cfg.augment.crop_scale), ramp)
    result = {"preset": PRESET.name, "model": cfg.model.name, "model_args": model_args, "batch": batch,
              "images": images, "photo_side": side, "device": str(dev), "precision": "bf16", "channels_last": True,
              "steps": steps, "warmup": warmup, "images_per_s": {}}
    with tempfile.TemporaryDirectory(prefix="vl-imagenet-speed-") as tmp:
        t0 = time.perf_counter()
        beton = Path(tmp) / "train.beton"
        write_beton(generated_photos(images, side), np.arange(images) % 1000, beton, num_classes=1000,
                    dataset="generated", split="train", encoding="jpeg", progress=False,
                    image_size=cfg.data.image_size, max_resolution=side)
        result["write_s"] = round(time.perf_counter() - t0, 1)
        loader = FfcvLoader(beton, batch, train=True, seed=0, device=dev, num_workers=min(cfg.data.num_workers, os.cpu_count() or 1),
                            flip=True, channels_last=True, resized_crop=crop, verify=False)
        model = build_model(cfg.model.name, (3, max(sizes), max(sizes)), 1000, model_args)
        model = model.to(dev, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss_fn = CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        pipeline = BatchPipeline(cfg.augment, (0.5,) * 3, (0.25,) * 3, dev, seed=0, channels_last=True,
                                 dtype=torch.bfloat16, loader_augments=True)
        for size, epoch in epochs.items():
            loader.set_epoch(epoch)
            done, start = 0, None
            while done < warmup + steps:
                for images_u8, labels in loader:
                    if done == warmup:
                        if dev.type == "cuda":
                            torch.cuda.synchronize(dev)
                        start = time.perf_counter()
                    assert images_u8.shape[-1] == size, (images_u8.shape, size)
                    with torch.autocast(dev.type, dtype=torch.bfloat16):
                        loss = loss_fn(model(pipeline.train(images_u8)), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    done += 1
                    if done == warmup + steps:
                        break
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            result["images_per_s"][str(size)] = round(steps * batch / (time.perf_counter() - start), 1)
    out.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the JSON file to write")
    p.add_argument("--quick", action="store_true", help="CPU, a ResNet-50 of width 4, 64 photos of 96 px")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256, help="per GPU (FFCV: 512 per GPU)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        kwargs = dict(images=64, side=96, batch=8, steps=2, warmup=1, device="cpu",
                      model_args={"blurpool": True, "width": 4})
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --quick on a CPU machine", file=sys.stderr)
            return 1
        kwargs = dict(images=args.images, side=400, batch=args.batch, steps=args.steps, warmup=args.warmup,
                      device="cuda", model_args={"blurpool": True})
    result = measure(args.out, sizes=(160, 192), **kwargs)
    print(json.dumps(result["images_per_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
