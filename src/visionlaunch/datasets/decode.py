"""One image file to pixels: the only image decoder of visionlaunch. The ImageFolder reader (training, `evaluate
--data`) and `predict` both call it, one file at a time, so a file gives the same pixels wherever it is read.

decode_image(payload, display) -> uint8 (H, W, C): C = 1 for single-channel images, else 3. The rules:
- the EXIF orientation is applied (phones store portrait photos as landscape pixels plus a rotation tag);
- 16-bit grayscale (PNG or TIFF, modes I;16* and I within 0..65535) is scaled v x 255 / 65535, rounded, never
  clipped at 255 (as PIL's own conversion would); 32-bit integers outside 0..65535 are refused;
- floating-point pixels (mode F: a float TIFF) are refused: they have no agreed range to map to 8 bits;
- an alpha channel is dropped, keeping the colour beneath (RGBA, LA, and palette images with transparency);
- everything else (palettes, CMYK, YCbCr, 1-bit) is converted by PIL to RGB, or to L when single-channel.
Single-channel images are modes 1, L, LA and the 16-bit modes; a palette image is colour even when its palette is
gray. A file that is not a readable image raises UnreadableImage: a VisionlaunchError naming the file, with the
short reason in `.reason` for callers that skip the file instead of stopping.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from visionlaunch.errors import VisionlaunchError, describe_os_error

GRAY_MODES = ("1", "L", "LA")
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # scaled from 16 bits, never clipped
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ORIENTATION = 0x0112

# What opening or decoding a bad image file raises: UnidentifiedImageError is an OSError, some damaged files raise
# SyntaxError or EOFError, an image over PIL's decompression-bomb limit DecompressionBombError.
BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class UnreadableImage(VisionlaunchError):
    """A file that is not a usable image; `reason` says why in a few words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def open_image(payload: bytes | str | Path) -> Image.Image:
    """An image from an archive member's bytes or from a file's path (header only: pixels are decoded on first use)."""
    return Image.open(io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload)


def unreadable(display: str, exc: BaseException) -> UnreadableImage:
    if isinstance(exc, UnreadableImage):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        reason = f"too large to decode safely: {str(exc).rstrip('.')}"
        return UnreadableImage(f"{display} is {reason}. Shrink it or remove it.", reason)
    if isinstance(exc, OSError) and exc.strerror:  # the file itself cannot be read (permissions, a folder, ...)
        return UnreadableImage(f"cannot read the image {describe_os_error(exc)}", exc.strerror)
    if isinstance(exc, Image.UnidentifiedImageError):
        reason = "not an image format PIL knows"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return UnreadableImage(f"{display} is not a readable image ({reason}); it may be truncated, damaged or not an "
                           "image at all. Remove or replace it.", reason)


def channels_of(mode: str) -> int:
    return 1 if mode in GRAY_MODES + WIDE_GRAY_MODES else 3


def _orientation(pil: Image.Image, header_only: bool = False) -> int | None:
    """The EXIF orientation tag. `header_only`: without decoding the pixels (PIL's getexif loads a whole PNG to look
    for an eXIf chunk after the pixel data; the header scan then takes one before it, where the PNG spec puts it)."""
    if header_only and pil.format == "PNG" and "exif" not in pil.info:
        return None
    return pil.getexif().get(_ORIENTATION)


def image_header(payload: bytes | str | Path, display: str) -> tuple[tuple[int, int], int]:
    """(width, height) as decode_image will return it (EXIF rotation applied) and its channels, from the header
    alone (no pixel decoding)."""
    try:
        with open_image(payload) as pil:
            (w, h), mode = pil.size, pil.mode
            if _orientation(pil, header_only=True) in _ROTATED:
                w, h = h, w
    except BAD_IMAGE as exc:
        raise unreadable(display, exc) from exc
    return (w, h), channels_of(mode)


def _eight_bit(pil: Image.Image, display: str) -> np.ndarray:
    if pil.mode in WIDE_GRAY_MODES:
        wide = np.asarray(pil).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            reason = f"{pil.mode!r} pixels from {wide.min()} to {wide.max()}, outside the 16-bit range 0..65535"
            raise UnreadableImage(f"{display} holds {reason} that is scaled to 8 bits. Convert it to an 8-bit (or "
                                  "16-bit) PNG.", reason)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)[:, :, None]
    if pil.mode == "F":
        reason = "floating-point pixels (mode 'F'), which have no fixed range to map to 8 bits"
        raise UnreadableImage(f"{display} holds {reason}. Convert it to an 8-bit (or 16-bit) image.", reason)
    if pil.mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")  # the colour beneath; PIL warns when a transparent palette goes straight to RGB
    target = "L" if pil.mode in GRAY_MODES else "RGB"
    pixels = np.asarray(pil if pil.mode == target else pil.convert(target))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def decode_image(payload: bytes | str | Path, display: str, *, reduce_to: int | None = None) -> np.ndarray:
    """uint8 (H, W, 1 or 3) pixels of one file (the rules above). `reduce_to`: a JPEG may be decoded at a reduced
    scale that still covers reduce_to x reduce_to (faster when the image is shrunk afterwards anyway)."""
    try:
        with open_image(payload) as pil:
            if reduce_to:
                pil.draft("RGB", (reduce_to, reduce_to))
            # exif_transpose copies even an upright image: call it only for a tag that turns or mirrors
            upright = ImageOps.exif_transpose(pil) if _orientation(pil) in range(2, 9) else pil
            return np.ascontiguousarray(_eight_bit(upright, display))
    except BAD_IMAGE as exc:
        raise unreadable(display, exc) from exc


def with_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, channels): gray copied to three channels, or colour to PIL's luminance (0.299 R + 0.587 G + 0.114 B)."""
    if pixels.shape[2] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=2)
    return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))[:, :, None]
