"""Config: presets load, overrides apply with YAML typing, and every kind of mistake names the bad key."""

from pathlib import Path

import pytest

from visionlaunch.config import RunConfig, load_config
from visionlaunch.config_reference import describe_keys
from visionlaunch.config_section import ConfigSection
from visionlaunch.errors import VisionlaunchError
from visionlaunch.trajectory import config_differences, shapes_trajectory

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_all_six_assignment_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"mnist_fcn", "mnist_cnn", "cifar100_fcn", "cifar100_cnn", "cifar10_fcn", "cifar10_cnn"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_validate(preset):
    cfg = load_config(preset)
    assert cfg.train.epochs >= 1
    assert cfg.data.name in preset.stem or cfg.data.name == "imagefolder"


def test_overrides_are_typed_by_yaml():
    cfg = load_config(PRESETS[0], ["optim.lr=0.05", "train.epochs=3", "augment.flip=true",
                                   "model.args.hidden=[64,32]", "output.name=my run"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.train.epochs, int) and cfg.train.epochs == 3
    assert cfg.augment.flip is True
    assert cfg.model.args["hidden"] == [64, 32]
    assert cfg.output.name == "my run"


def test_saved_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=0.2", "data.val_size=0.1"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.data.val_size == 0.1


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(VisionlaunchError) as err:
        load_config(None, ["optim.learning_rate=0.1"])
    msg = str(err.value)
    assert "optim.learning_rate" in msg
    for valid in ("lr", "momentum", "weight_decay"):
        assert valid in msg


def test_unknown_section_lists_sections():
    with pytest.raises(VisionlaunchError) as err:
        load_config(None, ["trainer.epochs=3"])
    assert "trainer" in str(err.value) and "train" in str(err.value) and "optim" in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=-1", "train.epochs"),
    ("train.epochs=three", "train.epochs"),
    ("optim.lr=0", "optim.lr"),
    ("data.name=svhn", "data.name"),
    ("train.precision=fp8", "train.precision"),
    ("augment.flip=sometimes", "augment.flip"),
])
def test_wrong_values_name_the_key(override, key):
    with pytest.raises(VisionlaunchError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(VisionlaunchError, match="section.key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(VisionlaunchError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(VisionlaunchError, match="not valid YAML"):
        load_config(bad)


def test_combination_rules():
    with pytest.raises(VisionlaunchError, match="data.path"):
        load_config(None, ["data.name=imagefolder"])
    with pytest.raises(VisionlaunchError, match="fallback"):
        load_config(None, ["data.name=cifar10", "data.fallback=sample"])


def test_describe_keys_covers_every_section():
    text = describe_keys()
    for section in RunConfig.model_fields:
        assert f"{section}:" in text


@pytest.mark.parametrize("section", list(RunConfig.model_fields))
def test_every_section_refuses_unknown_keys_and_never_changes(section):
    # optim: and schedule: live in optim_config.py: every section must share the one base and its rules.
    assert issubclass(RunConfig.model_fields[section].annotation, ConfigSection)
    with pytest.raises(VisionlaunchError, match=f"unknown key '{section}.no_such_key'.*Valid keys in '{section}'"):
        load_config(None, [f"{section}.no_such_key=1"])
    part = getattr(load_config(None, []), section)
    with pytest.raises(Exception, match="frozen"):
        setattr(part, next(iter(type(part).model_fields)), None)


def test_model_args_are_validated_with_the_config():
    with pytest.raises(VisionlaunchError, match="model 'fcn' has no argument 'hiden'.*did you mean 'hidden'"):
        load_config(None, ["model.name=fcn", "model.args={hiden: [8]}"])
    with pytest.raises(VisionlaunchError, match="argument 'dropout' must be float >= 0 and < 1"):
        load_config(None, ["model.name=fcn", "model.args={dropout: 1.5}"])
    with pytest.raises(VisionlaunchError, match="unknown model 'resnet9000'"):
        load_config(None, ["model.name=resnet9000"])


def test_config_differences_name_only_the_keys_that_shape_training():
    dump = lambda *o: load_config(None, ["model.name=fcn", *o]).model_dump(mode="json")  # noqa: E731
    old, new = dump("model.args={hidden: [8]}"), dump("model.args={hidden: [16]}", "optim.lr=0.1",
                                                      "train.log_every=7", "output.name=x", "data.root=/elsewhere")
    assert config_differences(old, new, "checkpoint", "now") == [
        "model.args: checkpoint {'hidden': [8]}, now {'hidden': [16]}", "optim.lr: checkpoint 0.05, now 0.1"]
    assert config_differences(new, new, "run", "plan") == []
    assert not shapes_trajectory("train.log_every") and shapes_trajectory("optim.lr")
    # A key an older version did not write counts as its default: such a run stays comparable, unless the key is set.
    del old["train"]["ema_decay"]
    assert config_differences(old, dump("model.args={hidden: [8]}"), "run", "plan") == []
    assert config_differences(old, dump("model.args={hidden: [8]}", "train.ema_decay=0.9"), "run", "plan") == [
        "train.ema_decay: run 0.0, plan 0.9"]
