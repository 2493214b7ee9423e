"""Models: shapes, parameter counts derived by hand, training on a tiny batch, registry errors, feature
capture and summaries."""

import math

import pytest
import torch
from torch import nn

from tests.model_checks import check_builder_signature, check_model_contract, tiny_batch_accuracy
from visionlaunch.errors import VisionlaunchError
from visionlaunch.models import (
    build_model,
    capture_features,
    count_parameters,
    layer_names,
    model_args,
    model_names,
    model_summary,
    register,
    validate_model_args,
)
from visionlaunch.models import registry

SHAPES = [(1, 28, 28), (3, 32, 32)]
SMALL = {
    "fcn": {"hidden": [32, 16]},
    "cnn": {"channels": [4, 8], "hidden": [16]},
}


def _fc_params(in_features, hidden, num_classes, batch_norm):
    """Linear layers before a BatchNorm have no bias; BatchNorm has a weight and a bias per feature."""
    total = 0
    for width in hidden:
        total += in_features * width + (2 * width if batch_norm else width)
        in_features = width
    return total + in_features * num_classes + num_classes


def _cnn_params(in_shape, num_classes, channels, convs, hidden, batch_norm, global_pool):
    c, h, w = in_shape
    total = 0
    for out in channels:
        for _ in range(convs):
            total += c * out * 3 * 3 + (2 * out if batch_norm else out)
            c = out
    # Each 2x2 max-pool floors the size: 28 -> 14 -> 7.
    flat = c if global_pool else c * (h // 2 ** len(channels)) * (w // 2 ** len(channels))
    return total + _fc_params(flat, hidden, num_classes, batch_norm)


@pytest.mark.parametrize("name", ["fcn", "cnn"])
@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_default_models_give_logits_and_honour_the_contract(name, in_shape, num_classes):
    torch.manual_seed(0)
    model = build_model(name, in_shape, num_classes)
    out = model.eval()(torch.randn(3, *in_shape))
    assert out.shape == (3, num_classes) and out.dtype == torch.float32
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == num_classes
    assert model.feature_dim == model.classifier.in_features


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_fcn_parameter_count(in_shape, num_classes, batch_norm):
    model = build_model("fcn", in_shape, num_classes, {"hidden": [32, 16], "batch_norm": batch_norm})
    assert count_parameters(model) == _fc_params(math.prod(in_shape), [32, 16], num_classes, batch_norm)
    # Defaults: two hidden layers of 1024.
    default = build_model("fcn", in_shape, num_classes)
    assert count_parameters(default) == _fc_params(math.prod(in_shape), [1024, 1024], num_classes, True)


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize(("batch_norm", "global_pool", "convs"), [(True, False, 2), (False, True, 1), (True, True, 3)])
def test_cnn_parameter_count(in_shape, num_classes, batch_norm, global_pool, convs):
    args = {"channels": [4, 8], "hidden": [16], "convs_per_stage": convs, "batch_norm": batch_norm,
            "global_pool": global_pool}
    model = build_model("cnn", in_shape, num_classes, args)
    assert count_parameters(model) == _cnn_params(in_shape, num_classes, [4, 8], convs, [16], batch_norm, global_pool)
    default = build_model("cnn", in_shape, num_classes)
    assert count_parameters(default) == _cnn_params(in_shape, num_classes, [32, 64, 128], 2, [256], True, False)


def test_count_parameters_skips_frozen():
    model = build_model("fcn", (1, 4, 4), 3, {"hidden": [5]})
    model.classifier.requires_grad_(False)
    assert count_parameters(model) == _fc_params(16, [5], 3, True) - (5 * 3 + 3)


def test_no_bias_before_batch_norm_and_init():
    model = build_model("cnn", (3, 32, 32), 10, {"channels": [8], "hidden": [16]})
    conv = model.stages[0].conv1
    assert conv.bias is None and model.hidden[0].linear.bias is None
    bn = model.stages[0].bn1
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    # Kaiming fan_out for conv: std = sqrt(2 / (out_channels * 3 * 3)).
    expected = math.sqrt(2 / (8 * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.25)
    assert torch.equal(model.classifier.bias, torch.zeros(10))
    plain = build_model("cnn", (3, 32, 32), 10, {"channels": [8], "hidden": [16], "batch_norm": False})
    assert plain.stages[0].conv1.bias is not None and not any(
        isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in plain.modules()
    )


@pytest.mark.parametrize("name", ["fcn", "cnn"])
@pytest.mark.parametrize("in_shape", SHAPES)
def test_backward_gives_finite_gradients_everywhere(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, in_shape, 10, {**SMALL[name], "dropout": 0.2})
    loss = nn.functional.cross_entropy(model(torch.randn(4, *in_shape)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"{pname} received no gradient"


@pytest.mark.parametrize(
    ("name", "args", "lr"),
    [
        ("fcn", {"hidden": [64], "dropout": 0.1, "input_dropout": 0.1}, 1e-2),
        ("cnn", {"channels": [8, 16], "hidden": [32]}, 1e-2),
        ("cnn", {"channels": [16, 32], "hidden": [32], "global_pool": True}, 1e-2),
        # Without BatchNorm a gentler step size (as one would use in practice).
        ("cnn", {"channels": [8, 16], "hidden": [32], "batch_norm": False}, 3e-3),
    ],
)
@pytest.mark.parametrize("in_shape", SHAPES)
def test_overfits_a_tiny_batch(name, args, lr, in_shape):
    torch.manual_seed(0)
    model = build_model(name, in_shape, 10, args)
    assert tiny_batch_accuracy(model, in_shape, lr, steps=100) == 1.0


# --- registry ---------------------------------------------------------------------------------------------


def test_registry_lists_models_and_their_args():
    assert {"fcn", "cnn"} <= set(model_names())
    assert model_names() == sorted(model_names())
    fcn = model_args("fcn")
    assert list(fcn) == ["hidden", "batch_norm", "dropout", "input_dropout"]
    assert fcn["hidden"] == ("list[int > 0]", [1024, 1024])
    assert fcn["batch_norm"] == ("bool", True)
    assert fcn["dropout"] == ("float >= 0 and < 1", 0.0)
    cnn = model_args("cnn")
    assert list(cnn) == ["channels", "convs_per_stage", "batch_norm", "global_pool", "hidden", "dropout"]
    assert cnn["channels"][1] == [32, 64, 128] and cnn["hidden"][1] == [256]


def test_validate_model_args_fills_defaults_and_converts_yaml_values():
    args = validate_model_args("cnn", {"channels": (16, 32), "dropout": "0.25", "global_pool": "true"})
    assert args == {"channels": [16, 32], "convs_per_stage": 2, "batch_norm": True, "global_pool": True,
                    "hidden": [256], "dropout": 0.25}


@pytest.mark.parametrize(
    ("name", "args", "needles"),
    [
        ("resnet9000", {}, ["unknown model 'resnet9000'", "cnn", "fcn"]),
        ("cnnn", {}, ["Did you mean 'cnn'"]),
        ("cnn", {"hiden": [8]}, ["no argument 'hiden'", "did you mean 'hidden'", "channels: list[int > 0]",
                                "= [32, 64, 128]", "dropout: float >= 0 and < 1 = 0.0"]),
        ("fcn", {"hidden": "abc"}, ["argument 'hidden'", "must be list[int > 0]", "'abc'"]),
        ("fcn", {"hidden": [64, -1]}, ["argument 'hidden'", "item [1]", "greater than 0"]),
        ("fcn", {"hidden": 64}, ["argument 'hidden'", "valid list"]),
        ("fcn", {"dropout": "x"}, ["argument 'dropout'", "must be float"]),
        ("fcn", {"dropout": 1.5}, ["argument 'dropout'", "< 1", "1.5"]),
        ("fcn", {"input_dropout": -0.1}, ["argument 'input_dropout'", ">= 0"]),
        ("cnn", {"channels": [0, 8]}, ["argument 'channels'", "greater than 0"]),
        ("cnn", {"channels": []}, ["argument 'channels'", "at least 1 item"]),
        ("cnn", {"convs_per_stage": 1.5}, ["argument 'convs_per_stage'", "int > 0"]),
        ("cnn", {"batch_norm": "maybe"}, ["argument 'batch_norm'", "must be bool"]),
        ("cnn", {"channels": [4, 4, 4, 4, 4]}, ["5 stages", "28x28", "28 -> 14 -> 7 -> 3 -> 1 -> 0",
                                                "At most 4 stages"]),
    ],
)
def test_registry_errors_name_the_problem(name, args, needles):
    with pytest.raises(VisionlaunchError) as err:
        build_model(name, (1, 28, 28), 10, args)
    for needle in needles:
        assert needle in str(err.value)


def test_four_stages_fit_28x28():
    model = build_model("cnn", (1, 28, 28), 10, {"channels": [4, 4, 4, 4], "hidden": []})
    assert model.feature_dim == 4 * 1 * 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("in_shape", "num_classes", "needle"),
    [((28, 28), 10, "three positive integers"), ((1, 0, 28), 10, "three positive integers"),
     ((1, 28, 28), 1, "num_classes"), ((1, 28, 28), 2.5, "num_classes")],
)
def test_bad_shapes_and_class_counts(in_shape, num_classes, needle):
    with pytest.raises(VisionlaunchError, match=needle):
        build_model("fcn", in_shape, num_classes)


@pytest.mark.parametrize("name", ["fcn", "cnn"])
def test_input_that_does_not_match_in_shape_is_a_clear_error(name):
    model = build_model(name, (3, 32, 32), 10, SMALL[name])
    with pytest.raises(VisionlaunchError, match=r"in_shape=\(3, 32, 32\).*got \(2, 1, 28, 28\)"):
        model(torch.randn(2, 1, 28, 28))


def test_global_pool_cnn_accepts_other_sizes_but_checks_channels():
    model = build_model("cnn", (3, 32, 32), 10, {"channels": [4, 8], "global_pool": True}).eval()
    assert model(torch.randn(2, 3, 40, 48)).shape == (2, 10)
    with pytest.raises(VisionlaunchError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))


def test_register_refuses_a_taken_name_and_the_contract_checks_catch_bad_builders(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    with pytest.raises(ValueError, match="already registered"):
        register("fcn")(lambda in_shape, num_classes: None)

    def bad(in_shape, num_classes, width: int = 3):
        return None

    with pytest.raises(AssertionError, match="keyword-only with a default"):  # the contract test below catches it
        check_builder_signature(bad)
    with pytest.raises(AssertionError, match="must start with"):
        check_builder_signature(lambda shape, classes: None)

    @register("no_classifier")
    def no_classifier(in_shape: tuple[int, int, int], num_classes: int, *, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))

    assert "no_classifier" in model_names() and model_args("no_classifier") == {"width": ("int", 4)}
    with pytest.raises(AssertionError, match=r"\.classifier"):  # the contract test below would catch it
        check_model_contract(build_model("no_classifier", (1, 4, 4), 3), 3)


# The smallest arguments of each registered model, so the contract test builds them all in a moment.
TINY_ARGS = {
    "fcn": {"hidden": [8]}, "cnn": {"channels": [4], "hidden": [8]}, "resnet9": {"widths": [4, 4, 4, 4]},
    "resnet18": {"width": 4}, "resnet34": {"width": 4}, "resnet50": {"width": 4}, "preact_resnet18": {"width": 4},
    "wide_resnet": {"depth": 10, "widen_factor": 1}, "resnet18_imagenet": {"width": 4},
    "resnet34_imagenet": {"width": 4}, "resnet50_imagenet": {"width": 4},
}


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_honours_the_contract(name):
    check_builder_signature(registry._BUILDERS[name])
    model = build_model(name, (3, 32, 32), 7, TINY_ARGS.get(name))
    check_model_contract(model, 7)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


# --- features ---------------------------------------------------------------------------------------------


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ["fcn", "cnn"])
@pytest.mark.parametrize("in_shape", SHAPES)
def test_capture_penultimate_features(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, in_shape, 10, SMALL[name]).eval()
    x = torch.randn(5, *in_shape)
    with capture_features(model, "penultimate") as feats:
        logits = model(x)
        model(x[:2])
    assert [f.shape for f in feats] == [(5, model.feature_dim), (2, model.feature_dim)]
    assert all(f.dtype == torch.float32 and f.device.type == "cpu" and not f.requires_grad for f in feats)
    # They are what the classifier saw.
    torch.testing.assert_close(model.classifier(feats[0]), logits.detach())
    assert _hook_count(model) == 0


def test_capture_named_layers():
    model = build_model("cnn", (3, 32, 32), 10, SMALL["cnn"]).eval()
    x = torch.randn(3, 3, 32, 32)
    with capture_features(model, "stages.0.conv1") as conv, capture_features(model, "stages.1") as stage:
        model(x)
    assert conv[0].shape == (3, 4 * 32 * 32)
    assert stage[0].shape == (3, 8 * 8 * 8)
    torch.testing.assert_close(conv[0], model.stages[0].conv1(x).flatten(1).detach())
    assert _hook_count(model) == 0


def test_captured_features_are_copies():
    model = build_model("fcn", (1, 4, 4), 3, {"hidden": [6]}).eval()
    with capture_features(model, "hidden.0.bn") as feats:
        out = model.hidden(torch.randn(2, 16))
    before = feats[0].clone()
    out.add_(100.0)
    assert torch.equal(feats[0], before)


def test_hooks_removed_on_exception():
    model = build_model("fcn", (1, 4, 4), 3, {"hidden": [6]})
    with pytest.raises(RuntimeError, match="boom"), capture_features(model, "penultimate"):
        assert _hook_count(model) == 1
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_layer_names_and_unknown_layer():
    model = build_model("cnn", (3, 32, 32), 10, SMALL["cnn"])
    names = layer_names(model)
    assert names[0] == "penultimate" and "" not in names
    assert {"stages.0.conv1", "stages.1.pool", "hidden.0.linear", "classifier"} <= set(names)
    with pytest.raises(VisionlaunchError) as err, capture_features(model, "stages.9"):
        pass
    assert "unknown layer 'stages.9'" in str(err.value) and "stages.0.conv1" in str(err.value)
    assert "..." not in str(err.value)
    big = build_model("cnn", (3, 32, 32), 10, {"channels": [4, 4, 4, 4], "convs_per_stage": 3})
    assert len(layer_names(big)) > 40
    with pytest.raises(VisionlaunchError, match=r"\.\.\. \(\d+ more; see layer_names\(model\)\)"), \
            capture_features(big, "nope"):
        pass


# --- summary ----------------------------------------------------------------------------------------------


def test_summary_lists_layers_and_total_and_leaves_model_untouched():
    torch.manual_seed(0)
    model = build_model("cnn", (3, 32, 32), 10, SMALL["cnn"])
    model.train()
    # Give the BatchNorms non-trivial statistics, then freeze one part in eval mode (a mixed-mode model).
    model(torch.randn(8, 3, 32, 32))
    model.hidden.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    rng = torch.get_rng_state()

    text = model_summary(model, (3, 32, 32))

    for needle in ("CNN", "stages", "conv1", "bn2", "pool", "hidden", "linear", "classifier", "[2, 10]",
                   "[2, 4, 32, 32]", f"Total params: {count_parameters(model):,}"):
        assert needle in text, needle
    assert "Units." not in text
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]) and p.device.type == "cpu", name
    assert torch.equal(torch.get_rng_state(), rng), "summary must not consume the global random stream"


def test_summary_of_fcn_and_bad_shape():
    model = build_model("fcn", (1, 28, 28), 10, {"hidden": [32]})
    text = model_summary(model, (1, 28, 28))
    assert "input_dropout" in text and "classifier" in text
    assert f"Total params: {_fc_params(784, [32], 10, True):,}" in text
    with pytest.raises(VisionlaunchError, match="in_shape"):
        model_summary(model, (3, 32, 32))
