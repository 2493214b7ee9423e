"""Bring any image to a trained model's input shape (C, H, W), the way its training data was decoded.

The pixels come from the one decoder (decode.py). Colour: a 1-channel model gets PIL's luminance ("L": 0.299 R +
0.587 G + 0.114 B, alpha dropped); a 3-channel model gets "RGB" (gray copied to all three channels, alpha dropped,
palettes expanded), as the ImageFolder reader decodes.
Size: an image of another size is resized to H x W with PIL's bilinear filter (antialiased when shrinking), without
keeping the aspect ratio or cropping: the whole image is squeezed into the model's frame. Nothing else changes
(no inversion, no centring), so an input should look like the training images: an MNIST model expects a white digit
on black.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from visionlaunch.datasets.decode import with_channels


def conform_image(pixels: np.ndarray, in_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (C, H, W) for a model of input shape `in_shape`, from uint8 (H, W, 1 or 3) pixels."""
    channels, height, width = in_shape
    pixels = with_channels(pixels, channels)
    if pixels.shape[:2] != (height, width):
        image = Image.fromarray(pixels[:, :, 0], "L") if channels == 1 else Image.fromarray(pixels, "RGB")
        pixels = np.asarray(image.resize((width, height), Image.BILINEAR)).reshape(height, width, channels)
    return pixels.transpose(2, 0, 1)


def conform_batch(images: torch.Tensor, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """A uint8 NCHW batch with another shape, converted image by image exactly as conform_image does."""
    out = np.empty((len(images), *in_shape), dtype=np.uint8)
    for i, chw in enumerate(images.cpu().numpy()):
        out[i] = conform_image(chw.transpose(1, 2, 0), in_shape)
    return torch.from_numpy(out)


def describe_conversion(from_shape: tuple[int, ...], to_shape: tuple[int, int, int]) -> str:
    """'grayscale + resize 32x32 -> 28x28' for a note to the user; '' when nothing changes."""
    steps = []
    if from_shape[0] != to_shape[0]:
        steps.append("grayscale (luminance)" if to_shape[0] == 1 else "gray to RGB")
    if tuple(from_shape[1:]) != tuple(to_shape[1:]):
        steps.append(f"resize {from_shape[2]}x{from_shape[1]} -> {to_shape[2]}x{to_shape[1]} (bilinear)")
    return " + ".join(steps)
