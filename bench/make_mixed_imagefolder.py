"""Write an ImageFolder of real photos in mixed sizes: CIFAR-10 JPEGs, each rescaled to a random size.

    python bench/make_mixed_imagefolder.py ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz /tmp/cifar10-mixed \
        --train-per-class 500 --test-per-class 100 --seed 0

Per class, the first N train and M test images of the archive (its order is sorted by name) are kept. Each is
resized (bicubic) to a width drawn uniformly from [--min-side, --max-side] and an aspect ratio drawn
log-uniformly from [3/4, 4/3] (the height clipped to the same range) and saved as JPEG (quality 90). The same
seed writes the same files. The output folder must not exist yet (nothing is ever overwritten).
`--layout imagenet` writes the test images to val/ (ImageNet's layout: train/ and val/, val/ the test split).
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("archive", type=Path, help="the CIFAR-10 JPEG ImageFolder tarball (train/ and test/ inside)")
    p.add_argument("out", type=Path, help="the folder to create")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--min-side", type=int, default=40)
    p.add_argument("--max-side", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=("imagefolder", "imagenet"), default="imagefolder",
                   help="imagenet: the test images go to val/ (train/ and val/, as ImageNet is laid out)")
    args = p.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} exists already: choose a new folder", file=sys.stderr)
        return 2
    wanted = {"train": args.train_per_class, "test": args.test_per_class}
    rng = random.Random(args.seed)
    tmp = args.out.with_name(args.out.name + ".partial")
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with tarfile.open(args.archive, "r:*") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
                         key=lambda m: m.name)
        for member in members:
            split, cls, name = Path(member.name).parts[-3:]
            if split not in wanted or counts[(split, cls)] >= wanted[split]:
                continue
            counts[(split, cls)] += 1
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                width = rng.randint(args.min_side, args.max_side)
                aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
                height = min(args.max_side, max(args.min_side, round(width * aspect)))
                resized = im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
            folder = "val" if split == "test" and args.layout == "imagenet" else split
            target = tmp / folder / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            resized.save(target, quality=90)
    tmp.rename(args.out)  # complete or absent
    total = sum(counts.values())
    print(f"wrote {total} images ({sum(v for (s, _), v in counts.items() if s == 'train')} train) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
