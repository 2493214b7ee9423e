"""The ResNets with the ImageNet stem (resnet18/34/50_imagenet): torchvision's parameter counts and layers, the same
outputs as torchvision's with the same weights; BlurPool (anti-aliased strided convs) and the zero-initialised last
BatchNorm of each block. Cheap on a CPU: full-size models are only built and counted, forwards run at 64 px."""

import pytest
import torch
from torch import nn

from visionlaunch.errors import VisionlaunchError
from visionlaunch.models import build_model, count_parameters
from visionlaunch.models.blurpool import BlurConv2d, binomial_filter, blur, blur_strided_convs
from visionlaunch.models.resnet import BasicBlock, Bottleneck

IMAGENET = (3, 224, 224)
SMALL = (3, 64, 64)


def _torchvision(arch, num_classes=1000):
    import torchvision  # a dependency of visionlaunch: the cross-check must run, never skip

    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def _as_torchvision(state):
    return {("fc." + k[len("classifier."):]) if k.startswith("classifier.") else k: v for k, v in state.items()}


@pytest.mark.parametrize("arch, expected", [("resnet50", 25_557_032), ("resnet18", 11_689_512),
                                            ("resnet34", 21_797_672)])
def test_parameter_counts_and_layers_are_torchvisions(arch, expected):
    ours = build_model(f"{arch}_imagenet", IMAGENET, 1000)
    theirs = _torchvision(arch)
    assert count_parameters(ours) == count_parameters(theirs) == expected
    assert {k: v.shape for k, v in _as_torchvision(ours.state_dict()).items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}


def test_the_cifar_names_keep_the_cifar_stem():
    # resnet18 is still the CIFAR ResNet-18 (3x3 stem, no max-pool), as the CIFAR presets expect.
    cifar = build_model("resnet18", (3, 32, 32), 100)
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, nn.Identity)
    assert count_parameters(cifar) == 11_220_132
    imagenet = build_model("resnet18_imagenet", (3, 32, 32), 100)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_resnet18_imagenet_computes_what_torchvision_computes_with_the_same_weights():
    torch.manual_seed(0)
    ours = build_model("resnet18_imagenet", SMALL, 10).eval()
    theirs = _torchvision("resnet18", 10).eval()
    theirs.load_state_dict(_as_torchvision(ours.state_dict()))
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_too_small_an_input_is_refused_when_building():
    with pytest.raises(VisionlaunchError, match=r"at least 32x32.*224x224 ImageNet"):
        build_model("resnet50_imagenet", (3, 16, 16), 10)


# --- BlurPool -------------------------------------------------------------------------------------------------


def test_blur_keeps_the_shape_and_a_constant_image_constant():
    filt = binomial_filter(5)
    assert filt.shape == (5, 1, 3, 3) and torch.allclose(filt.sum((1, 2, 3)), torch.ones(5))
    constant = torch.full((2, 5, 7, 9), 0.37)
    out = blur(constant, filt)
    assert out.shape == constant.shape
    torch.testing.assert_close(out, constant)  # borders too: the edge pixels are repeated, not zeros


def test_blur_removes_the_finest_checkerboard_and_keeps_smooth_content():
    # The pattern a stride of 2 aliases most, (-1)^(i+j), is exactly what [1,2,1]x[1,2,1] cancels.
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checker = ((-1.0) ** (i + j)).expand(1, 3, 8, 8)
    filt = binomial_filter(3)
    assert blur(checker, filt)[..., 1:-1, 1:-1].abs().max() < 1e-6
    ramp = (i + 2 * j).float().expand(1, 3, 8, 8)  # linear: unchanged away from the border
    torch.testing.assert_close(blur(ramp, filt)[..., 1:-1, 1:-1], ramp[..., 1:-1, 1:-1])


def test_blur_conv_has_the_conv_output_shape_and_parameters():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    model = nn.Sequential(conv)
    assert blur_strided_convs(model) == 1
    blurred = model[0]
    assert isinstance(blurred, BlurConv2d) and blurred.weight is conv.weight
    x = torch.randn(2, 16, 15, 15)
    assert blurred(x).shape == conv(x).shape == (2, 32, 8, 8)
    torch.testing.assert_close(blurred(x), conv(blur(x, binomial_filter(16))))


@pytest.mark.parametrize("name, blurred", [("resnet50_imagenet", 6), ("resnet18_imagenet", 6), ("resnet18", 6)])
def test_blurpool_wraps_the_strided_convs_of_16_channels_and_more_and_keeps_the_weights(name, blurred):
    plain = build_model(name, SMALL, 10, {"width": 16})
    model = build_model(name, SMALL, 10, {"width": 16, "blurpool": True})
    convs = [m for m in model.modules() if isinstance(m, BlurConv2d)]
    # FFCV's rule: stride 2 and >= 16 input channels, i.e. the first conv with a stride and the shortcut conv of
    # stages 2-4; the RGB stem is left alone.
    assert len(convs) == blurred and all(max(c.stride) == 2 and c.in_channels >= 16 for c in convs)
    assert type(model.conv1) is nn.Conv2d
    assert count_parameters(model) == count_parameters(plain)
    model.load_state_dict(plain.state_dict())  # the same keys: weights move between the two
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        out = model.eval()(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert not torch.allclose(out, plain.eval()(x))  # the same weights compute something else: the blur acts


# --- zero-initialised last BatchNorm --------------------------------------------------------------------------


def _branch_outputs(model):
    """What the last BatchNorm of every residual branch outputs on one random batch."""
    last_bn = [b.bn3 if isinstance(b, Bottleneck) else b.bn2 for b in model.modules()
               if isinstance(b, (BasicBlock, Bottleneck))]
    outputs = []
    hooks = [bn.register_forward_hook(lambda m, i, o: outputs.append(o.detach())) for bn in last_bn]
    model.train()(torch.randn(2, *SMALL))
    for h in hooks:
        h.remove()
    assert len(outputs) == len(last_bn)
    return outputs


@pytest.mark.parametrize("name, blocks", [("resnet50_imagenet", 16), ("resnet18_imagenet", 8)])
def test_zero_init_residual_makes_every_residual_branch_output_zero(name, blocks):
    torch.manual_seed(0)
    zeroed = _branch_outputs(build_model(name, SMALL, 10, {"width": 8, "zero_init_residual": True, "blurpool": True}))
    assert len(zeroed) == blocks and all(o.abs().max() == 0 for o in zeroed)
    # Without the option no branch is zero: the check above can fail.
    plain = _branch_outputs(build_model(name, SMALL, 10, {"width": 8, "blurpool": True}))
    assert all(o.abs().max() > 0 for o in plain)
