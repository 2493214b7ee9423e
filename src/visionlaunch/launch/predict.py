"""`visionlaunch predict RUN PATH...`: classify image files, folders (searched recursively) and archives (.zip and
.tar in its compressions) with a trained run: each image is brought to the run's input shape (datasets/conform.py) and
classified in batches with the run's test-time augmentation. Unreadable files are skipped and named; a folder or
archive without one readable image is an error (exit 2): it is almost certainly the wrong path."""

from __future__ import annotations

import csv
import io
import itertools
import os
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from visionlaunch.atomic import atomic_write_text
from visionlaunch.datasets.conform import conform_image
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.evaluate import RunModel, batch_logits, load_run_model, run_accelerator
from visionlaunch.runfolder import check_not_run_file

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_IGNORED = ("__MACOSX",)


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


@dataclass
class PredictResult:
    rows: list[Prediction]
    skipped: list[tuple[str, str]]  # (file, why)
    device: str


def _hidden(parts) -> bool:
    return any(p.startswith(".") or p in _IGNORED for p in parts)


def _files(path: Path) -> Iterator[tuple[str, bytes | Path]]:
    """(name shown, bytes or file) of every file `path` stands for: itself, the files under a folder (hidden ones
    and __MACOSX left out), or the members of an archive."""
    if path.is_dir():
        for current, dirs, names in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not _hidden((d,)))
            yield from ((str(Path(current) / n), Path(current) / n) for n in sorted(names) if not _hidden((n,)))
        return
    name = path.name.lower()
    if not name.endswith(ARCHIVE_SUFFIXES):
        yield str(path), path
        return
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if not info.is_dir() and not _hidden(p for p in info.filename.split("/") if p):
                        yield f"{path}:{info.filename}", zf.read(info)
        else:
            with tarfile.open(path, "r|*") as tar:  # one streaming pass, each member read as it goes by
                for member in tar:
                    if member.isfile() and not _hidden(p for p in member.name.split("/") if p not in ("", ".")):
                        yield f"{path}:{member.name}", tar.extractfile(member).read()
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, OSError, EOFError, ValueError) as exc:
        raise VisionlaunchError(
            f"{path} could not be read as an archive ({type(exc).__name__}: {exc}); it is probably truncated or "
            "damaged. Create it again, or extract it and pass the folder.") from exc


def _decode(payload: bytes | Path, in_shape, image_size: int | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as image:
        if image_size:  # a run trained with data.image_size: resize the shorter side and centre crop, as it evaluated
            from visionlaunch.datasets.mixed_size import evaluation_view
            return evaluation_view(image, image_size)
        image.load()
        return conform_image(image, in_shape)


def iter_images(paths: list[Path], in_shape, skipped: list[tuple[str, str]],
                image_size: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(file, uint8 CHW in the run's shape) for every readable image under `paths`, in order; unreadable files go to
    `skipped`. A folder or archive without a single readable image stops with an error."""
    absent = [str(p) for p in paths if not p.exists()]
    if absent:  # before any work: a typo in the last of several paths should not cost a long run
        raise VisionlaunchError(f"{', '.join(absent)} {'does' if len(absent) == 1 else 'do'} not exist. Pass image "
                                "files, folders of images or archives (.zip, .tar, .tar.gz) that exist.")
    for path in paths:
        found = 0
        for display, payload in _files(path):
            try:
                pixels = _decode(payload, in_shape, image_size)
            # UnidentifiedImageError is an OSError; PIL raises SyntaxError or EOFError for some damaged files.
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
                why = "not an image format PIL knows" if isinstance(exc, UnidentifiedImageError) else \
                    f"{type(exc).__name__}: {exc}"
                if display.lower().endswith(ARCHIVE_SUFFIXES):
                    why = "an archive inside a folder or archive is not opened; pass it as a PATH of its own"
                skipped.append((display, why))
                continue
            found += 1
            yield display, pixels
        if not found and (path.is_dir() or path.name.lower().endswith(ARCHIVE_SUFFIXES)):
            kind = "folder" if path.is_dir() else "archive"
            raise VisionlaunchError(
                f"the {kind} {path} holds no readable image (every file in it was tried; hidden files and __MACOSX "
                "are not read). Pass a folder or archive of images (PNG, JPEG, BMP, GIF, TIFF, WebP, ...).")


def predict(run: RunModel, paths: list[Path], top_k: int = 3, batch_size: int | None = None) -> PredictResult:
    accelerator = run_accelerator(run.run_dir, run.cfg)  # the GPU when there is one, the run's precision (autocast)
    device = accelerator.device
    run.model.to(device)
    k = max(1, min(top_k, len(run.classes)))
    batch_size = batch_size or run.cfg.train.eval_batch_size
    rows: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    images = iter_images(paths, run.in_shape, skipped, image_size=run.cfg.data.image_size)
    while batch := list(itertools.islice(images, batch_size)):
        names, pixels = zip(*batch)
        logits = batch_logits(run, torch.from_numpy(np.stack(pixels)), device, accelerator.autocast)
        probs, index = logits.softmax(dim=1).topk(k, dim=1)
        for name, p, i in zip(names, probs.cpu().tolist(), index.cpu().tolist()):
            rows.append(Prediction(name, [(run.classes[c], q) for c, q in zip(i, p)]))
    for name, why in skipped:
        print(f"skipped {name}: not a readable image ({why})", file=sys.stderr)
    if not rows:
        raise VisionlaunchError(
            f"none of the {len(skipped)} file(s) given is a readable image ({', '.join(n for n, _ in skipped[:5])}"
            f"{', ...' if len(skipped) > 5 else ''}). Pass image files, folders of images or archives of images.")
    run.model.to("cpu")
    return PredictResult(rows, skipped, str(device))


def csv_text(result: PredictResult) -> str:
    k = len(result.rows[0].top)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", *[f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "prob")]])
    for row in result.rows:
        writer.writerow([row.file, *[v for cls, p in row.top for v in (cls, f"{p:.6f}")]])
    return out.getvalue()


def table_text(result: PredictResult) -> str:
    k = len(result.rows[0].top)
    width = min(max(len(r.file) for r in result.rows), 80)
    header = f"{'file':<{width}}  " + "  ".join(f"top-{i} (prob)" for i in range(1, k + 1))
    lines = [header]
    for r in result.rows:
        name = r.file if len(r.file) <= width else "..." + r.file[-(width - 3):]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{cls} ({p:.3f})" for cls, p in r.top))
    return "\n".join(lines) + "\n"


def predict_command(run_dir: Path, paths: list[Path], *, which: str = "last", top_k: int = 3,
                    out: Path | None = None, batch_size: int | None = None) -> int:
    if top_k < 1:
        raise VisionlaunchError(f"--top-k must be at least 1, got {top_k}.")
    if batch_size is not None and batch_size < 1:
        raise VisionlaunchError(f"--batch-size must be at least 1, got {batch_size}.")
    if out is not None:
        check_not_run_file(out)
    run = load_run_model(run_dir, which)
    result = predict(run, paths, top_k, batch_size)
    if out is not None:
        if Path(out).is_dir():
            raise VisionlaunchError(f"--out {out} is a folder. Give a file name, e.g. --out {Path(out) / 'preds.csv'}.")
        atomic_write_text(Path(out), csv_text(result))
    else:
        sys.stdout.write(table_text(result))
    skipped = f"; {len(result.skipped)} file(s) skipped (not readable images, named above)" if result.skipped else ""
    print(f"{len(result.rows)} image(s) classified by {run.which} weights (epoch {run.epoch}) of {run.run_dir} on "
          f"{result.device}{skipped}" + (f"; table written to {out}" if out is not None else ""), file=sys.stderr)
    return 0
