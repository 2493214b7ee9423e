"""An ImageFolder of any number of distinct real photos at mixed sizes, made from the CIFAR-10 JPEGs.

Image i of a split is CIFAR-10 image (i mod pool) of that split (train/ from train/, test/ from test/, the classes
kept), cropped to a random box (40-100% of the area, aspect 3:4..4:3, at a random place, in fractional pixels) and
rescaled (bicubic) to a random width and height in [min_side, max_side] (aspect 3:4..4:3), then saved as JPEG
(quality 90). The crop box and the size are drawn from a generator seeded by (seed, split, i), so the same
arguments write the same files, in any number of processes, and copies of one CIFAR image differ from each other.
Used by bench/data_scale.py and tests/test_memory_cap.py.
"""

from __future__ import annotations

import io
import math
import os
import random
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

SPLITS = ("train", "test")


def read_pool(archive: Path) -> dict[str, list[tuple[str, str, bytes]]]:
    """Every CIFAR-10 JPEG of the tarball, per split: (class, file name, bytes), sorted by class then name and
    interleaved class by class (image k is class k mod 10), so the first N images are balanced."""
    by_class: dict[str, dict[str, list[tuple[str, bytes]]]] = {s: {} for s in SPLITS}
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in by_class and parts[2].endswith(".jpg"):
                by_class[parts[0]].setdefault(parts[1], []).append((parts[2], tar.extractfile(member).read()))
    pool = {}
    for split, classes in by_class.items():
        lists = [[(cls, name, data) for name, data in sorted(items)] for cls, items in sorted(classes.items())]
        pool[split] = [row[k] for k in range(max(map(len, lists))) for row in lists if k < len(row)]
    return pool


def photo(data: bytes, rng: random.Random, min_side: int, max_side: int) -> Image.Image:
    """One copy of a CIFAR JPEG: a random crop rescaled to a random size."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w0, h0 = im.size
        area = rng.uniform(0.4, 1.0) * w0 * h0
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = min(w0, math.sqrt(area * aspect)), min(h0, math.sqrt(area / aspect))
        x0, y0 = rng.uniform(0, w0 - cw), rng.uniform(0, h0 - ch)
        width = rng.randint(min_side, max_side)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        height = min(max_side, max(min_side, round(width * aspect)))
        return im.resize((width, height), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))


def _write_chunk(args) -> int:
    out, split, items, start, min_side, max_side, seed = args
    written = 0
    for offset, (cls, name, data) in enumerate(items):
        i = start + offset
        rng = random.Random(f"{seed}/{split}/{i}")
        target = out / split / cls / f"{i:08d}-{Path(name).stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        photo(data, rng, min_side, max_side).save(target, quality=90)
        written += 1
    return written


def build_photo_folder(archive: Path, out: Path, counts: dict[str, int], *, min_side: int = 96, max_side: int = 320,
                       seed: int = 0, jobs: int | None = None, pool: dict | None = None) -> Path:
    """Write counts[split] photos per split under `out` (which must not exist: it appears complete or not at all)."""
    if out.exists():
        raise FileExistsError(f"{out} exists already: choose a new folder")
    pool = pool or read_pool(archive)
    tmp = out.with_name(out.name + ".partial")
    chunk = 500
    tasks = []
    for split, n in counts.items():
        src = pool[split]
        for start in range(0, n, chunk):
            items = [src[i % len(src)] for i in range(start, min(n, start + chunk))]
            tasks.append((tmp, split, items, start, min_side, max_side, seed))
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        list(map(_write_chunk, tasks))
    else:
        with ProcessPoolExecutor(jobs) as ex:
            list(ex.map(_write_chunk, tasks))
    tmp.rename(out)
    return out


def decoded_bytes(folder: Path) -> int:
    """N x H x W x 3 of every stored photo (read from the JPEG headers, nothing decoded)."""
    total = 0
    for path in folder.rglob("*.jpg"):
        with Image.open(path) as im:
            total += im.size[0] * im.size[1] * 3
    return total
