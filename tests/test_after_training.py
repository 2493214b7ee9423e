"""After training, on one real MNIST run (trained once for the module): `predict` on real test images written as
PNG files gives exactly the accuracy `evaluate` measures on the same images; `evaluate --data` measures another
ImageFolder and another split and refuses other classes; `export` writes TorchScript, ONNX and safetensors files
that plain torch / onnxruntime / safetensors load and that give the run's logits within 1e-5. Bad input (a folder
without images, non-image files, a missing export package, a run without weights) exits 2 with one paragraph."""

import csv
import json
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import SHARED_DATA, isolate_environment, require_shared_data
from visionlaunch.datasets import load_dataset, normalize
from visionlaunch.datasets.split import stratified_subset
from visionlaunch.launch.cli import main
from visionlaunch.models import build_model
from visionlaunch.runfolder import read_metrics

REPO = Path(__file__).resolve().parents[1]
N_TEST = 300  # the run's test split is a stratified sample of N_TEST MNIST test images; the same are written as PNGs
# Small but real: 2,000 training images (300 held out), a narrow CNN, one epoch, EMA weights beside the raw ones,
# and test-time flips, so that predict has to apply the run's TTA to reproduce evaluate's numbers.
# fp32: predict's counts are compared with evaluation's, image for image, in batches of other sizes; bf16 results
# depend on the batch size on a CPU with AMX, so an image near a tie can flip.
RUN = ["train.precision=fp32", "data.train_subset=2000", f"data.test_subset={N_TEST}", "data.val_size=300", "train.epochs=1",
       "train.batch_size=100", "train.progress=false", "report.figures=false", "train.ema_decay=0.9",
       "train.tta_flip=true", "model.args={channels: [8, 16], hidden: [32], convs_per_stage: 1}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    require_shared_data()
    root = tmp_path_factory.mktemp("after")
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, root)
        assert main(["train", "--config", str(REPO / "configs" / "mnist_cnn.yaml"), f"data.root={SHARED_DATA}",
                     f"output.dir={root / 'runs'}", "output.name=mnist", *RUN]) == 0
        # The run's own test subset: data.test_subset is a seeded (data.split_seed=0) stratified sample.
        test = stratified_subset(load_dataset("mnist", "test", root=SHARED_DATA), N_TEST, 0, "test")
        train = load_dataset("mnist", "train", root=SHARED_DATA)
        # The run's test images as an ImageFolder of PNGs (lossless): test/<digit>/<index>.png, and a small train/
        # (the ImageFolder layout needs both).
        folder = root / "mnist-png"
        for split, ds, n in (("test", test, N_TEST), ("train", train, 200)):
            for i in range(n):
                d = folder / split / str(int(ds.labels[i]))
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ds.images[i, 0].numpy(), "L").save(d / f"{i:05d}.png")
    return root / "runs" / "mnist", folder, test


@pytest.fixture
def run_dir(trained):
    return trained[0]


def _predict_csv(capsys, run_dir, *paths, extra=()) -> tuple[list[dict], str]:
    out = Path(run_dir).parent / "preds.csv"
    capsys.readouterr()
    assert main(["predict", str(run_dir), *map(str, paths), "--out", str(out), *extra]) == 0
    err = capsys.readouterr().err
    with open(out, newline="") as fh:
        return list(csv.DictReader(fh)), err


def _label(file: str) -> str:
    return Path(file.split(":")[-1]).parent.name  # .../test/<digit>/<n>.png, or archive.zip:test/<digit>/<n>.png


def test_predict_on_real_test_images_gives_the_evaluated_accuracy(trained, tmp_path, capsys):
    run_dir, folder, _ = trained
    images = tmp_path / "images"
    shutil.copytree(folder / "test", images)
    (images / "3" / "notes.txt").write_text("not an image")  # named and skipped, never fatal
    (images / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with zipfile.ZipFile(images / "more.zip", "w") as zf:
        zf.write(next((images / "1").glob("*.png")), "1.png")
    rows, err = _predict_csv(capsys, run_dir, images, extra=["--top-k", "3", "--batch-size", "64"])
    assert len(rows) == N_TEST
    assert "notes.txt" in err and "broken.png" in err and "3 file(s) skipped" in err
    assert "more.zip: an archive inside a folder or archive is not opened" in err
    correct = sum(r["class_1"] == _label(r["file"]) for r in rows)
    for r in rows:  # top-k sorted, probabilities from a softmax
        probs = [float(r[f"prob_{i}"]) for i in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5

    # The same count as training measured on these images, and as `evaluate` measures now.
    final = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "final"][0]
    assert correct == round(final["test_acc"] * N_TEST)
    assert main(["evaluate", str(run_dir)]) == 0
    assert f"({correct}/{N_TEST})" in capsys.readouterr().out
    # ... and `evaluate --data` on the PNG ImageFolder: a second dataset, read by another reader.
    assert main(["evaluate", str(run_dir), "--data", "name=imagefolder", f"data.path={folder}"]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {100 * correct / N_TEST:.2f}% ({correct}/{N_TEST})" in out and "ImageFolder" in out

    # The printed table has the same predictions.
    assert main(["predict", str(run_dir), str(images / "4"), "--top-k", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    by_file = {r["file"]: r["class_1"] for r in rows}
    assert table[0].split()[:2] == ["file", "top-1"] and len(table) == 1 + len(list((images / "4").glob("*.png")))
    for line in table[1:]:
        file, cls = line.split()[:2]  # a path over 80 characters is shown as '...' + its last 77
        matches = [f for f in by_file if f == file or (file.startswith("...") and f.endswith(file[3:]))]
        assert len(matches) == 1 and by_file[matches[0]] == cls


def test_predict_converts_colour_size_and_reads_archives(trained, tmp_path, capsys):
    run_dir, folder, _ = trained
    files = [f for digit in range(10) for f in sorted((folder / "test" / str(digit)).glob("*.png"))[:6]]
    rgb, large = tmp_path / "rgb", tmp_path / "large"
    for f in files:
        for out, convert in ((rgb, lambda im: im.convert("RGB")),
                             (large, lambda im: im.convert("RGBA").resize((56, 56), Image.NEAREST))):
            (out / f.parent.name).mkdir(parents=True, exist_ok=True)
            convert(Image.open(f)).save(out / f.parent.name / f.name)
    gray_rows, _ = _predict_csv(capsys, run_dir, *files)
    gray = {(_label(r["file"]), Path(r["file"]).name): r for r in gray_rows}
    # An RGB copy of a gray image becomes the same gray image (luminance of R = G = B): identical predictions.
    rgb_rows, _ = _predict_csv(capsys, run_dir, rgb)
    assert [(r["class_1"], r["prob_1"]) for r in rgb_rows] == \
           [(gray[(_label(r["file"]), Path(r["file"]).name)]["class_1"],
             gray[(_label(r["file"]), Path(r["file"]).name)]["prob_1"]) for r in rgb_rows]
    # A 56x56 RGBA copy is brought back to 28x28 as the README says (luminance, alpha dropped, bilinear resize):
    # the same predictions as for that conversion done by hand with PIL and saved losslessly.
    large_rows, _ = _predict_csv(capsys, run_dir, large)
    by_hand = tmp_path / "by-hand"
    for f in sorted(large.rglob("*.png")):
        (by_hand / f.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("L").resize((28, 28), Image.BILINEAR).save(by_hand / f.parent.name / f.name)
    hand_rows, _ = _predict_csv(capsys, run_dir, by_hand)
    assert len(large_rows) == len(files)
    assert [(r["class_1"], r["prob_1"], r["class_2"]) for r in large_rows] == \
           [(r["class_1"], r["prob_1"], r["class_2"]) for r in hand_rows]
    # `evaluate --data` converts a colour ImageFolder of another size the same way: the same count correct.
    correct = sum(r["class_1"] == _label(r["file"]) for r in large_rows)
    shutil.copytree(large, tmp_path / "large-folder" / "test")
    shutil.copytree(large, tmp_path / "large-folder" / "train")
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--data", "name=imagefolder", f"path={tmp_path / 'large-folder'}"]) == 0
    captured = capsys.readouterr()
    assert f"({correct}/{len(files)})" in captured.out
    assert "(3, 56, 56) to the run's (1, 28, 28): grayscale (luminance) + resize 56x56 -> 28x28" in captured.err

    # Archives: the same images inside a .zip and a .tar.gz give the same predictions as the files.
    zpath, tpath = tmp_path / "digits.zip", tmp_path / "digits.tar.gz"
    with zipfile.ZipFile(zpath, "w") as zf, tarfile.open(tpath, "w:gz") as tf:
        for f in files:
            zf.write(f, f"test/{f.parent.name}/{f.name}")
            tf.add(f, f"test/{f.parent.name}/{f.name}")
        zf.writestr("__MACOSX/._junk.png", b"resource fork")  # never read
    for archive in (zpath, tpath):
        rows, err = _predict_csv(capsys, run_dir, archive)
        assert "skipped" not in err
        assert sorted((_label(r["file"]), Path(r["file"].split(":")[-1]).name, r["class_1"], r["prob_1"])
                      for r in rows) == sorted((k[0], k[1], v["class_1"], v["prob_1"]) for k, v in gray.items())


def test_predict_bad_input_exits_2_with_one_paragraph(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("a")
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really")
    for paths, expected in (([empty], "holds no readable image"), ([texts], "holds no readable image"),
                            ([tmp_path / "absent"], "does not exist"), ([bad_zip], "could not be read as a zip archive"),
                            ([texts / "a.txt"], "none of the 1 file(s) given is a readable image")):
        capsys.readouterr()
        assert main(["predict", str(run_dir), *map(str, paths)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and err.count("\n") == 1 + err.count("skipped "), err


def _reference_logits(run_dir: Path, which: str, inputs: torch.Tensor) -> torch.Tensor:
    ckpt = torch.load(run_dir / "weights" / f"{which}.pt", map_location="cpu", weights_only=True)
    model = build_model(ckpt["model_name"], tuple(ckpt["in_shape"]), len(ckpt["classes"]), ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        return model.eval()(inputs)


def _real_inputs(trained, meta: dict) -> torch.Tensor:
    test = trained[2]
    return normalize(test.images[:64], meta["mean"], meta["std"])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "safetensors"])
def test_export_round_trip_gives_the_runs_logits(trained, fmt, tmp_path, capsys):
    run_dir = trained[0]
    out = tmp_path / f"model-{fmt}"
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out), str(out) + ".json"]
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["format"] == fmt and meta["classes"] == [str(d) for d in range(10)]
    assert meta["input_shape"] == [1, 28, 28] and meta["mean"] == [0.1307] and meta["std"] == [0.3081]
    assert meta["tta_flip"] is True and meta["weights"] == "last"
    inputs = _real_inputs(trained, meta)
    expected = _reference_logits(run_dir, "last", inputs)
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(inputs)
    elif fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run([meta["output_name"]], {meta["input_name"]: inputs.numpy()})[0])
    else:  # the state_dict round trip; the module rebuilt from the JSON's model name and arguments
        from safetensors.torch import load_file
        state = load_file(str(out))
        model = build_model(meta["model"]["name"], tuple(meta["input_shape"]), len(meta["classes"]),
                            meta["model"]["args"])
        model.load_state_dict(state)
        with torch.no_grad():
            got = model.eval()(inputs)
    assert got.shape == (64, 10)
    assert (got - expected).abs().max().item() <= 1e-5
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_export_of_ema_weights_and_default_path(run_dir, trained, capsys):
    assert main(["export", str(run_dir), "--format", "torchscript", "--weights", "ema_last"]) == 0
    path = Path(capsys.readouterr().out.split()[0])
    assert path == run_dir / "export" / "ema_last.torchscript.pt"
    meta = json.loads(Path(str(path) + ".json").read_text())
    inputs = _real_inputs(trained, meta)
    got = torch.jit.load(str(path))(inputs)
    assert (got - _reference_logits(run_dir, "ema_last", inputs)).abs().max().item() <= 1e-5
    assert (got - _reference_logits(run_dir, "last", inputs)).abs().max().item() > 1e-3  # really the EMA weights


@pytest.mark.parametrize("fmt,module", [("onnx", "onnx"), ("safetensors", "safetensors")])
def test_export_format_whose_package_is_missing(run_dir, tmp_path, monkeypatch, capsys, fmt, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    out = tmp_path / "model"
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'visionlaunch[export]'" in err and f"pip install {module}" in err and "Traceback" not in err
    assert not out.exists() and not Path(str(out) + ".json").exists()


def test_run_without_weights_exits_2(run_dir, tmp_path, capsys):
    bare = Path(shutil.copytree(run_dir, tmp_path / "bare", ignore=shutil.ignore_patterns("export")))
    shutil.rmtree(bare / "weights")
    for args in (["predict", str(bare), str(tmp_path)], ["export", str(bare), "--format", "torchscript"],
                 ["evaluate", str(bare), "--data", "test_subset=10"]):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "has no weights/last.pt" in err and "not finished an epoch" in err and err.count("\n") == 1, err
    (bare / "weights").mkdir()
    shutil.copy(run_dir / "weights" / "best.pt", bare / "weights" / "best.pt")
    assert main(["export", str(bare), "--format", "torchscript"]) == 2
    assert "it has best: choose one with --weights" in capsys.readouterr().err
    assert not (bare / "export").exists()


def test_evaluate_on_another_split_and_other_classes(trained, tmp_path, capsys):
    run_dir, folder, _ = trained
    # The run's own validation split (the same held-out images as in training): the recorded val accuracy.
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch" and r["split"] == "val"][-1]
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "val"]) == 0
    assert f"({round(val['acc'] * val['n'])}/{val['n']})" in capsys.readouterr().out

    # Classes are matched by name: five of the ten digits, or other names, are refused with both lists.
    half = tmp_path / "half"
    for split in ("train", "test"):
        for digit in "01234":
            shutil.copytree(folder / split / digit, half / split / digit)
    assert main(["evaluate", str(run_dir), "--data", "name=imagefolder", f"path={half}"]) == 2
    err = capsys.readouterr().err
    assert "trained on 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), the data has 5 (0, 1, 2, 3, 4)" in err
    assert "Only in the run: 5, 6, 7, 8, 9; only in the data: none" in err
    named = tmp_path / "named"
    for split in ("train", "test"):
        for digit, name in zip("0123456789", "zero one two three four five six seven eight nine".split()):
            shutil.copytree(folder / split / digit, named / split / name)
    assert main(["evaluate", str(run_dir), "--data", "name=imagefolder", f"path={named}"]) == 2
    assert "only in the data: eight, five, four, nine, one" in capsys.readouterr().err  # sorted folder names
    assert main(["evaluate", str(run_dir), "--data", "lr=0.1"]) == 2
    assert "unknown key 'lr'" in capsys.readouterr().err
