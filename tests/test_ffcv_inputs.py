"""FFCV conversions refuse bad input before any FFCV worker starts (a worker error would hang the writer), and
the ffcv backend without the ffcv package stops with the commands that install it. None of this needs ffcv."""

import builtins
import sys

import numpy as np
import pytest

from visionlaunch.errors import VisionlaunchError
from visionlaunch.ffcv_builders import validate_samples
from visionlaunch.ffcv_builders.manifest import check_beton
from visionlaunch.ffcv_builders.writer import write_beton
from visionlaunch.launch.cli import main

pytestmark = pytest.mark.timeout(60)


def _good(n=20, c=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, c), dtype=np.uint8), rng.integers(0, 10, n)


def test_good_samples_pass_through_as_contiguous_arrays():
    images, labels = _good()
    x, y = validate_samples(images[:, ::-1], labels, 10)
    assert x.flags.c_contiguous and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, images[:, ::-1]) and np.array_equal(y, labels)


@pytest.mark.parametrize("case, expected", [
    ("float", "must be uint8"),
    ("nchw", "C = 1 (grayscale) or 3"),
    ("hw", "(N, H, W, C)"),
    ("two_channels", "C = 1 (grayscale) or 3"),
    ("label_high", "sample 3 has label 10"),
    ("label_negative", "sample 3 has label -1"),
    ("label_float", "labels must be integers"),
    ("label_count", "one integer per image"),
    ("empty", "nothing to write"),
])
def test_bad_samples_are_refused_before_ffcv_is_touched(tmp_path, monkeypatch, case, expected):
    images, labels = _good()
    if case == "float":
        images = images.astype(np.float32) / 255
    elif case == "nchw":
        images = images.transpose(0, 3, 1, 2)
    elif case == "hw":
        images = images[..., 0]
    elif case == "two_channels":
        images = images[..., :2]
    elif case == "label_high":
        labels[3] = 10
    elif case == "label_negative":
        labels[3] = -1
    elif case == "label_float":
        labels = labels.astype(np.float64)
    elif case == "label_count":
        labels = labels[:-1]
    elif case == "empty":
        images, labels = images[:0], labels[:0]
    # Validation comes first: with ffcv made unimportable the error is still about the samples.
    monkeypatch.setitem(sys.modules, "ffcv", None)
    out = tmp_path / "x.beton"
    with pytest.raises(VisionlaunchError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        write_beton(images, labels, out, num_classes=10, dataset="synthetic", split="train")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_bad_encoding_options_are_refused(tmp_path):
    images, labels = _good()
    with pytest.raises(VisionlaunchError, match="'raw' or 'jpeg'"):
        write_beton(images, labels, tmp_path / "x.beton", num_classes=10, dataset="d", split="train", encoding="png")
    with pytest.raises(VisionlaunchError, match="1..100"):
        write_beton(images, labels, tmp_path / "x.beton", num_classes=10, dataset="d", split="train",
                    encoding="jpeg", jpeg_quality=0)


def _hide_ffcv(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "ffcv" or name.startswith("ffcv."):
            raise ImportError("No module named 'ffcv'")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "ffcv" or m.startswith("ffcv.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_ffcv_backend_without_ffcv_prints_the_install_commands(tmp_path, monkeypatch, capsys):
    _hide_ffcv(monkeypatch)
    code = main(["train", "--config", "configs/mnist_fcn.yaml", "data.name=mnist_sample", "data.loader=ffcv",
                 f"output.dir={tmp_path / 'runs'}", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'visionlaunch[ffcv]'" in err and "apt-get install" in err and "libturbojpeg0-dev" in err
    assert not (tmp_path / "runs").exists()  # stopped before the run folder
    code = main(["prepare", "ffcv", "--dataset", "mnist_sample"])
    assert code == 2 and "pip install 'visionlaunch[ffcv]'" in capsys.readouterr().err


def test_check_beton_refuses_files_without_a_matching_manifest(tmp_path):
    beton = tmp_path / "foreign.beton"
    beton.write_bytes(b"\0" * 4096)  # some other program's file
    with pytest.raises(VisionlaunchError, match="has no manifest"):
        check_beton(beton)
    (tmp_path / "foreign.beton.json").write_text("{not json")
    with pytest.raises(VisionlaunchError, match="cannot be read"):
        check_beton(beton)
    with pytest.raises(VisionlaunchError, match="does not exist"):
        check_beton(tmp_path / "missing.beton")


def test_prepare_rejects_ffcv_options_without_the_ffcv_form(capsys):
    assert main(["prepare", "--dataset", "mnist"]) == 2
    assert "only in its ffcv form" in capsys.readouterr().err
    assert main(["prepare", "ffcv"]) == 2
    assert "needs --dataset NAME or --config FILE" in capsys.readouterr().err
