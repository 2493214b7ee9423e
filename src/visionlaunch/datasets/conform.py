"""Bring any image to a trained model's input shape (C, H, W), the way its training data was decoded.

Colour: a 1-channel model gets PIL's luminance ("L": 0.299 R + 0.587 G + 0.114 B, alpha dropped); a 3-channel model
gets "RGB" (gray copied to all three channels, alpha dropped, palettes expanded), as the ImageFolder reader decodes.
Size: an image of another size is resized to H x W with PIL's bilinear filter (antialiased when shrinking), without
keeping the aspect ratio or cropping: the whole image is squeezed into the model's frame. Nothing else changes
(no inversion, no centring), so an input should look like the training images: an MNIST model expects a white digit
on black.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def conform_image(image: Image.Image, in_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (C, H, W) for a model of input shape `in_shape`."""
    channels, height, width = in_shape
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def conform_batch(images: torch.Tensor, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """A uint8 NCHW batch with another shape, converted image by image exactly as conform_image does."""
    out = np.empty((len(images), *in_shape), dtype=np.uint8)
    for i, chw in enumerate(images.cpu().numpy()):
        pil = Image.fromarray(chw[0], "L") if chw.shape[0] == 1 else Image.fromarray(chw.transpose(1, 2, 0), "RGB")
        out[i] = conform_image(pil, in_shape)
    return torch.from_numpy(out)


def describe_conversion(from_shape: tuple[int, ...], to_shape: tuple[int, int, int]) -> str:
    """'grayscale + resize 32x32 -> 28x28' for a note to the user; '' when nothing changes."""
    steps = []
    if from_shape[0] != to_shape[0]:
        steps.append("grayscale (luminance)" if to_shape[0] == 1 else "gray to RGB")
    if tuple(from_shape[1:]) != tuple(to_shape[1:]):
        steps.append(f"resize {from_shape[2]}x{from_shape[1]} -> {to_shape[2]}x{to_shape[1]} (bilinear)")
    return " + ".join(steps)
