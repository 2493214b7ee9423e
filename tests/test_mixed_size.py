"""data.image_size: ImageFolders of real photos in mixed sizes (CIFAR-10 JPEGs rescaled to 40..160 px, plus a
grayscale, an RGBA and an EXIF-rotated image), decoded once to stored squares, cropped at random for training by
every loader backend and centre-cropped for evaluation; bad images stop the run naming the file."""

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import require_ffcv, require_shared_data
from visionlaunch.datasets.mixed_size import ResizedCrop, ResizedCropDataset, decode_squares, draw_boxes, stored_size
from visionlaunch.launch.cli import main
from visionlaunch.runfolder import read_metrics

PRESET = Path(__file__).resolve().parents[1] / "configs" / "imagefolder_timm.yaml"
CLASSES = ("airplane", "automobile", "ship")
PER_CLASS = {"train": 16, "test": 6}


def _cifar_photos() -> dict[tuple[str, str], list[Image.Image]]:
    """The first real CIFAR-10 photos of each class and split, from the shared JPEG tarball."""
    archive = require_shared_data() / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    photos: dict[tuple[str, str], list[Image.Image]] = {(s, c): [] for s in PER_CLASS for c in CLASSES}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and (parts[0], parts[1]) in photos:
                found = photos[(parts[0], parts[1])]
                if len(found) < PER_CLASS[parts[0]]:
                    found.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
            if all(len(v) == PER_CLASS[s] for (s, _), v in photos.items()):
                break
    return photos


@pytest.fixture(scope="module")
def photos():
    return _cifar_photos()


def _write_folder(root, photos, seed=0):
    """Every photo at a random size in 40..160 px; train/ship/ also holds a grayscale JPEG, an RGBA PNG and a
    JPEG stored sideways with an EXIF orientation tag."""
    rng = random.Random(seed)
    for (split, cls), images in photos.items():
        folder = root / split / cls
        folder.mkdir(parents=True)
        for i, im in enumerate(images):
            size = (rng.randint(40, 160), rng.randint(40, 160))
            im.resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:03d}.jpg", quality=90)
    ship = photos[("train", "ship")][0].resize((96, 64))
    ship.convert("L").save(root / "train" / "ship" / "gray.jpg")
    rgba = ship.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "train" / "ship" / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    ship.transpose(Image.Transpose.ROTATE_90).save(root / "train" / "ship" / "sideways.jpg", exif=exif, quality=95)
    return root


@pytest.fixture
def folder(tmp_path, photos):
    return _write_folder(tmp_path / "mixed", photos)


class _Item:
    def __init__(self, path):
        self.display, self.payload = str(path), path


def test_decoding_honours_exif_and_converts_gray_and_rgba_to_rgb(folder):
    ship = folder / "train" / "ship"
    upright = ship / "upright.png"
    with Image.open(ship / "sideways.jpg") as im:
        assert im.size == (64, 96)  # stored sideways
    Image.open(folder / "train" / "ship" / "rgba.png").convert("RGB").save(upright)
    names = ["sideways.jpg", "upright.png", "gray.jpg", "rgba.png"]
    pixels, note = decode_squares([_Item(ship / n) for n in names], 32, 4.0, progress=False)
    assert pixels.shape == (4, 3, stored_size(32), stored_size(32)) == (4, 3, 37, 37) and pixels.dtype == np.uint8
    sideways, upright, gray, rgba = pixels.astype(int)
    assert np.abs(sideways - upright).mean() < 6  # the EXIF rotation was applied (JPEG noise aside)
    assert np.abs(np.rot90(sideways, axes=(1, 2)) - upright).mean() > 20  # ... which is not a no-op
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # grayscale: R = G = B
    assert (rgba == upright).all()  # RGBA: the colour beneath the alpha channel
    assert note == ""  # 64 px on the shorter side is not upscaled to 37


def test_images_below_the_upscale_limit_are_refused_naming_the_file(folder):
    tiny = folder / "train" / "ship" / "tiny.png"
    Image.new("RGB", (12, 30), "red").save(tiny)
    items = [_Item(folder / "train" / "ship" / "gray.jpg"), _Item(tiny)]
    with pytest.raises(Exception, match=r"tiny\.png is 12x30 pixels .*data\.image_size=64.*data\.max_upscale=4"):
        decode_squares(items, 64, 4.0, progress=False)
    pixels, note = decode_squares(items, 64, 8.0, progress=False)
    assert pixels.shape[0] == 2 and "2 of 2 images upscaled to 73 px" in note and "smallest: 12 px" in note
    assert "tiny.png" in note  # 96x64 gray.jpg is enlarged too, less


def test_predictions_on_new_files_see_what_evaluation_saw(folder):
    from visionlaunch.datasets import load_dataset
    from visionlaunch.datasets.mixed_size import center_crop
    from visionlaunch.launch.predict import iter_images

    test = center_crop(load_dataset("imagefolder", "test", root=folder, path=".", progress=False, image_size=32), 32)
    seen = dict(iter_images([folder / "test"], (3, 32, 32), [], image_size=32))
    assert len(seen) == len(test) == 18
    for name, image in zip(sorted(seen, key=lambda n: (CLASSES.index(n.split("/")[-2]), n)), test.images):
        assert np.array_equal(seen[name], image.numpy()), name


def test_crop_boxes_follow_scale_and_ratio_and_stay_inside():
    boxes = draw_boxes(20000, 73, 73, (0.25, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    top, left, h, w = boxes.T
    share = (h * w).double() / 73**2
    assert share.min() >= 0.24 and share.max() <= 1.0 and 0.55 < share.mean() < 0.65
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 73).all() and (left + w <= 73).all()
    aspect = (w / h).double()
    assert aspect.min() > 0.7 and aspect.max() < 1.43 and (aspect < 0.95).any() and (aspect > 1.05).any()
    again = draw_boxes(20000, 73, 73, (0.25, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    assert torch.equal(boxes, again)


def test_the_batched_crop_and_torchvision_v2_crop_mean_the_same(monkeypatch):
    """Same box: the tensor backend's grid sample equals torchvision's resized_crop away from the box's edge
    (there the grid sample reads the true neighbours outside the box, torchvision clamps to the box)."""
    import visionlaunch.datasets.mixed_size as rc

    images = torch.randint(0, 256, (3, 3, 73, 73), dtype=torch.uint8)
    monkeypatch.setattr(rc, "draw_boxes", lambda n, *a, **k: torch.tensor([[5, 9, 40, 34]] * n))
    crop = ResizedCrop(64)
    batched = crop.batch(images).int()
    single = torch.stack([crop.sample(im) for im in images]).int()
    assert batched.shape == single.shape == (3, 3, 64, 64)
    assert (batched - single)[..., 2:-2, 2:-2].abs().max() <= 1
    # Geometry: on a linear ramp, bilinear sampling is exact, so every output pixel centre shows where it was
    # taken from: row 5 + (k + 0.5) * 40 / 64 - 0.5, column 9 + (l + 0.5) * 34 / 64 - 0.5 of the source.
    rows, cols = torch.meshgrid(torch.arange(73.0), torch.arange(73.0), indexing="ij")
    ramp = (rows + 2 * cols).expand(1, 3, 73, 73)
    k = torch.arange(64.0)
    want = (5 + (k + 0.5) * 40 / 64 - 0.5)[:, None] + 2 * (9 + (k + 0.5) * 34 / 64 - 0.5)[None, :]
    assert (crop.batch(ramp)[0, 0] - want)[1:-1, 1:-1].abs().max() < 1e-3


def test_the_torch_backend_dataset_crops_without_touching_the_global_random_stream():
    images = torch.randint(0, 256, (4, 3, 37, 37), dtype=torch.uint8)
    ds = ResizedCropDataset(images, torch.arange(4), ResizedCrop(32))
    state = torch.random.get_rng_state()
    first = [ds[i, 0][0] for i in range(4)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.uint8 for x in first)
    assert not torch.equal(first[0], ds[0, 0][0])  # a fresh crop each time


def _train(tmp_path, folder, *overrides, name="run"):
    return main(["train", "--config", str(PRESET), f"data.path={folder}", "data.image_size=32", "data.val_size=0",
                 "model.name=timm/test_resnet", "augment.flip=true", "train.batch_size=16", "train.eval_batch_size=32",
                 "train.progress=false", "report.figures=false", f"output.dir={tmp_path / 'runs'}",
                 f"output.name={name}", f"data.ffcv_dir={tmp_path / 'ffcv'}", *overrides]), tmp_path / "runs" / name


def test_a_timm_model_learns_mixed_size_photos(tmp_path, folder, capsys):
    code, run = _train(tmp_path, folder, "train.epochs=8", "optim.name=adamw", "optim.lr=0.005",
                       "optim.weight_decay=0", "optim.label_smoothing=0", "augment.crop_scale=[0.7, 1.0]",
                       "schedule.name=constant")
    assert code == 0, capsys.readouterr().err[-3000:]
    err = capsys.readouterr().err
    assert "mixed sizes stored as 37x37 RGB" in err and "of shape (3, 37, 37) (cropped to 32 px)" in err
    assert "images upscaled to 37 px" not in err  # 40 px and more: nothing was enlarged for 32 px
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch" and r["split"] == "train"]
    assert epochs[0]["n"] == 3 * 16 + 3 - 3  # 51 images, batches of 16 (the last partial one dropped)
    assert epochs[-1]["loss"] < 0.5 * epochs[0]["loss"]  # it fits the photos it trains on (measured: 0.39x)
    assert epochs[-1]["acc"] >= 0.75  # of 3 classes (measured: 85%)
    tests = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch" and r["split"] == "test"]
    assert tests[-1]["n"] == 18


@pytest.mark.parametrize("loader", ["torch", "ffcv"])
def test_every_backend_trains_on_mixed_sizes(tmp_path, folder, loader, capsys):
    if loader == "ffcv":
        require_ffcv()
    code, run = _train(tmp_path, folder, f"data.loader={loader}", "train.epochs=1", "data.ffcv_encoding=jpeg",
                       "data.num_workers=1", name=loader)
    assert code == 0, capsys.readouterr().err[-3000:]
    assert (run / "weights" / "last.pt").is_file()
    if loader == "ffcv":
        import json
        # The training file holds the photos at their aspect ratio, the longer side at most 4/3 x 37 px (an
        # ImageFolder trained with ffcv is read from its files, never decoded in memory: tests/test_ffcv_stream.py)
        manifest = json.loads(next((tmp_path / "ffcv").glob("*-train-*-side49-jpeg90.beton.json")).read_text())
        assert manifest["image_size"] == 32 and manifest["max_resolution"] == 49 and manifest["encoding"] == "jpeg"
        assert manifest["shape"] == [49, 49, 3]
        test_manifest = json.loads(next((tmp_path / "ffcv").glob("*-test-*.beton.json")).read_text())
        assert test_manifest["shape"] == [32, 32, 3] and test_manifest["max_resolution"] is None


@pytest.mark.parametrize("bad, expected", [
    ("tiny", r"tiny\.png is 6x6 pixels .*too small for data\.image_size=32"),
    ("corrupt", r"broken\.jpg is not a readable image"),
    ("text", r"notes\.png is not a readable image"),
])
def test_bad_images_stop_the_run_naming_the_file(tmp_path, folder, capsys, bad, expected):
    target = folder / "train" / "airplane"
    if bad == "tiny":
        Image.new("RGB", (6, 6)).save(target / "tiny.png")
    elif bad == "corrupt":
        data = (target / "000.jpg").read_bytes()
        (target / "broken.jpg").write_bytes(data[: len(data) // 3])
    else:
        (target / "notes.png").write_text("not an image\n")
    code, run = _train(tmp_path, folder, "train.epochs=1", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re
    assert re.search(expected, err), err[-2000:]
    assert not run.exists()  # nothing half-written: no run folder
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


@pytest.mark.parametrize("overrides, expected", [
    (["data.name=cifar10", "data.image_size=64"], "data.image_size applies to data.name=imagefolder"),
    (["data.name=imagefolder", "data.path=x", "data.image_size=64", "augment.crop_padding=4"],
     "augment.crop_padding does not combine with data.image_size"),
    (["augment.crop_scale=[0.5, 0.2]"], "crop_scale must be"),
])
def test_config_combinations_that_cannot_work(tmp_path, capsys, overrides, expected):
    assert main(["train", "--config", str(PRESET), *overrides, f"output.dir={tmp_path}"]) == 2
    assert expected in capsys.readouterr().err


def test_a_resumed_run_crops_exactly_as_an_uninterrupted_one(tmp_path, folder, capsys):
    """The tensor backend draws its crops from the pipeline's generator, which checkpoints save."""
    import subprocess
    import sys

    from tests.run_helpers import FAULT_TRAIN_PY, env, max_weight_difference, records

    common = ["train.epochs=2", "schedule.name=constant", "optim.lr=0.01"]
    code, whole = _train(tmp_path, folder, *common, name="whole")
    assert code == 0
    args = ["--config", str(PRESET), f"data.path={folder}", "data.image_size=32", "data.val_size=0",
            "model.name=timm/test_resnet", "augment.flip=true", "train.batch_size=16", "train.eval_batch_size=32",
            "train.progress=false", "report.figures=false", f"output.dir={tmp_path / 'runs'}", "output.name=cut",
            "train.resume=auto", *common]
    proc = subprocess.run([sys.executable, str(FAULT_TRAIN_PY), *args], capture_output=True, text=True,
                          env=env(VL_TEST_FAULT="action=signal,signal=SIGTERM,step=4"), timeout=300,
                          cwd=PRESET.parents[1])
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert main(["train", *args]) == 0
    assert "resuming from" in capsys.readouterr().err
    assert max_weight_difference(whole, tmp_path / "runs" / "cut") == 0
    assert records(whole, "epoch") == records(tmp_path / "runs" / "cut", "epoch")


def test_evaluate_data_on_a_one_size_dataset_drops_the_runs_image_size():
    """`evaluate --data name=cifar10` on a photo run: CIFAR-10 images are converted to the run's input shape, never
    centre-cropped to a larger data.image_size (a negative offset would slice a strip of each image)."""
    from types import SimpleNamespace

    from visionlaunch.config import RunConfig
    from visionlaunch.datasets.imageset import ImageSet
    from visionlaunch.datasets.mixed_size import center_crop
    from visionlaunch.errors import VisionlaunchError
    from visionlaunch.launch.evaluate import data_config

    run = SimpleNamespace(cfg=RunConfig.model_validate(
        {"data": {"name": "imagefolder", "path": "photos", "image_size": 64}}))
    assert data_config(run, ["name=cifar10"], "test").image_size is None
    assert data_config(run, ["path=other-photos"], "test").image_size == 64  # another photo folder: the same view
    with pytest.raises(VisionlaunchError, match=r"--data image_size=64: data\.image_size applies to name=imagefolder"):
        data_config(run, ["name=cifar10", "image_size=64"], "test")
    small = ImageSet(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a"], "cifar10",
                     "test")
    with pytest.raises(ValueError, match="cannot centre-crop 32x32 images to 64 px"):
        center_crop(small, 64)
