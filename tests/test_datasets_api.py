"""load_dataset's front door (names, splits, roots, cache dir) and the embedded MNIST sample."""

from importlib import resources

import numpy as np
import pytest
import torch

from visionlaunch.datasets import (DATASET_NAMES, DatasetNotFound, default_cache_dir, load_dataset,
                                   resolve_data_root)
from visionlaunch.datasets.mnist_sample import build_sample, main as make_sample_main, sample_resource
from visionlaunch.errors import VisionlaunchError


def test_dataset_names_match_the_config():
    from visionlaunch.config import DataConfig

    assert set(DataConfig.model_fields["name"].annotation.__args__) == set(DATASET_NAMES)


def test_unknown_name_or_split_lists_the_valid_ones(tmp_path):
    with pytest.raises(VisionlaunchError) as err:
        load_dataset("imagenet", "train", root=tmp_path)
    assert "'imagenet'" in str(err.value) and all(n in str(err.value) for n in DATASET_NAMES)
    with pytest.raises(VisionlaunchError, match="unknown split 'val'; valid splits: train, test"):
        load_dataset("mnist", "val", root=tmp_path)
    with pytest.raises(VisionlaunchError, match="only applies to data.name=imagefolder"):
        load_dataset("mnist", "train", root=tmp_path, path="x")


def test_absent_data_is_dataset_not_found_for_every_file_based_dataset(tmp_path):
    for name in ("mnist", "cifar10", "cifar100"):
        with pytest.raises(DatasetNotFound):
            load_dataset(name, "train", root=tmp_path / "empty", cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetNotFound):
        load_dataset("imagefolder", "train", root=tmp_path, path="missing")
    assert issubclass(DatasetNotFound, VisionlaunchError)


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root(None) == tmp_path / "data"
    monkeypatch.setenv("VISIONLAUNCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root("rel") == tmp_path / "rel"  # relative to the working directory, made absolute
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root("~/d") == tmp_path / "home" / "d"


def test_default_cache_dir(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "cache"  # conftest points VISIONLAUNCH_CACHE here
    monkeypatch.delenv("VISIONLAUNCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "visionlaunch"


def test_mnist_sample_needs_no_files(tmp_path):
    train = load_dataset("mnist_sample", "train", root=tmp_path / "nothing-here")
    test = load_dataset("mnist_sample", "test", root=tmp_path / "nothing-here")
    assert len(train) == 5000 and len(test) == 1000 and train.shape == (1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64 and train.images.is_contiguous()
    assert train.classes == [str(d) for d in range(10)] and train.name == "mnist_sample"
    assert "embedded MNIST sample" in train.source
    # Stratified: each class's share of the sample is its share of full MNIST (SOURCES.md counts) to within 1.
    full = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert all(abs(c - n * 5000 / 60000) < 1 for c, n in zip(train.labels.bincount().tolist(), full))
    with resources.as_file(sample_resource()) as path:
        assert path.stat().st_size < 2_000_000


def test_mnist_sample_is_real_mnist_and_rebuilds_identically(shared_data, tmp_path):
    with sample_resource().open("rb") as f, np.load(f) as z:
        shipped = {k: z[k] for k in z.files}
    full_test = load_dataset("mnist", "test", root=shared_data, cache_dir=None)
    idx = torch.from_numpy(shipped["test_index"].astype(np.int64))
    assert np.array_equal(full_test.images[idx, 0].numpy(), shipped["test_images"])
    assert np.array_equal(full_test.labels[idx].numpy(), shipped["test_labels"])
    rebuilt = build_sample(shared_data)
    assert shipped.keys() == rebuilt.keys()
    assert all(np.array_equal(shipped[k], rebuilt[k]) for k in shipped)


def test_make_sample_command_writes_a_loadable_file(shared_data, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert make_sample_main(["--root", str(shared_data), "--out", str(out), "--n-train", "100",
                             "--n-test", "20", "--seed", "5"]) == 0
    assert "train: 100 images" in capsys.readouterr().out
    with np.load(out) as z:
        assert z["train_images"].shape == (100, 28, 28) and z["test_labels"].shape == (20,) and int(z["seed"]) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary file left behind
