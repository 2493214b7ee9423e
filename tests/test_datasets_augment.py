"""BatchAugment: random translation (= crop of the zero-padded image), flip and cutout on whole batches."""

import pytest
import torch
import torch.nn.functional as F

from visionlaunch.datasets import BatchAugment
from visionlaunch.errors import VisionlaunchError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def numbered(n, c=2, h=12, w=10, dtype=torch.float32, device="cpu"):
    """Every pixel holds 1 + its flat (y, x) position, so an output pixel says where it came from; 0 = fill."""
    pos = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w).expand(n, c, h, w)
    return pos.to(dtype=dtype, device=device).contiguous()


def gen(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


def reference_crop(img, dy, dx, p):
    """The per-image definition: zero-pad by p, crop at offset (p + dy, p + dx)."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (p, p, p, p))
    return padded[..., p + dy:p + dy + h, p + dx:p + dx + w]


def test_disabled_is_identity():
    aug = BatchAugment()
    x = numbered(4)
    assert not aug.enabled and aug(x) is x
    assert BatchAugment(flip=True).enabled and BatchAugment(crop_padding=2).enabled and BatchAugment(cutout=3).enabled


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_same_shape_dtype_device_and_input_untouched(device, dtype):
    x = numbered(16, dtype=torch.uint8, device=device).to(dtype)  # values wrap in uint8: fine here
    before = x.clone()
    out = BatchAugment(crop_padding=3, flip=True, cutout=4)(x, gen(device))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before)


@pytest.mark.parametrize("device", DEVICES)
def test_same_generator_seed_same_output(device):
    aug = BatchAugment(crop_padding=4, flip=True, cutout=5)
    x = numbered(64, device=device)
    assert torch.equal(aug(x, gen(device, 3)), aug(x, gen(device, 3)))
    assert not torch.equal(aug(x, gen(device, 3)), aug(x, gen(device, 4)))


@pytest.mark.parametrize("device", DEVICES)
def test_translation_within_padding_covers_range_and_matches_padded_crop(device):
    p, h, w = 3, 12, 10
    x = numbered(2000, h=h, w=w, device=device)
    out = BatchAugment(crop_padding=p)(x, gen(device)).cpu()
    # The centre pixel is never fill for p < h/2: it tells each sample's shift.
    src = out[:, 0, h // 2, w // 2].long() - 1
    dy, dx = src // w - h // 2, src % w - w // 2
    assert dy.abs().max() <= p and dx.abs().max() <= p
    assert set(dy.tolist()) == set(range(-p, p + 1)) == set(dx.tolist())
    for i in range(0, 2000, 97):  # every pixel, fill included, equals the per-image definition
        assert torch.equal(out[i], reference_crop(x[i].cpu(), int(dy[i]), int(dx[i]), p))


@pytest.mark.parametrize("device", DEVICES)
def test_flip_rate_and_content(device):
    x = numbered(4000, device=device)
    out = BatchAugment(flip=True)(x, gen(device)).cpu()
    flipped = torch.all(out == x.cpu().flip(3), dim=(1, 2, 3))
    kept = torch.all(out == x.cpu(), dim=(1, 2, 3))
    assert torch.all(flipped ^ kept)  # each sample is exactly one of the two
    assert 0.46 < flipped.float().mean().item() < 0.54


def test_flip_and_translate_together_is_a_flipped_crop():
    p = 2
    x = numbered(500)
    out = BatchAugment(crop_padding=p, flip=True)(x, gen("cpu"))
    matched = 0
    for i in range(500):
        candidates = [reference_crop(x[i], dy, dx, p) for dy in range(-p, p + 1) for dx in range(-p, p + 1)]
        candidates += [c.flip(-1) for c in candidates]
        matched += any(torch.equal(out[i], c) for c in candidates)
    assert matched == 500


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cutout_zeroes_one_square(device, dtype):
    s, h, w = 4, 12, 10
    x = torch.full((1000, 3, h, w), 200, dtype=dtype, device=device)
    out = BatchAugment(cutout=s)(x, gen(device)).cpu()
    zero = out == 0
    assert torch.all(zero == zero[:, :1])  # same square in every channel
    assert torch.all(out[~zero] == 200)
    rows, cols = zero[:, 0].any(2), zero[:, 0].any(1)
    for i in range(1000):
        r, c = rows[i].nonzero().flatten(), cols[i].nonzero().flatten()
        assert len(r) and len(c)
        assert len(r) <= s and len(c) <= s and r.max() - r.min() + 1 == len(r) and c.max() - c.min() + 1 == len(c)
        assert zero[i, 0].sum() == len(r) * len(c)  # a full rectangle, clipped only at borders
        interior = 0 < r.min() and r.max() < h - 1 and 0 < c.min() and c.max() < w - 1
        if interior:
            assert len(r) == s and len(c) == s
    full = zero[:, 0].sum(dim=(1, 2)) == s * s
    assert 0.3 < full.float().mean() < 1.0  # most squares fit, some are clipped at the border


def test_bad_settings():
    for kwargs in ({"crop_padding": -1}, {"cutout": -2}, {"crop_padding": 1.5}, {"cutout": True}):
        with pytest.raises(VisionlaunchError, match="augment\\."):
            BatchAugment(**kwargs)
    with pytest.raises(ValueError, match="NCHW"):
        BatchAugment(flip=True)(torch.zeros(3, 4, 4))


@pytest.mark.parametrize("padding, flip", [(0, True), (1, False), (2, True), (4, True)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cpu_windows_and_accelerator_gathers_give_the_same_batch(padding, flip, dtype):
    # The CPU path (strided crop views) and the accelerator path (two gathers) must agree exactly for the same
    # draws, so a run means the same on either device and a checkpoint resumes on either.
    aug = BatchAugment(crop_padding=padding, flip=flip)
    x = torch.randint(0, 256, (300, 3, 9, 7)).to(dtype)
    flipped = torch.rand(300, generator=gen("cpu", 1)) < 0.5 if flip else None
    offsets = torch.randint(0, 2 * padding + 1, (2, 300, 1), generator=gen("cpu", 2)) if padding else None
    windows = aug._translate_flip_windows(x, flipped, offsets)
    gathers = aug._translate_flip_gathers(x, flipped, offsets)
    assert windows.dtype == dtype and windows.is_contiguous() and torch.equal(windows, gathers)
    assert windows.data_ptr() != x.data_ptr()  # a new tensor, the input untouched
