"""ImageNet's layout: val/<class>/ beside train/<class>/ is the test split (when there is no test/), and a class-name
file (data.class_names, like ImageNet's LOC_synset_mapping.txt) gives the class folders the names that the run's
weights, figures and reports show."""

import shutil

import pytest
import torch

from tests.run_helpers import records
from tests.test_out_of_core import _args, _write_folder
from visionlaunch.config import DataConfig
from visionlaunch.datasets.folder_index import FolderSource
from visionlaunch.datasets.load import load_dataset
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.trainers.data import prepare_data

SYNSETS = {"airplane": "n02691156", "automobile": "n02958343", "bird": "n01503061", "cat": "n02121808"}
NAMES = {"n02691156": "airliner", "n02958343": "car, auto", "n01503061": "bird", "n02121808": "bird"}


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """The small CIFAR-10 ImageFolder with WordNet ids as class folders and val/ instead of test/, and the same
    images in the train/ + test/ layout."""
    root = tmp_path_factory.mktemp("layout")
    plain = _write_folder(root / "plain", mixed=False)
    imagenet = root / "imagenet"
    for split, target in (("train", "train"), ("test", "val")):
        for cls, synset in SYNSETS.items():
            shutil.copytree(plain / split / cls, imagenet / target / synset)
    (root / "synsets.txt").write_text("# WordNet id, then the name\n" +
                                      "".join(f"{k} {v}\n" for k, v in NAMES.items()) + "n09999999 not used\n")
    return root


def test_val_is_the_test_split_when_there_is_no_test_folder(imagenet_like):
    imagenet = imagenet_like / "imagenet"
    for split in ("train", "test"):
        ours = load_dataset("imagefolder", split, root=imagenet_like, path="imagenet", progress=False)
        # WordNet ids sort in another order than the CIFAR names: compare class by class
        original = load_dataset("imagefolder", split, root=imagenet_like, path="plain", progress=False)
        for cls, synset in SYNSETS.items():
            mine = ours.images[ours.labels == ours.classes.index(synset)]
            theirs = original.images[original.labels == original.classes.index(cls)]
            assert torch.equal(mine, theirs), (split, cls)
        lazy = FolderSource(imagenet, split, progress=False)
        assert len(lazy) == len(ours) and lazy.classes == ours.classes
    assert len(ours) == 32  # the test split: val/'s 4 x 8 images


def test_an_unlabelled_test_folder_beside_val_is_named(imagenet_like, tmp_path):
    folder = tmp_path / "with_test"
    shutil.copytree(imagenet_like / "imagenet", folder)
    (folder / "test").mkdir()
    shutil.copy(next((folder / "val" / "n01503061").iterdir()), folder / "test" / "x.jpg")
    with pytest.raises(VisionlaunchError, match=r"test/x\.jpg lies directly in test/.*unlabelled test set "
                                                r"\(ImageNet's\), move it away: val/ is then the test split"):
        load_dataset("imagefolder", "train", root=tmp_path, path="with_test", progress=False)


def _data(root, **kw):
    return DataConfig(name="imagefolder", root=str(root), path="imagenet", val_size=0, cache_dir=str(root / "c"), **kw)


def test_class_names_from_a_synset_file(imagenet_like):
    bundle = prepare_data(_data(imagenet_like, class_names="synsets.txt"), log=lambda m: None, progress=False)
    # sorted by folder (WordNet id); the name two folders share gets its folder added
    assert bundle.classes == ["bird (n01503061)", "bird (n02121808)", "airliner", "car, auto"]
    assert bundle.test.classes == bundle.classes
    (imagenet_like / "short.txt").write_text("n02691156 airliner\n")
    with pytest.raises(VisionlaunchError, match=r"short\.txt names no class for the folders n01503061, n02121808, "
                                                r"n02958343 \(3 of 4\)"):
        prepare_data(_data(imagenet_like, class_names="short.txt"), log=lambda m: None, progress=False)
    with pytest.raises(VisionlaunchError, match="data.class_names: cannot read"):
        prepare_data(_data(imagenet_like, class_names="absent.txt"), log=lambda m: None, progress=False)


def test_a_run_on_the_imagenet_layout_out_of_core_carries_the_names(imagenet_like, tmp_path, capsys):
    args = [a for a in _args(imagenet_like / "imagenet", tmp_path, "named") if a != "data.image_size=32"]
    assert main(["train", *args, "train.epochs=1", f"data.class_names={imagenet_like / 'synsets.txt'}",
                 "data.num_workers=0"]) == 0
    saved = torch.load(tmp_path / "named" / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["classes"] == ["bird (n01503061)", "bird (n02121808)", "airliner", "car, auto"]
    assert [(r["split"], r["n"]) for r in records(tmp_path / "named", "epoch")] == [
        ("train", 108), ("val", 12), ("test", 32)]
    assert "training split out of core" in capsys.readouterr().err
    # evaluate reproduces the test accuracy of an out-of-core run
    assert main(["evaluate", str(tmp_path / "named")]) == 0
    assert "reproduced exactly" in capsys.readouterr().out
