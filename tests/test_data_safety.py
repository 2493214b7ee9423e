"""Data selections that cannot silently mislead: subsets are seeded class-stratified samples of every dataset (never
the first N images of a class-ordered folder), a split left with one class warns, and an ImageFolder walk
neither hangs on link loops nor dies on dangling links."""

import os
from collections import Counter

import pytest

from tests.test_datasets_imagefolder import CLASSES, make_folder
from visionlaunch.config import DataConfig
from visionlaunch.config_reference import describe_keys
from visionlaunch.trainers.data import prepare_data


def _counts(ds) -> dict:
    return dict(sorted(Counter(ds.labels.tolist()).items()))


def _prepare(**data):
    notes = []
    bundle = prepare_data(DataConfig(**data), log=notes.append, progress=False)
    return bundle, notes


@pytest.fixture
def folder(tmp_path):
    make_folder(tmp_path / "ds", counts={"train": 12, "test": 6})  # stored class by class
    return tmp_path


def test_imagefolder_subsets_are_stratified_and_seeded(folder):
    common = dict(name="imagefolder", root=str(folder), path="ds", cache_dir=str(folder / "cache"))
    bundle, notes = _prepare(**common, train_subset=9, test_subset=6, val_size=0)
    assert _counts(bundle.train) == {0: 3, 1: 3, 2: 3} and _counts(bundle.test) == {0: 2, 1: 2, 2: 2}
    assert not any("WARNING" in n for n in notes)
    assert "class-stratified, seed 0" in bundle.note

    again, _ = _prepare(**common, train_subset=9, test_subset=6, val_size=0)
    assert again.train.images.equal(bundle.train.images) and again.test.images.equal(bundle.test.images)
    other, _ = _prepare(**common, train_subset=9, test_subset=6, val_size=0, split_seed=1)
    assert _counts(other.train) == _counts(bundle.train) and not other.train.images.equal(bundle.train.images)

    # The val split is drawn from the subset, both stratified.
    split, _ = _prepare(**common, train_subset=9, val_size=3)
    assert _counts(split.train) == {0: 2, 1: 2, 2: 2} and _counts(split.val) == {0: 1, 1: 1, 2: 1}


def test_every_dataset_gets_a_stratified_subset():
    bundle, _ = _prepare(name="mnist_sample", train_subset=1000, test_subset=200, val_size=0)
    full, _ = _prepare(name="mnist_sample", val_size=0)
    for sub, whole in ((bundle.train, full.train), (bundle.test, full.test)):
        share = {c: n * len(sub) / len(whole) for c, n in _counts(whole).items()}
        assert all(abs(_counts(sub)[c] - share[c]) < 1 for c in share), (_counts(sub), share)


@pytest.mark.parametrize("subset, what", [("test_subset", "test"), ("train_subset", "training")])
def test_a_split_with_one_class_warns(folder, subset, what):
    bundle, notes = _prepare(name="imagefolder", root=str(folder), path="ds", val_size=0, **{subset: 1})
    warnings = [n for n in notes if n.startswith("WARNING")]
    assert len(warnings) == 1 and f"the {what} set holds images of only 1 of {len(CLASSES)} classes" in warnings[0]
    assert "says nothing" in warnings[0]


def test_show_config_keys_says_what_a_subset_is():
    keys = describe_keys()
    for key in ("train_subset", "test_subset"):
        line = next(line for line in keys.splitlines() if line.strip().startswith(f"{key}:"))
        assert "class-stratified" in line and "seeded" in line




@pytest.mark.parametrize("links, culprit, says", [
    ({"train/cat/up": "..", "train/dog/up": "../.."}, "train/cat/up", "a folder that contains the link"),
    ({"test/emu/here": "."}, "test/emu/here", "a folder that contains the link"),
    ({"train/cat/x": "../dog", "train/dog/y": "../cat"}, "train/cat/x/y", "a folder that contains the link"),
    ({"train/cat/me.png": "me.png"}, "train/cat/me.png", "a link loop"),
    ({"train/dog/gone.png": "/nonexistent/gone.png"}, "train/dog/gone.png", "a dangling link"),
    ({"train/cat/more": "../../test/emu"}, "test/emu", "reached through a link"),
], ids=["two-dotdot-links", "dot-link", "cycle-of-two", "self-loop", "dangling", "same-folder-twice"])
def test_links_that_loop_or_dangle_stop_with_a_message(folder, capsys, no_hang, links, culprit, says):
    from visionlaunch.launch.cli import main

    for name, target in links.items():
        os.symlink(target, folder / "ds" / name)
    code = main(["train", "--config", "configs/mnist_fcn.yaml", "data.name=imagefolder", f"data.root={folder}",
                 "data.path=ds", f"output.dir={folder / 'runs'}", "output.name=r", "train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert str(folder / "ds" / culprit) in err and says in err
    assert not (folder / "runs" / "r").exists()


def test_links_to_images_elsewhere_are_followed(folder):
    from PIL import Image

    from tests.test_datasets_imagefolder import _load, _pixels

    elsewhere = folder / "store"
    (elsewhere / "more").mkdir(parents=True)
    Image.fromarray(_pixels(0, 77)).save(elsewhere / "more" / "extra.png")
    os.symlink(elsewhere / "more" / "extra.png", folder / "ds" / "train" / "cat" / "zz-extra.png")
    before = len(_load(folder))
    os.symlink(elsewhere / "more", folder / "ds" / "train" / "dog" / "linked")  # a folder of links' targets
    train = _load(folder)
    assert len(train) == before + 1
    assert _counts(train)[0] == 13


@pytest.mark.parametrize("kind", ["SYMTYPE", "LNKTYPE"])
def test_links_in_an_archive_are_refused_not_skipped(folder, kind):
    import tarfile

    from tests.test_datasets_imagefolder import _load, make_tar
    from visionlaunch.errors import VisionlaunchError

    archive = make_tar(folder / "ds", folder / "ds.tar")
    with tarfile.open(archive, "a") as tar:
        link = tarfile.TarInfo("train/cat/zz-link.png")
        link.type, link.linkname = getattr(tarfile, kind), "train/cat/000.png"
        tar.addfile(link)
    with pytest.raises(VisionlaunchError, match="zz-link.png is a (symbolic|hard) link .*not a file"):
        _load(folder, path="ds.tar")
