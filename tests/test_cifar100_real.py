"""The real CIFAR-100 copy (../shared/data/cifar-100-python): read without flags by its content, refused with one
paragraph when a file derived from it is damaged, and trainable: a short run ends well above chance, and the big
presets take a few steps on it. Skips without the copy on a developer machine, fails in CI (tests/conftest.py)."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.browser_check import assert_renders_offline, open_in_chromium
from tests.cifar_format import CIFAR100_COARSE, CIFAR100_FINE, FINE_TO_COARSE, py2_pickle
from tests.conftest import isolate_environment, require_cifar100
from visionlaunch.config import DataConfig
from visionlaunch.datasets import load_dataset
from visionlaunch.datasets.cifar import FORMATS, unpickle
from visionlaunch.datasets.files import file_digest
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.reports.html import WIDE_FIGURE_PX
from visionlaunch.reports.predictions import load_predictions
from visionlaunch.runfolder import read_metrics
from visionlaunch.trainers.data import prepare_data

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def real_root():
    return require_cifar100()


@pytest.fixture(scope="module")
def real(real_root):
    """Both splits as the product reads them, with every check on and no cache."""
    return {split: load_dataset("cifar100", split, root=real_root, verify=True, cache_dir=None, progress=False)
            for split in ("train", "test")}


def _load(root, split="test", **kw):
    kw.setdefault("verify", True)
    return load_dataset("cifar100", split, root=root, cache_dir=None, progress=False, **kw)


# ---------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("split, n, per_class", [("train", 50_000, 500), ("test", 10_000, 100)])
def test_real_copy_round_trip_and_class_counts(real, real_root, split, n, per_class):
    data = real[split]
    assert len(data) == n and data.shape == (3, 32, 32) and data.images.dtype == torch.uint8
    assert data.classes == CIFAR100_FINE and data.superclasses == CIFAR100_COARSE
    assert data.superclass_of == FINE_TO_COARSE  # the dataset's published grouping, read from the files
    assert np.bincount(data.labels.numpy(), minlength=100).tolist() == [per_class] * 100
    coarse = np.asarray(data.superclass_of)[data.labels.numpy()]
    assert np.bincount(coarse, minlength=20).tolist() == [5 * per_class] * 20
    # Round trip: the tensors are the file's rows and labels, in file order, channel-major as stored.
    raw = unpickle(real_root / "cifar-100-python" / split)
    assert np.array_equal(data.images.reshape(n, 3072).numpy(), raw["data"])
    assert data.labels.tolist() == list(raw["fine_labels"])
    assert coarse.tolist() == list(raw["coarse_labels"])


def test_torchvision_reads_the_same_real_arrays(real, real_root, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # its md5 check
    theirs = torchvision.datasets.CIFAR100(str(real_root), train=False, download=False)
    assert np.array_equal(theirs.data, real["test"].images.permute(0, 2, 3, 1).numpy())
    assert list(theirs.targets) == real["test"].labels.tolist() and theirs.classes == real["test"].classes


def test_unofficial_files_are_named_in_one_note_line(real, real_root, tmp_path):
    folder = real_root / "cifar-100-python"
    official = {f: md5 for f, md5 in (*FORMATS["cifar100"].train, *FORMATS["cifar100"].test, FORMATS["cifar100"].meta)}
    # meta is the official file: accepted silently; train and test are not, and passed the content check.
    assert file_digest(folder / "meta") == official["meta"]
    for split in ("train", "test"):
        ((path, md5, want),) = real[split].unofficial
        assert Path(path) == folder / split and md5 == file_digest(folder / split) and want == official[split]
        assert md5 != want

    logged = []
    cfg = DataConfig(name="cifar100", root=str(real_root), val_size=0, cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # the second load comes from the cache, which keeps the check's result
        logged.clear()
        bundle = prepare_data(cfg, log=logged.append, progress=False)
        notes = [m for m in logged if m.startswith("NOTE")]
        assert len(notes) == 1 and "\n" not in notes[0]
        for split in ("train", "test"):
            assert real[split].unofficial[0][1] in notes[0]
        assert "not the official CIFAR-100 files" in notes[0] and official["meta"] not in notes[0]
        assert len(bundle.train) == 50_000 and bundle.test.superclasses == CIFAR100_COARSE
    assert len(list((tmp_path / "cache").glob("cifar100-*.pt"))) == 2

    # data.verify=false keeps its meaning: no md5, no content check, nothing to note.
    logged.clear()
    quiet = prepare_data(DataConfig(name="cifar100", root=str(real_root), val_size=0, verify=False,
                                    cache_dir=str(tmp_path / "cache2")), log=logged.append, progress=False)
    assert not [m for m in logged if m.startswith("NOTE")] and not quiet.train.unofficial
    assert torch.equal(quiet.test.images, real["test"].images)


# ---------------------------------------------------------------------------------------------------- derived files


def _derived(real_root, tmp_path, **replace) -> Path:
    """tmp_path/data/cifar-100-python with train and meta linked to the real files and the real test split
    re-pickled, its entries changed by `replace` (None deletes a key)."""
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "meta"):
        (folder / name).symlink_to(real_root / "cifar-100-python" / name)
    batch = unpickle(real_root / "cifar-100-python" / "test")
    for key, value in replace.items():
        if value is None:
            del batch[key]
        else:
            batch[key] = value(batch) if callable(value) else value
    (folder / "test").write_bytes(py2_pickle(batch))
    return tmp_path / "data"


def test_an_exact_repickle_passes_the_content_check(real_root, real, tmp_path):
    root = _derived(real_root, tmp_path)
    data = _load(root)
    assert torch.equal(data.images, real["test"].images) and data.unofficial[0][1] == file_digest(
        root / "cifar-100-python" / "test")


def _fine(change):
    def edit(batch):
        labels = list(batch["fine_labels"])
        change(labels)
        return labels
    return edit


def _swap_coarse(batch):
    """Two images of different superclasses swap coarse labels: every count stays, the grouping breaks."""
    coarse, fine = list(batch["coarse_labels"]), batch["fine_labels"]
    i = 0
    j = next(k for k in range(len(fine)) if coarse[k] != coarse[i])
    coarse[i], coarse[j] = coarse[j], coarse[i]
    return coarse


@pytest.mark.parametrize("replace, expected", [
    ({"data": lambda b: b["data"][:-1], "fine_labels": lambda b: b["fine_labels"][:-1],
      "coarse_labels": lambda b: b["coarse_labels"][:-1]}, "it holds 9,999 images, the official test split has 10,000"),
    ({"fine_labels": _fine(lambda lab: lab.__setitem__(0, lab[0] + 1))},  # one image moved to a neighbour class
     "classes do not have 100 images each"),
    ({"coarse_labels": _swap_coarse}, "appears with superclass labels"),
    ({"coarse_labels": None}, "'coarse_labels' (superclass labels) are missing"),
])
def test_content_check_refuses_files_that_are_not_cifar100(real_root, tmp_path, replace, expected):
    root = _derived(real_root, tmp_path, **replace)
    with pytest.raises(VisionlaunchError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
        _load(root)
    message = str(err.value)
    assert file_digest(root / "cifar-100-python" / "test") in message and "data.verify=false" in message
    assert "\n" not in message
    assert len(_load(root, verify=False)) in (9_999, 10_000)  # data.verify=false reads what it can


def _cifar10_batch(real_root) -> dict:
    """A CIFAR-10-format test batch made from the real images (labels: fine label mod 10)."""
    batch = unpickle(real_root / "cifar-100-python" / "test")
    return {"batch_label": "testing batch 1 of 1", "labels": [f % 10 for f in batch["fine_labels"]],
            "data": batch["data"], "filenames": batch["filenames"]}


def _train(tmp_path, root, *overrides, config="cifar100_cnn", name="run"):
    args = ["train", "--config", str(CONFIGS / f"{config}.yaml"), f"data.root={root}",
            f"output.dir={tmp_path / 'runs'}", f"output.name={name}", "train.progress=false", *overrides]
    return main(args), tmp_path / "runs" / name


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "could not be read as a CIFAR python pickle"),
    ("cifar10", "it is a CIFAR-10 file, which belongs in cifar-10-batches-py/"),
    ("label_out_of_range", "label 100 at position 7 of 'fine_labels' is outside 0..99"),
    ("no_meta", "meta missing"),
])
def test_bad_real_derived_files_exit_2_with_one_paragraph_and_no_run_folder(real_root, tmp_path, capsys, damage,
                                                                           expected):
    root = _derived(real_root, tmp_path)
    folder = root / "cifar-100-python"
    if damage == "truncate":
        good = (folder / "test").read_bytes()
        (folder / "test").write_bytes(good[: len(good) // 2])
    elif damage == "cifar10":
        (folder / "test").write_bytes(py2_pickle(_cifar10_batch(real_root)))
    elif damage == "label_out_of_range":
        batch = unpickle(real_root / "cifar-100-python" / "test")
        batch["fine_labels"] = list(batch["fine_labels"])
        batch["fine_labels"][7] = 100
        (folder / "test").write_bytes(py2_pickle(batch))
    else:
        (folder / "meta").unlink()
    code, run = _train(tmp_path, root, "train.epochs=1", "train.max_steps_per_epoch=1")
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    message = [line for line in err.strip().splitlines() if line.strip()]
    assert len(message) == 1, err  # one paragraph, nothing else
    assert not run.exists()


# ---------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def short_run(real_root, tmp_path_factory):
    """One short real run shared by the tests below. No data.verify or other data key beyond the root: the preset
    reads the real copy as it is. The preset's MLP cut to one 512-unit layer, 10,000 training images, 2 epochs,
    evaluated on the whole test split."""
    tmp = tmp_path_factory.mktemp("c100run")
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, tmp)
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code, run = _train(tmp, real_root, "data.train_subset=10000", "data.val_size=0", "train.epochs=2",
                               "report.tsne_samples=500", "model.args={hidden: [512], dropout: 0.0, batch_norm: true}",
                               config="cifar100_fcn")
    assert code == 0, err.getvalue()[-3000:]
    return run, err.getvalue()


def test_real_copy_trains_without_flags_and_ends_well_above_chance(short_run):
    run, err = short_run
    assert err.count("NOTE: train (md5") == 1
    records = read_metrics(run / "metrics.jsonl")
    final = [r for r in records if r["kind"] == "final"][0]
    assert [r for r in records if r["kind"] == "epoch" and r["split"] == "test"][-1]["n"] == 10_000
    assert final["test_acc"] > 0.06, final  # chance is 0.01


def test_report_of_a_cifar100_run_reads_with_100_classes(short_run, tmp_path):
    run, _ = short_run
    pred = load_predictions(run)
    assert pred.superclasses == CIFAR100_COARSE and pred.superclass_of.tolist() == FINE_TO_COARSE
    with Image.open(run / "figures" / "confusion.png") as img:
        assert img.width > WIDE_FIGURE_PX  # every class named: shown at its own size
    text = (run / "report.html").read_text()
    assert '<div class="native"><figure>' in text and "superclasses</th>" in text
    assert "errors stay inside the true class&#x27;s superclass" in text
    assert "coloured by the true class&#x27;s superclass" in text and text.count('<div class="full">') == 3
    check = open_in_chromium(run / "report.html", tmp_path / "browser", size=(1280, 4000))
    assert_renders_offline(check, n_images=5)
    widths = sorted(i["w"] for i in check.images)
    assert widths[-1] > WIDE_FIGURE_PX


@pytest.mark.parametrize("preset, batch, steps, figures", [("cifar100_resnet18", 8, 2, True),
                                                             ("cifar100_wrn16_8", 8, 2, False),
                                                             ("cifar100_wrn28_10", 4, 1, False)])
def test_big_presets_take_steps_on_the_real_copy(real_root, tmp_path, preset, batch, steps, figures):
    # The full-size models of each preset, cut to one or two optimizer steps of a few real images and 16 test
    # images: these measure nothing but that the preset runs on the real data end to end. WRN-28-10 (36.5M
    # parameters) takes seconds per step on a CPU: one step of 4 images.
    code, run = _train(tmp_path, real_root, "data.train_subset=64", "data.val_size=0", "data.test_subset=16",
                       "train.epochs=1", f"train.max_steps_per_epoch={steps}", f"train.batch_size={batch}",
                       "train.eval_batch_size=16", "report.tsne_samples=16", f"report.figures={str(figures).lower()}",
                       config=preset)
    assert code == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    preset_cfg = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())
    assert (saved["model"]["name"], saved["model"]["args"]) == (preset_cfg["model"]["name"],
                                                                preset_cfg["model"].get("args", {}))
    final = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"][0]
    assert final["steps"] == steps and 0 <= final["test_acc"] <= 1
    if figures:
        assert {p.name for p in (run / "figures").iterdir()} >= {"tsne.png", "confusion.png", "predictions.png"}
    assert len(torch.load(run / "weights" / "last.pt", weights_only=True)["classes"]) == 100
