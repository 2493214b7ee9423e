"""Training speed of registered models: images/s of forward + backward + SGD step on random 32x32 batches.

    python bench/model_speed.py --steps 20 --batch 256 resnet9 "resnet9:{widths: [32, 64, 128, 256]}"
    python bench/model_speed.py --batch 512 --classes 100 --channels-last --bf16 "resnet9:{widths: [32, 64, 128, 256]}"

Each MODEL is a registered name, optionally followed by ":" and its arguments as YAML. Prints parameters,
multiply-adds per image (torchinfo) and the measured rate after --warmup steps. A benchmark, not a test: the
numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchinfo
import yaml

from visionlaunch.models import build_model, count_parameters
from visionlaunch.trainers.losses import cross_entropy


def parse_model(text: str) -> tuple[str, dict]:
    name, _, args = text.partition(":")
    return name, (yaml.safe_load(args) if args else {}) or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as train.precision=bf16 (CPU or GPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, args.classes, (args.batch,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"channels_last={args.channels_last}, bf16={args.bf16}")
    for text in args.models:
        name, margs = parse_model(text)
        model = build_model(name, (3, 32, 32), args.classes, margs)
        macs = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0).total_mult_adds
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
            xb = x.contiguous(memory_format=torch.channels_last)
        else:
            xb = x
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        model.train()
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0 = time.perf_counter()
            with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = cross_entropy(model(xb), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rate = args.steps * args.batch / (time.perf_counter() - t0)
        print(f"{text:<50} {count_parameters(model) / 1e6:7.3f}M params {macs / 1e6:8.1f}M MACs/img "
              f"{rate:8.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
