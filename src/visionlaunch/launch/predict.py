"""`visionlaunch predict RUN PATH...`: classify image files, folders (searched recursively) and archives (.zip and
.tar in its compressions) with a trained run. Files are found by the one walker (datasets/entries.py) and decoded by
the one decoder (datasets/decode.py) that training and `evaluate` use; each image is brought to the run's input shape
(datasets/conform.py) and classified in batches with the run's test-time augmentation. Every file that is not used
(not an image, hidden, a link loop, a FIFO, an archive member that is a link or too large, ...) is named and counted;
a folder or archive without one readable image is an error (exit 2): it is almost certainly the wrong path."""

from __future__ import annotations

import csv
import io
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionlaunch.atomic import atomic_write_text, write_target
from visionlaunch.datasets.conform import conform_image
from visionlaunch.datasets.decode import UnreadableImage, decode_image
from visionlaunch.datasets.entries import is_archive, is_hidden, walk
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.evaluate import RunModel, batch_logits, load_run_model, run_accelerator
from visionlaunch.runfolder import check_not_run_file

_NESTED_ARCHIVE = "an archive inside a folder or archive is not opened; pass it as a PATH of its own"


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


@dataclass
class PredictResult:
    rows: list[Prediction]
    skipped: list[tuple[str, str]]  # (file, why)
    device: str
    hidden: list[str]  # hidden names and __MACOSX: counted and named in the summary, not one line each


def pixels_for_run(payload: bytes | Path, display: str, in_shape, image_size: int | None = None,
                   eval_view: tuple = ()) -> np.ndarray:
    """uint8 CHW in the run's input shape: the run's own evaluation view when it trained with data.image_size (resize
    the shorter side, centre crop, and resize to data.eval_image_size: `eval_view` = (data.eval_image_size,
    data.eval_crop_ratio)), else the decoded image conformed to the input shape."""
    if image_size:
        from visionlaunch.datasets.mixed_size import evaluation_view
        return evaluation_view(payload, display, image_size, *eval_view)
    return conform_image(decode_image(payload, display), in_shape)


def _nothing_readable(path: Path, skipped_here: list[tuple[str, str]], hidden_here: list[str]) -> VisionlaunchError:
    kind = "folder" if path.is_dir() else "archive"
    if not skipped_here:
        what = f"it holds only hidden entries ({_names(hidden_here)}), which are not read" if hidden_here else \
            "it is empty"
    else:
        name, why = skipped_here[0]
        n = len(skipped_here)
        what = (f"{n} entr{'y was' if n == 1 else 'ies were'} skipped, named above (the first: {name}: {why})")
    return VisionlaunchError(f"the {kind} {path} holds no readable image: {what}. Pass a folder or archive of images "
                             "(PNG, JPEG, BMP, GIF, TIFF, WebP, ...).")


def _names(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def iter_images(paths: list[Path], in_shape, skipped: list[tuple[str, str]], image_size: int | None = None,
                hidden: list[str] | None = None, eval_view: tuple = ()) -> Iterator[tuple[str, np.ndarray]]:
    """(file, uint8 CHW in the run's shape) for every readable image under `paths`, in order; every other entry goes
    to `skipped` (file, why), or to `hidden` when its name is hidden. A folder or archive without a single readable
    image stops with an error."""
    hidden = [] if hidden is None else hidden
    absent = [str(p) for p in paths if not p.exists()]
    if absent:  # before any work: a typo in the last of several paths should not cost a long run
        raise VisionlaunchError(f"{', '.join(absent)} {'does' if len(absent) == 1 else 'do'} not exist. Pass image "
                                "files, folders of images or archives (.zip, .tar, .tar.gz) that exist.")
    for path in paths:
        found, first_skip, first_hidden = 0, len(skipped), len(hidden)
        for entry in walk(path, wanted=lambda parts: not is_archive(parts[-1])):
            if entry.kind == "folder":
                continue
            if entry.kind == "skipped" and is_hidden(entry.parts[-1]):
                hidden.append(entry.display)
            elif entry.kind == "skipped":
                skipped.append((entry.display, entry.why))
            elif is_archive(entry.display):
                skipped.append((entry.display, _NESTED_ARCHIVE))
            else:
                try:
                    pixels = pixels_for_run(entry.payload, entry.display, in_shape, image_size, eval_view)
                except UnreadableImage as exc:
                    skipped.append((entry.display, f"not a readable image ({exc.reason})"))
                    continue
                found += 1
                yield entry.display, pixels
        if not found and (path.is_dir() or is_archive(path)):
            raise _nothing_readable(path, skipped[first_skip:], hidden[first_hidden:])


def predict(run: RunModel, paths: list[Path], top_k: int = 3, batch_size: int | None = None) -> PredictResult:
    accelerator = run_accelerator(run.run_dir, run.cfg)  # the GPU when there is one, the run's precision (autocast)
    device = accelerator.device
    run.model.to(device)
    k = max(1, min(top_k, len(run.classes)))
    batch_size = batch_size or run.cfg.train.eval_batch_size
    rows: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    hidden: list[str] = []
    data = run.cfg.data
    images = iter_images(paths, run.in_shape, skipped, image_size=data.image_size, hidden=hidden,
                         eval_view=(data.eval_image_size, data.eval_crop_ratio))
    try:
        while batch := list(itertools.islice(images, batch_size)):
            names, pixels = zip(*batch)
            logits = batch_logits(run, torch.from_numpy(np.stack(pixels)), device, accelerator.autocast)
            probs, index = logits.softmax(dim=1).topk(k, dim=1)
            for name, p, i in zip(names, probs.cpu().tolist(), index.cpu().tolist()):
                rows.append(Prediction(name, [(run.classes[c], q) for c, q in zip(i, p)]))
    finally:  # also before an error that says they are "named above"
        for name, why in skipped:
            print(f"skipped {name}: {why}", file=sys.stderr)
    if not rows:
        raise VisionlaunchError(
            f"none of the {len(skipped)} file(s) given is a readable image ({', '.join(n for n, _ in skipped[:5])}"
            f"{', ...' if len(skipped) > 5 else ''}). Pass image files, folders of images or archives of images.")
    run.model.to("cpu")
    return PredictResult(rows, skipped, str(device), hidden)


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
        if Path(out).is_dir():
            raise VisionlaunchError(f"--out {out} is a folder. Give a file name, e.g. --out {Path(out) / 'preds.csv'}.")
        write_target(Path(out))  # refuses a socket, a dangling link, ... before the work
    run = load_run_model(run_dir, which)
    result = predict(run, paths, top_k, batch_size)
    if out is not None:
        atomic_write_text(Path(out), csv_text(result))
    else:
        sys.stdout.write(table_text(result))
    skipped = f"; {len(result.skipped)} file(s) skipped (named above)" if result.skipped else ""
    if result.hidden:
        skipped += f"; {len(result.hidden)} hidden entr{'y' if len(result.hidden) == 1 else 'ies'} not read " \
                   f"({_names(result.hidden)})"
    print(f"{len(result.rows)} image(s) classified by {run.which} weights (epoch {run.epoch}) of {run.run_dir} on "
          f"{result.device}{skipped}" + (f"; table written to {out}" if out is not None else ""), file=sys.stderr)
    return 0
