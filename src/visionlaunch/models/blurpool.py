"""BlurPool: anti-aliased strided convolutions (Zhang 2019, "Making convolutional networks shift-invariant again"),
applied as FFCV's ImageNet recipe does (`use_blurpool`): every conv with a stride above 1 and at least 16 input
channels first low-passes its input, channel by channel, with the fixed binomial filter [1, 2, 1] x [1, 2, 1] / 16,
so that the stride drops less high-frequency content as aliasing. The stem conv (3 input channels) is left as it is.

Two choices differ from FFCV's BlurPoolConv2d, on purpose: the border is padded by repeating the edge pixels (FFCV
pads with zeros, which darkens a one-pixel frame, so a constant image would not stay constant), and the filter is a
non-persistent buffer of the conv itself, so that parameter names, counts and state_dicts stay those of the plain
model and weights move between the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# FFCV's rule: stride > 1 and in_channels >= MIN_CHANNELS (which leaves out the RGB stem).
MIN_CHANNELS = 16


def binomial_filter(channels: int) -> torch.Tensor:
    """The depthwise 3x3 low-pass [1, 2, 1] x [1, 2, 1] / 16, one copy per channel: shape (channels, 1, 3, 3)."""
    row = torch.tensor([1.0, 2.0, 1.0])
    return (torch.outer(row, row) / 16).expand(channels, 1, 3, 3).contiguous()


def blur(x: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Low-pass every channel of a (N, C, H, W) batch; the output has the input's shape."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, filt.to(dtype=x.dtype), groups=x.shape[1])


class BlurConv2d(nn.Conv2d):
    """A Conv2d that blurs its input before convolving (with its stride): the same parameters as nn.Conv2d."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("blur_filter", binomial_filter(self.in_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(blur(x, self.blur_filter))


def blur_strided_convs(model: nn.Module) -> int:
    """Replace, in place, each strided conv of at least MIN_CHANNELS input channels by a BlurConv2d holding the same
    parameters; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, conv in list(parent.named_children()):
            if type(conv) is not nn.Conv2d or max(conv.stride) == 1 or conv.in_channels < MIN_CHANNELS:
                continue
            blurred = BlurConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                 padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                                 bias=conv.bias is not None, padding_mode=conv.padding_mode,
                                 device=conv.weight.device, dtype=conv.weight.dtype)
            blurred.weight, blurred.bias = conv.weight, conv.bias
            setattr(parent, name, blurred)
            replaced += 1
    return replaced
