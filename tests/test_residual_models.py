"""Residual models (ResNet-18/34/50, pre-activation ResNet-18, WideResNet, ResNet-9): published parameter counts,
the same layers as torchvision's ResNets with the CIFAR stem, output shapes, gradients, overfitting a tiny batch,
the init and BatchNorm options, feature capture, summaries, and clear errors for inputs they cannot take."""

import math

import pytest
import torch
from torch import nn

from tests.model_checks import tiny_batch_accuracy
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.models import build_model, capture_features, count_parameters, model_names, model_summary
from visionlaunch.models.resnet import BasicBlock, Bottleneck, PreActBlock

CIFAR = (3, 32, 32)
# Full-size configurations, as in the presets.
FULL = {
    "resnet18": {}, "resnet34": {}, "resnet50": {}, "preact_resnet18": {},
    "wrn16_4": ("wide_resnet", {"depth": 16, "widen_factor": 4}),
    "wrn16_8": ("wide_resnet", {"depth": 16, "widen_factor": 8}),
    "wrn28_10": ("wide_resnet", {"depth": 28, "widen_factor": 10}),
    "wrn40_4": ("wide_resnet", {"depth": 40, "widen_factor": 4}),
    "resnet9": {},
}
# Narrow versions with the same structure, for the tests that train.
NARROW = {
    "resnet18": ("resnet18", {"width": 8}), "resnet34": ("resnet34", {"width": 4}),
    "resnet50": ("resnet50", {"width": 4}), "preact_resnet18": ("preact_resnet18", {"width": 8}),
    "wide_resnet": ("wide_resnet", {"depth": 10, "widen_factor": 1, "dropout": 0.1}),
    "resnet9": ("resnet9", {"widths": [8, 16, 16, 32]}),
}


def _full(key):
    spec = FULL[key]
    return spec if isinstance(spec, tuple) else (key, spec)


# Published parameter counts (rounded as published). ResNets: the common CIFAR ResNets (3x3 stem, e.g.
# kuangliu/pytorch-cifar; ResNet-18 11.2M with 100 classes). Wide ResNets: Zagoruyko & Komodakis 2016, Table 4
# (counted for CIFAR-10: WRN-40-4 8.9M, WRN-16-8 11.0M, WRN-28-10 36.5M) and WRN-16-4 2.7M from their code.
# In millions, as printed: the number of decimals is the precision to compare at.
PUBLISHED = {("resnet18", 100): "11.22", ("resnet34", 100): "21.3", ("resnet50", 100): "23.7",
             ("wrn28_10", 10): "36.5", ("wrn28_10", 100): "36.5", ("wrn16_8", 10): "11.0", ("wrn16_8", 100): "11.0",
             ("wrn40_4", 10): "8.9", ("wrn16_4", 10): "2.7"}


@pytest.mark.parametrize("key, num_classes", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_ones(key, num_classes):
    name, args = _full(key)
    published = PUBLISHED[key, num_classes]
    digits = len(published.split(".")[1])
    assert f"{count_parameters(build_model(name, CIFAR, num_classes, args)) / 1e6:.{digits}f}" == published


def _wrn_params(depth, k, num_classes, in_channels=3):
    """WRN parameters by hand: 3x3 convs without bias, BN (weight + bias) before every conv and once at the end,
    a 1x1 shortcut conv where the width changes."""
    n = (depth - 4) // 6
    total = in_channels * 16 * 9
    c = 16
    for width in (16 * k, 32 * k, 64 * k):
        for j in range(n):
            total += 2 * c + c * width * 9 + 2 * width + width * width * 9
            if c != width:
                total += c * width
            c = width
    return total + 2 * c + c * num_classes + num_classes


@pytest.mark.parametrize("depth, k", [(16, 4), (16, 8), (28, 10), (40, 4), (10, 1)])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_wide_resnet_parameter_count_follows_the_architecture(depth, k, num_classes):
    model = build_model("wide_resnet", CIFAR, num_classes, {"depth": depth, "widen_factor": k})
    assert count_parameters(model) == _wrn_params(depth, k, num_classes)
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 3 * (depth - 4) // 6


def _torchvision_cifar(arch, num_classes):
    import torchvision  # a dependency of visionlaunch: the cross-check must run, never skip

    net = getattr(torchvision.models, arch)(num_classes=num_classes)
    # The CIFAR stem: one 3x3 conv, stride 1, and no max-pool.
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnets_have_torchvisions_layers_with_the_cifar_stem(arch, num_classes):
    ours = build_model(arch, CIFAR, num_classes)
    theirs = _torchvision_cifar(arch, num_classes)
    assert count_parameters(ours) == count_parameters(theirs)
    expected = {k.replace("fc.", "classifier.", 1) if k.startswith("fc.") else k: v.shape
                for k, v in theirs.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected


def test_resnet18_computes_what_torchvision_computes_with_the_same_weights():
    torch.manual_seed(0)
    ours, theirs = build_model("resnet18", CIFAR, 10).eval(), _torchvision_cifar("resnet18", 10).eval()
    theirs.load_state_dict({k.replace("classifier.", "fc.", 1) if k.startswith("classifier.") else k: v
                            for k, v in ours.state_dict().items()})
    x = torch.randn(2, *CIFAR)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", list(FULL))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_full_size_models_give_logits_and_honour_the_contract(key, num_classes):
    name, args = _full(key)
    model = build_model(name, CIFAR, num_classes, args).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *CIFAR))
    assert out.shape == (2, num_classes) and torch.isfinite(out).all()
    assert isinstance(model.classifier, nn.Linear) and model.feature_dim == model.classifier.in_features


@pytest.mark.parametrize("key", list(NARROW))
@pytest.mark.parametrize("in_shape", [CIFAR, (1, 28, 28)])
def test_forward_and_backward_reach_every_parameter(key, in_shape):
    torch.manual_seed(0)
    name, args = NARROW[key]
    model = build_model(name, in_shape, 10, args)
    logits = model(torch.randn(4, *in_shape))
    assert logits.shape == (4, 10)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"{pname} received no gradient"


@pytest.mark.parametrize("key", list(NARROW))
def test_overfits_a_tiny_batch(key):
    torch.manual_seed(0)
    name, args = NARROW[key]
    model = build_model(name, CIFAR, 10, {**args, **({"dropout": 0.0} if "dropout" in args else {})})
    assert tiny_batch_accuracy(model, CIFAR, lr=3e-3, steps=60) == 1.0


def _shortcut(block, x):
    """What a block returns when its residual branch is zero."""
    if isinstance(block, PreActBlock):
        return block.shortcut(block.relu(block.bn1(x))) if block.shape_changes else x
    return torch.relu(block.downsample(x))


def _identity_blocks(model):
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, PreActBlock))]


@pytest.mark.parametrize("name, args", [("resnet18", {"width": 8}), ("resnet50", {"width": 4}),
                                        ("preact_resnet18", {"width": 8}),
                                        ("wide_resnet", {"depth": 10, "widen_factor": 1})])
def test_zero_init_residual_makes_every_block_start_as_its_shortcut(name, args):
    torch.manual_seed(0)
    plain = build_model(name, CIFAR, 10, args).eval()
    model = build_model(name, CIFAR, 10, {**args, "zero_init_residual": True}).eval()
    blocks = _identity_blocks(model)
    assert blocks
    for block in blocks:
        x = torch.rand(2, block.conv1.in_channels, 8, 8)  # >= 0, like the ReLU output that feeds a block
        with torch.no_grad():
            torch.testing.assert_close(block(x), _shortcut(block, x))
    # The plain init does not do this (the check above can fail), and the zeroed branch still learns.
    first = _identity_blocks(plain)[0]
    x = torch.rand(2, first.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(first(x), _shortcut(first, x))
    model.train()
    nn.functional.cross_entropy(model(torch.randn(4, *CIFAR)), torch.arange(4)).backward()
    zeroed = [p for b in blocks for p in ([b.bn3.weight] if isinstance(b, Bottleneck) else
                                          [b.conv2.weight] if isinstance(b, PreActBlock) else [b.bn2.weight])]
    assert all(p.grad.abs().sum() > 0 for p in zeroed)


@pytest.mark.parametrize("key", list(NARROW))
def test_batch_norm_settings_and_init_options(key):
    name, args = NARROW[key]
    model = build_model(name, CIFAR, 10, {**args, "bn_momentum": 0.01, "bn_eps": 1e-3})
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)
    torch.manual_seed(0)
    he = build_model(name, CIFAR, 10, args)
    torch.manual_seed(0)
    default = build_model(name, CIFAR, 10, {**args, "kaiming_init": False})
    conv = [m for m in he.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)][-1]
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.2)
    conv_default = [m for m in default.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)][-1]
    # PyTorch's default: uniform with bound 1/sqrt(fan_in), i.e. std 1/sqrt(3 fan_in).
    assert conv_default.weight.std().item() == pytest.approx(1 / math.sqrt(3 * conv.in_channels * 9), rel=0.2)


@pytest.mark.parametrize("key", list(NARROW))
def test_penultimate_features_and_summary(key):
    name, args = NARROW[key]
    model = build_model(name, CIFAR, 10, args).eval()
    x = torch.randn(3, *CIFAR)
    with capture_features(model, "penultimate") as feats:
        logits = model(x)
    assert feats[0].shape == (3, model.feature_dim)
    scale = getattr(model, "logit_scale", 1.0)
    torch.testing.assert_close(model.classifier(feats[0]) * scale, logits.detach())
    text = model_summary(model, CIFAR)
    assert f"{count_parameters(model):,}" in text and "classifier" in text


def test_models_command_lists_the_residual_nets(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18", "resnet34", "resnet50", "preact_resnet18", "wide_resnet", "resnet9"):
        assert name in model_names() and f"{name}:" in out
    assert "zero_init_residual=False" in out and "bn_momentum=0.1" in out and "depth=28" in out


@pytest.mark.parametrize("name, args, in_shape, needle", [
    ("resnet18", {}, (3, 4, 4), "at least 8x8"),
    ("resnet9", {}, (3, 6, 6), "at least 8x8"),
    ("wide_resnet", {}, (3, 2, 2), "at least 4x4"),
    ("wide_resnet", {"depth": 20}, CIFAR, r"depth must be 6n \+ 4"),
    ("resnet9", {"widths": [8, 16, 32]}, CIFAR, "widths"),
    ("resnet18", {"bn_momentum": 0}, CIFAR, "bn_momentum"),
    ("wide_resnet", {"dropout": 1.0}, CIFAR, "dropout"),
])
def test_inputs_a_model_cannot_take_are_refused_when_building(name, args, in_shape, needle):
    with pytest.raises(VisionlaunchError, match=needle):
        build_model(name, in_shape, 10, args)


@pytest.mark.parametrize("key", list(NARROW))
def test_wrong_class_count_and_wrong_channels_are_clear_errors(key):
    name, args = NARROW[key]
    with pytest.raises(VisionlaunchError, match="num_classes"):
        build_model(name, CIFAR, 1, args)
    model = build_model(name, CIFAR, 10, args)
    with pytest.raises(VisionlaunchError, match=r"in_shape=\(3, 32, 32\).*got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
