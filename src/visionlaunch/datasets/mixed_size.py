"""Photos of every size (data.image_size): decode each once into one fixed-size square, the form that is cached.

Each image is decoded with its EXIF orientation applied, converted to RGB (grayscale repeats its channel; the
alpha channel of RGBA, LA and transparent palette images is dropped, keeping the colour beneath), then its shorter
side is resized to the *stored size* and the centre square of that side is kept. The stored size is
image_size / 0.875 (73 px for 64, 256 for 224: the usual resize-then-crop ratio), so that

  * training draws its random-resized crops from the stored square (datasets/resized_crop.py), and
  * evaluation takes the centre image_size square of it (`center_crop`): "resize the shorter side, centre crop".

What is lost: the ends of the longer side of a non-square photo (beyond its centre square) never reach a crop.
Images smaller than the stored size are upscaled; more than data.max_upscale times is refused, naming the file.
"""

from __future__ import annotations

import dataclasses

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.errors import VisionlaunchError

CROP_FRACTION = 0.875  # image_size / stored size


def stored_size(image_size: int) -> int:
    return int(round(image_size / CROP_FRACTION))


def _open(payload: bytes | Path) -> Image.Image:
    return Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload)


def _rgb(pil: Image.Image, stored: int) -> Image.Image:
    pil.draft("RGB", (stored, stored))  # JPEG: decode at a reduced scale that still covers `stored` (before loading)
    pil = ImageOps.exif_transpose(pil)  # phones store portrait photos as landscape pixels plus an EXIF rotation
    if pil.mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")  # PIL warns when a transparent palette image goes straight to RGB
    return pil if pil.mode == "RGB" else pil.convert("RGB")


def _square(rgb: Image.Image, stored: int) -> np.ndarray:
    """Centre square of the shorter side, resized to stored x stored (antialiased when shrinking): uint8 CHW."""
    square = ImageOps.fit(rgb, (stored, stored), method=Image.Resampling.BICUBIC)
    return np.asarray(square).transpose(2, 0, 1)


def evaluation_view(image: Image.Image, image_size: int) -> np.ndarray:
    """One image, not yet loaded, as evaluation sees it (uint8 3 x image_size x image_size): for predictions on new
    files, pixel for pixel what the test set's decoding and centre crop give."""
    stored = stored_size(image_size)
    offset = (stored - image_size) // 2
    return np.ascontiguousarray(_square(_rgb(image, stored), stored)[:, offset:offset + image_size, offset:offset + image_size])


def _too_small(display: str, size: tuple[int, int], stored: int, image_size: int, max_upscale: float) -> str:
    w, h = size
    return (f"{display} is {w}x{h} pixels (width x height): too small for data.image_size={image_size}, which "
            f"resizes the shorter side to {stored} px, {stored / min(w, h):.1f} times its size, and "
            f"data.max_upscale={max_upscale:g} allows at most {max_upscale:g}. Remove the image, use a smaller "
            "data.image_size, or raise data.max_upscale to accept it upscaled.")


def decode_squares(items: Sequence, image_size: int, max_upscale: float, *, unreadable: Callable,
                   progress: bool = True, desc: str = "decoding images") -> tuple[np.ndarray, str]:
    """Decode `items` (each with `.display` and `.payload`: bytes or a path) to uint8 (N, 3, S, S), S the stored
    size; and a note on the images that were upscaled (empty when none). `unreadable(item, exc)` makes the error
    for a file that cannot be decoded."""
    stored = stored_size(image_size)
    out = np.empty((len(items), 3, stored, stored), dtype=np.uint8)
    upscaled, smallest = 0, None
    for i, item in enumerate(tqdm(items, desc=desc, unit=" img", disable=not progress)):
        try:
            with _open(item.payload) as pil:
                rgb = _rgb(pil, stored)
                short = min(rgb.size)
                if short * max_upscale < stored:
                    raise VisionlaunchError(_too_small(item.display, rgb.size, stored, image_size, max_upscale))
                out[i] = _square(rgb, stored)
        except VisionlaunchError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise unreadable(item, exc) from exc
        if short < stored:
            upscaled += 1
            if smallest is None or short < smallest[0]:
                smallest = (short, item.display)
    note = ""
    if upscaled:
        note = (f"{upscaled} of {len(items)} images upscaled to {stored} px on the shorter side (smallest: "
                f"{smallest[0]} px, {smallest[1]})")
    return out, note


def center_crop(ds: ImageSet, image_size: int) -> ImageSet:
    """The centre image_size x image_size square of every stored image: the evaluation view."""
    _, h, w = ds.shape
    top, left = (h - image_size) // 2, (w - image_size) // 2
    images = ds.images[:, :, top:top + image_size, left:left + image_size].contiguous()
    return dataclasses.replace(ds, images=images)  # keeps labels, classes, superclasses, provenance
