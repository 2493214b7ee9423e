"""Progressive resizing (the resolution: section) and evaluation at its own size (data.eval_image_size,
data.eval_crop_ratio): the size of every epoch is FFCV's get_resolution; every backend that makes the random-resized
crop of data.image_size (tensor, torch in memory, torch out of core, ffcv) crops at the epoch's size; a run resumed in
the middle of the ramp is bit-identical; 2 processes follow 1 across a size change; evaluation, `evaluate` and
`predict` see the evaluation view."""

import signal

import numpy as np
import pytest
import torch

from tests.conftest import REPO, isolate_environment
from tests.run_helpers import (assert_same_records, max_weight_difference, records, run, signal_at_training_step,
                               two_process_launcher)
from visionlaunch.config import load_config
from visionlaunch.config_section import ConfigSection
from visionlaunch.datasets.augment import BatchPipeline
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.datasets.loaders import SourceLoader, TorchLoader
from visionlaunch.datasets.mixed_size import ResizedCrop, SizeRamp, center_crop, eval_geometry, stored_size
from visionlaunch.datasets.source import ArraySource, CenterCrop
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.trainers.checkpoint import complete_checkpoints

CPU = torch.device("cpu")


def ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """FFCV's train_imagenet.py get_resolution, written out (its step is 32)."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


def test_the_size_of_every_epoch_is_ffcvs():
    for start, end, first, last in [(160, 192, 11, 13), (160, 192, 65, 76), (128, 256, 3, 10), (160, 160, 2, 5),
                                    (96, 224, 0, 7), (160, 192, 4, 4)]:
        ramp = SizeRamp(start, end, first, last, step=32)
        assert [ramp.size_at(e) for e in range(90)] == \
            [ffcv_get_resolution(e, start, end, last, first) for e in range(90)]
    # rn50_16_epochs.yaml: 160 px for epochs 0-11, then 192 (epoch 12 interpolates 176, which rounds up to 192)
    assert [SizeRamp(160, 192, 11, 13).size_at(e) for e in range(16)] == [160] * 12 + [192] * 4
    assert [SizeRamp(24, 40, 1, 3, step=8).size_at(e) for e in range(5)] == [24, 24, 32, 40, 40]


@pytest.mark.parametrize("overrides, expected", [
    (["resolution.start=160"], "resolution.start and resolution.end go together"),
    (["resolution.start=192", "resolution.end=160"], "must not exceed resolution.end"),
    (["resolution.start=160", "resolution.end=192", "resolution.start_epoch=5", "resolution.end_epoch=3"],
     "must not come after resolution.end_epoch"),
    (["resolution.start=160", "resolution.end=192"], "set data.image_size"),
    (["data.eval_image_size=256"], "set data.image_size"),
    (["data.eval_crop_ratio=0.9"], "set data.image_size"),
    (["data.name=imagefolder", "data.path=x", "data.image_size=64", "data.eval_crop_ratio=1.5"], "less than or equal"),
    (["resolution.step=0"], "greater than or equal to 1"),
])
def test_bad_resolution_settings_are_refused_naming_the_key(overrides, expected):
    with pytest.raises(VisionlaunchError, match=expected):
        load_config(None, overrides)


def test_the_resolution_section_follows_the_config_rules():
    from visionlaunch.resolution_config import ResolutionConfig
    assert issubclass(ResolutionConfig, ConfigSection)
    cfg = load_config(None, ["data.name=imagefolder", "data.path=x", "data.image_size=64", "resolution.start=32",
                             "resolution.end=64", "resolution.start_epoch=1", "resolution.end_epoch=2"])
    assert cfg.resolution.ramp() == SizeRamp(32, 64, 1, 2, 32)
    assert load_config(None, []).resolution.ramp() is None


# --- every backend crops at the epoch's size ------------------------------------------------------------------------

RAMP = SizeRamp(24, 40, start_epoch=1, end_epoch=3, step=8)  # epochs 0..4: 24, 24, 32, 40, 40
SIZES = [24, 24, 32, 40, 40]


def _images(n=16, side=46):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g), torch.arange(n) % 4


def _sizes(loader, crop_in_pipeline=None):
    seen = []
    for epoch in range(len(SIZES)):
        loader.set_epoch(epoch)
        images, _ = next(iter(loader))
        if crop_in_pipeline is not None:
            crop_in_pipeline.set_epoch(epoch)
            images = crop_in_pipeline.train(images)
        assert images.shape[-2] == images.shape[-1]
        seen.append(images.shape[-1])
    return seen


def test_the_tensor_backend_crops_at_the_epochs_size():
    from visionlaunch.datasets.loaders import TensorLoader
    from visionlaunch.config import AugmentConfig
    images, labels = _images()
    pipeline = BatchPipeline(AugmentConfig(), (0.5,) * 3, (0.25,) * 3, CPU, seed=0,
                             resized_crop=ResizedCrop(32, ramp=RAMP))
    assert _sizes(TensorLoader(images, labels, 8, device=CPU, train=True, seed=0), pipeline) == SIZES
    # without a ramp the crop stays data.image_size
    fixed = BatchPipeline(AugmentConfig(), (0.5,) * 3, (0.25,) * 3, CPU, seed=0, resized_crop=ResizedCrop(32))
    assert _sizes(TensorLoader(images, labels, 8, device=CPU, train=True, seed=0), fixed) == [32] * 5


@pytest.mark.parametrize("workers", [0, 1])
def test_the_torch_backend_crops_at_the_epochs_size_in_persistent_workers(workers):
    images, labels = _images()
    loader = TorchLoader(images, labels, 8, device=CPU, num_workers=workers, train=True, seed=0,
                         resized_crop=ResizedCrop(32, ramp=RAMP))
    assert _sizes(loader) == SIZES


def test_the_out_of_core_torch_backend_crops_at_the_epochs_size():
    images, labels = _images()
    source = ArraySource(ImageSet(images, labels, [str(c) for c in range(4)], "x", "test"))
    loader = SourceLoader(source, 8, device=CPU, num_workers=1, train=True, seed=0,
                          resized_crop=ResizedCrop(32, ramp=RAMP))
    assert _sizes(loader) == SIZES


def test_the_ffcv_backend_crops_at_the_epochs_size(tmp_path):
    from visionlaunch.ffcv_builders import require_ffcv
    require_ffcv()
    from visionlaunch.ffcv_builders import write_beton
    from visionlaunch.ffcv_builders.loader import FfcvLoader
    images, labels = _images()
    path = tmp_path / "train.beton"
    write_beton(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), path, num_classes=4, dataset="x", split="train",
                progress=False, image_size=32, max_resolution=46)
    loader = FfcvLoader(path, 8, train=True, seed=0, device=CPU, num_workers=1, clone=True,
                        resized_crop=ResizedCrop(32, ramp=RAMP))
    assert _sizes(loader) == SIZES


# --- evaluation at its own size -------------------------------------------------------------------------------------

def test_the_evaluation_view_is_the_centre_share_of_the_stored_square_resized():
    # the defaults: exactly the centre image_size square, not resized (what every run did before)
    for size in (8, 32, 64, 224, 100):
        assert eval_geometry(size) == (size, size)
    assert stored_size(224) == 256 and eval_geometry(224, 256) == (224, 256)  # FFCV: 224/256 of 256, at 256 px
    assert eval_geometry(64, 64, 1.0) == (73, 64)
    images, labels = _images(4, side=37)
    ds = ImageSet(images, labels, [str(c) for c in range(4)], "x", "test")
    plain = center_crop(ds, 32)
    assert torch.equal(plain.images, images[:, :, 2:34, 2:34])
    bigger = center_crop(ds, 32, 48)
    assert bigger.images.shape == (4, 3, 48, 48) and bigger.images.dtype == torch.uint8
    want = torch.nn.functional.interpolate(plain.images.float(), size=(48, 48), mode="bilinear", antialias=True)
    assert (bigger.images.float() - want).abs().max() <= 0.5  # rounded to uint8
    # the out-of-core view of the validation split gives the same pixels
    view = CenterCrop(ArraySource(ds), 32, 48)
    assert view.shape == (3, 48, 48)
    assert all(np.array_equal(view.decode(i), bigger.images[i].permute(1, 2, 0).numpy()) for i in range(4))


# --- training runs --------------------------------------------------------------------------------------------------

CNN = REPO / "configs" / "mnist_cnn.yaml"
# A small deterministic convnet with global pooling (any input size; no BatchNorm, no dropout, no flip), on
# test_out_of_core's photos read out of core (crops drawn per sample): 2 processes must follow 1 process.
RUN = ["data.name=imagefolder", "data.image_size=32", "data.val_size=12", "data.residency=disk",
       "model.args={channels: [8, 16], convs_per_stage: 1, batch_norm: false, global_pool: true, hidden: []}",
       "augment.crop_padding=0", "augment.flip=false", "train.batch_size=12", "train.epochs=3",
       "train.progress=false", "report.figures=false", "train.log_every=1", "train.eval_batch_size=20",
       "optim.lr=0.01", "resolution.start=24", "resolution.end=40", "resolution.start_epoch=0",
       "resolution.end_epoch=2", "resolution.step=8", "data.eval_image_size=40", "data.eval_crop_ratio=1.0",
       "train.precision=fp32"]  # auto may pick bf16 on this CPU, whose rounding sets the ranks' gradients apart


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.test_out_of_core import _write_folder
    return _write_folder(tmp_path_factory.mktemp("photos"), mixed=True)


def _args(folder, out, name, *extra):
    return ["--config", str(CNN), f"data.path={folder}", f"output.dir={out}", f"output.name={name}", *RUN, *extra]


@pytest.fixture(scope="module")
def one_process(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, out)
        assert main(["train", *_args(folder, out, "one", "data.num_workers=0")]) == 0
    return out


def test_a_run_records_each_epochs_size_and_evaluates_at_its_own(one_process):
    train = [r for r in records(one_process / "one", "epoch") if r["split"] == "train"]
    assert [r["resolution"] for r in train] == [24, 32, 40]
    assert "evaluated at 40 px: the centre 37 px resized" in (one_process / "one" / "run.yaml").read_text()
    assert "eval_image_size: 40" in (one_process / "one" / "config.yaml").read_text()


def test_evaluate_reproduces_the_accuracy_at_the_evaluation_size(one_process, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(one_process / "one")]) == 0
    assert "reproduced exactly" in capsys.readouterr().out


def test_predict_sees_the_test_splits_evaluation_view(folder):
    from visionlaunch.datasets.mixed_size import decode_squares, evaluation_view
    from visionlaunch.launch.predict import iter_images
    files = sorted((folder / "test").rglob("*.jpg"))[:3]
    seen = dict(iter_images(files, (3, 40, 40), [], image_size=32, eval_view=(40, 1.0)))

    class Item:
        def __init__(self, path):
            self.display, self.payload = str(path), path

    squares = torch.from_numpy(decode_squares([Item(f) for f in files], 32, 4.0, progress=False)[0])
    want = center_crop(ImageSet(squares, torch.zeros(3, dtype=torch.long), ["a"], "x", "test"), 37, 40).images
    for i, f in enumerate(files):
        assert np.array_equal(seen[str(f)], want[i].numpy())
        assert np.array_equal(evaluation_view(f, str(f), 32, 40, 1.0), want[i].numpy())


def test_resume_in_the_middle_of_the_ramp_is_bit_identical(folder, one_process, tmp_path, monkeypatch):
    isolate_environment(monkeypatch, tmp_path)
    remove_fault = signal_at_training_step(monkeypatch, signal.SIGTERM, 13)  # mid second epoch (9 steps each), at 32 px
    args = _args(folder, tmp_path, "cut", "data.num_workers=0", "train.resume=auto")
    assert main(["train", *args]) == 75
    assert complete_checkpoints(tmp_path / "cut" / "checkpoints")[-1].name == "step-00000013"
    remove_fault()
    assert main(["train", *args]) == 0
    assert max_weight_difference(one_process / "one", tmp_path / "cut") == 0
    assert_same_records(records(one_process / "one"), records(tmp_path / "cut"), tol=0)


def test_two_processes_follow_one_process_across_a_size_change(folder, one_process, tmp_path):
    proc = run([*two_process_launcher(), *_args(folder, one_process, "two", "data.num_workers=0")],
               VISIONLAUNCH_CACHE=str(tmp_path / "cache"), WANDB_MODE="disabled")
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = one_process / "one", one_process / "two"
    steps1, steps2 = records(one, "step"), records(two, "step")
    assert len(steps1) == len(steps2) == 3 * (108 // 12)
    for a, b in zip(steps1, steps2):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
    assert max_weight_difference(one, two) < 1e-5
    assert [r["resolution"] for r in records(two, "epoch") if r["split"] == "train"] == [24, 32, 40]
