"""Photos at their own aspect ratio for the ffcv backend's training split (data.image_size): each decoded by the
project's one decoder, as the stored squares are (decode.py through mixed_size.py: EXIF rotation, RGB), and shrunk
so that its longer side is at most `max_side` px, never enlarged. FFCV's RandomResizedCropRGBImageDecoder then
crops from the whole photo, as timm's RandomResizedCrop does, instead of from the centre square that the in-memory
split stores.

The same upscale rule as the stored squares: a photo whose shorter side would have to grow more than
data.max_upscale times to reach the stored size (image_size / 0.875) is refused, naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from visionlaunch.datasets.mixed_size import _rgb, stored_size
from visionlaunch.errors import VisionlaunchError


def default_max_side(image_size: int) -> int:
    """data.ffcv_max_resolution when unset: 4/3 of the stored size (image_size / 0.875), so that a 4:3 photo keeps
    the stored size on its shorter side, the resolution of the square it replaces (73 -> 97 px for image_size 64,
    256 -> 341 for 224)."""
    return round(stored_size(image_size) * 4 / 3)


def decode_photo(payload: Path | bytes, display: str, max_side: int, image_size: int, max_upscale: float
                 ) -> np.ndarray:
    """The photo in `payload` (a file, or an archive member's bytes; named `display`) as uint8 (H, W, 3), its longer
    side at most `max_side`. An unreadable file raises the decoder's UnreadableImage (a VisionlaunchError naming
    it)."""
    stored = stored_size(image_size)
    rgb = _rgb(payload, display, max_side)  # a JPEG decoded at a reduced scale that still covers max_side
    w, h = rgb.size
    if min(w, h) * max_upscale < stored:
        raise VisionlaunchError(
            f"{display} is {w}x{h} pixels (width x height): too small for data.image_size={image_size}, whose crops "
            f"need {stored} px on the shorter side, {stored / min(w, h):.1f} times its size, and "
            f"data.max_upscale={max_upscale:g} allows at most {max_upscale:g}. Remove the image, use a smaller "
            "data.image_size, or raise data.max_upscale.")
    scale = max_side / max(w, h)
    if scale < 1:  # shrink only (antialiased); the crop decoder enlarges small photos when it samples them
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return np.asarray(rgb)
