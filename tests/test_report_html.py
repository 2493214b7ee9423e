"""The run report: rendered from a real short MNIST run, opened in headless Chromium (every image loads, a quiet
console, no network, a non-blank screenshot), printed to PDF, and rendered again from damaged, unfinished, resumed
and older run folders, which must never crash it."""

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.browser_check import (
    assert_not_blank,
    assert_renders_offline,
    assert_self_contained,
    chromium_or_skip,
    open_in_chromium,
)
from tests.conftest import SHARED_DATA, isolate_environment, require_shared_data
from visionlaunch.config import flatten
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.reports import write_report
from visionlaunch.reports.analysis import epoch_rows, find_restarts, headline, read_run

REPO = Path(__file__).resolve().parents[1]
# Small but real: 1,200 MNIST training images (200 held out for validation), 400 test images, a narrow CNN.
TINY = ["data.train_subset=1200", "data.test_subset=400", "data.val_size=200", "train.epochs=2",
        "train.batch_size=100", "train.log_every=5", "train.progress=false", "report.tsne_samples=150",
        "report.ident=tester", "report.figures=true", "model.args={channels: [8, 16], hidden: [32], convs_per_stage: 1}"]
FIGURES = ("loss", "accuracy", "tsne", "predictions", "confusion")


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> Path:
    """One real run shared by this module's tests (they copy it before changing anything). Module-scoped, so it
    checks the data itself (require_shared_data): skip on a developer machine, fail in CI."""
    require_shared_data()
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, root)
        code = main(["train", "--config", str(REPO / "configs" / "mnist_cnn.yaml"), f"data.root={SHARED_DATA}",
                     f"output.dir={root / 'runs'}", "output.name=mnist", *TINY])
        assert code == 0
        run = root / "runs" / "mnist"
        assert (run / "predictions.npz").is_file()  # written by training for the report
    return run


@pytest.fixture(scope="session")
def chromium() -> str:
    """Session-scoped, so a test that needs the browser skips before the module's training run starts."""
    return chromium_or_skip()


@pytest.fixture
def copy_run(mnist_run, tmp_path):
    def make(name: str = "copy") -> Path:
        return Path(shutil.copytree(mnist_run, tmp_path / name))
    return make


def _text(page: Path) -> str:
    """The page's visible text, roughly: tags and embedded images removed, whitespace collapsed."""
    body = re.sub(r"<style>.*?</style>|<[^>]+>", " ", page.read_text(), flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", body))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- real run


def test_report_of_a_real_run_shows_everything_and_renders_offline_in_chromium(copy_run, tmp_path, capsys):
    run = copy_run()
    assert main(["report", str(run)]) == 0
    page = run / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text()
    assert_self_contained(text)
    assert text.count("data:image/png;base64,") == len(FIGURES)

    text = _text(page)
    final = next(r for r in _records(run) if r["kind"] == "final")
    identity = yaml.safe_load((run / "run.yaml").read_text())
    for expected in ("mnist", "tester", identity["date"], identity["host"], identity["device"],
                     f"{identity['precision']} ({identity['precision_reason']})",  # what auto chose, and why
                     f"{100 * final['test_acc']:.2f}%", f"{100 * final['best_val_acc']:.2f}%",
                     f"epoch {final['best_epoch']}", f"{identity['parameters']:,}", "Most confused class pairs",
                     "trainable parameters", "optim:", "Per epoch: metrics and timing", "images/s", "finished"):
        assert expected in text, expected
    assert identity["command"].split()[0] in text and "output.name=mnist" in text
    assert "Missing or incomplete" not in text and "Resumed run" not in text and "could not be drawn" not in text

    # "k/10 correct" is the count of the images in the grid, from the stored predictions.
    with np.load(run / "predictions.npz") as npz:
        grid = npz["grid"]
        k = int((npz["labels"][grid] == npz["preds"][grid]).sum())
    assert f"{k}/10 correct" in text
    # Timing per epoch, from the train records.
    for rec in (r for r in _records(run) if r.get("kind") == "epoch" and r["split"] == "train"):
        assert f"{rec['images_per_s']:,.0f}" in text and f"{rec['seconds']:.1f} s" in text

    check = open_in_chromium(page, tmp_path / "browser")
    assert_renders_offline(check, n_images=len(FIGURES))
    assert {(i["w"], i["h"]) for i in check.images} == {_png_size(run / "figures" / f"{f}.png") for f in FIGURES}


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def test_report_pdf_is_printed_by_chromium(chromium, copy_run):
    run = copy_run()
    assert main(["report", str(run), "--pdf"]) == 0
    pdf = (run / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-1024:] and len(pdf) > 50_000  # figures included
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_pdf_without_a_browser_is_a_clear_error(copy_run, monkeypatch, capsys):
    run = copy_run()
    monkeypatch.setenv("PATH", str(run))  # no chromium on PATH
    monkeypatch.delenv("VISIONLAUNCH_CHROMIUM", raising=False)
    assert main(["report", str(run), "--pdf"]) == 2
    assert "apt-get install -y --no-install-recommends chromium" in capsys.readouterr().err
    assert (run / "report.html").is_file() and not (run / "report.pdf").exists()  # the HTML is still written


# ---------------------------------------------------------------------------------------------------- bad input


def test_run_that_crashed_in_epoch_0_renders_what_exists(copy_run, tmp_path):
    run = copy_run()
    for name in ("metrics.jsonl", "predictions.npz"):
        (run / name).unlink()
    shutil.rmtree(run / "figures")
    shutil.rmtree(run / "weights")
    page = write_report(run)
    text = _text(page)
    assert "metrics.jsonl is missing" in text and "no finished epoch" in text
    for fig in FIGURES:
        assert f"figures/{fig}.png is missing" in text
    assert "No epoch finished" in text and "trainable parameters" in text and "tester" in text  # what exists
    assert "<img" not in page.read_text()
    check = open_in_chromium(page, tmp_path / "browser")
    assert_renders_offline(check, n_images=0)


def test_truncated_metrics_of_an_unfinished_run(copy_run):
    run = copy_run()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    first_epoch = [i for i, line in enumerate(lines) if '"kind": "epoch"' in line and '"epoch": 1' in line]
    kept = lines[: first_epoch[-1] + 1]
    (run / "metrics.jsonl").write_text("\n".join(kept) + "\n" + lines[first_epoch[-1] + 1][:25])  # torn last line
    for fig in ("loss", "accuracy"):
        (run / "figures" / f"{fig}.png").unlink()
    text = _text(write_report(run))
    assert "1 unreadable line" in text and "no final record" in text and "unfinished: 1 of 2 epochs" in text
    assert "figures/loss.png is missing" in text
    assert "drawn by the report from metrics.jsonl" in text
    test_epoch_1 = json.loads(kept[-1]) if '"test"' in kept[-1] else None
    assert test_epoch_1 and f"{100 * test_epoch_1['acc']:.2f}%" in text  # results from the last logged epoch
    assert (run / "report.html").read_text().count("data:image/png") == len(FIGURES)  # curves redrawn


def test_missing_identity_config_summary_and_damaged_files(copy_run):
    run = copy_run()
    for name in ("run.yaml", "config.yaml", "summary.txt"):
        (run / name).unlink()
    png = run / "figures" / "tsne.png"
    png.write_bytes(png.read_bytes()[:500])  # cut short by a crash
    (run / "predictions.npz").write_bytes(b"PK\x03\x04 not really a zip")
    text = _text(write_report(run))
    for expected in ("run.yaml is missing", "config.yaml is missing", "summary.txt is missing",
                     "figures/tsne.png is not a complete PNG", "predictions.npz is unreadable", "No run.yaml"):
        assert expected in text, expected
    assert "Most confused class pairs" not in text and "Test accuracy" in text
    assert (run / "report.html").read_text().count("data:image/png") == len(FIGURES) - 1


def test_corrupt_yaml_and_a_config_from_another_version(copy_run):
    run = copy_run()
    (run / "run.yaml").write_text("- not\n- a mapping\n")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["learning_rate"] = config["optim"].pop("lr")  # renamed in some other version
    del config["report"]                                         # a section older versions did not have
    config["legacy"] = {"project": "x"}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    text = _text(write_report(run))
    assert "run.yaml does not hold a mapping" in text
    assert "keys this version of visionlaunch does not know (legacy.project, optim.learning_rate)" in text
    assert "lacks keys this version has (optim.lr, report.*)" in text
    assert "learning_rate: 0.05" in text  # the old config is still shown as recorded

    (run / "config.yaml").write_text("data: [unclosed\n")
    assert "config.yaml is not valid YAML" in _text(write_report(run))


def test_resumed_run_says_where_it_was_interrupted(copy_run):
    """As a resumed run logs it: killed during epoch 2, restarted from the end-of-epoch-1 checkpoint."""
    run = copy_run()
    records = _records(run)
    end_of_1 = max(i for i, r in enumerate(records) if r["kind"] == "epoch" and r["epoch"] == 1)
    steps_of_2 = [r for r in records[end_of_1 + 1:] if r["kind"] == "step"]
    assert steps_of_2, "the run must log steps in epoch 2 (train.log_every)"
    killed = records[: end_of_1 + 1] + steps_of_2[:2]  # the killed run logged two steps of epoch 2
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in killed + records[end_of_1 + 1:]))
    last_step = steps_of_2[1]["step"]

    restarts = find_restarts(_records(run))
    assert [(r.last_epoch, r.last_step, r.resumed_epoch) for r in restarts] == [(1, last_step, 2)]
    page = write_report(run)
    assert f"Interrupted after epoch 1 (last logged step {last_step}); resumed at epoch 2" in _text(page)
    assert 'class="badge good">finished' in page.read_text()  # the resumed run went on to its final record


def test_run_without_figures_says_so_once_and_draws_its_curves(copy_run):
    run = copy_run()
    shutil.rmtree(run / "figures")
    (run / "predictions.npz").unlink()
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["report"]["figures"] = False
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    page = write_report(run)
    text = _text(page)
    assert "report.figures=false: the run drew no figures" in text and "is missing" not in text
    assert "drawn by the report from metrics.jsonl" in text and page.read_text().count("data:image/png") == 2


def test_a_section_that_fails_becomes_a_note_not_a_lost_report(copy_run, monkeypatch):
    from visionlaunch.reports import html as report_html

    def broken(*args):
        raise KeyError("unforeseen")

    monkeypatch.setattr(report_html, "_confusion", broken)
    monkeypatch.setattr(report_html, "_draw_missing_curves", broken)
    run = copy_run()
    text = _text(write_report(run))
    assert "Section 'confusion' could not be drawn KeyError: 'unforeseen'" in text
    assert "the curves could not be drawn from metrics.jsonl (KeyError" in text
    assert "Loss and accuracy" in text and "Per epoch: metrics and timing" in text  # the rest is there


def test_missing_run_folder_is_a_user_error(tmp_path, capsys):
    with pytest.raises(VisionlaunchError, match="does not exist"):
        write_report(tmp_path / "nope")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "visionlaunch train" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(VisionlaunchError, match="is a file"):
        read_run(tmp_path / "file")


# ---------------------------------------------------------------------------------------------------- analysis


def test_headline_and_epoch_rows_from_records():
    records = [
        {"kind": "step", "split": "train", "epoch": 1, "step": 5, "loss": 2.0},
        {"kind": "epoch", "split": "train", "epoch": 1, "step": 10, "time": 4.0, "loss": 1.0, "acc": 0.5,
         "seconds": 3.5, "images_per_s": 100.0},
        {"kind": "epoch", "split": "val", "epoch": 1, "time": 4.5, "acc": 0.7},
        {"kind": "epoch", "split": "test", "epoch": 1, "time": 4.5, "acc": 0.6, "loss": 0.9},
        {"kind": "epoch", "split": "train", "epoch": 2, "time": 8.0, "images_per_s": 300.0},
        {"kind": "epoch", "split": "val", "epoch": 2, "time": 9.0, "acc": "n/a"},  # odd fields are skipped
        {"kind": "epoch", "split": "test", "epoch": 2, "time": 9.0, "acc": 0.65},
        {"kind": "epoch", "split": "other", "epoch": 2},
    ]
    rows = epoch_rows(records)
    assert [r["epoch"] for r in rows] == [1, 2] and set(rows[0]) == {"epoch", "train", "val", "test"}
    head = headline(records, epochs_planned=5)
    assert not head.finished and head.epochs_done == 2 and head.epochs_planned == 5
    assert head.test_acc == 0.65 and head.best_val_acc == 0.7 and head.best_epoch == 1
    assert head.test_acc_at_best_val == 0.6 and head.wall_s == 9.0 and head.images_per_s == 200.0

    final = {"kind": "final", "epochs": 2, "time": 9.5, "test_acc": 0.66, "best_val_acc": 0.7, "best_epoch": 1,
             "test_acc_at_best_val": 0.6}
    head = headline([*records, final])
    assert head.finished and head.test_acc == 0.66 and head.wall_s == 9.5 and head.epochs_planned == 2
    assert headline([]).epochs_done == 0 and headline([]).test_acc is None


def test_restart_detection_is_tolerant():
    assert find_restarts([]) == [] and find_restarts([{"kind": "x"}, {"step": "?"}]) == []
    # An epoch logged again without any steps (step records off) is a restart too.
    again = [{"kind": "epoch", "split": "train", "epoch": 1}, {"kind": "epoch", "split": "train", "epoch": 1}]
    assert [(r.line, r.last_epoch) for r in find_restarts(again)] == [(1, 1)]
    # Epoch records share the step of the step record logged at the end of the epoch: no restart.
    straight = [{"kind": "step", "epoch": 1, "step": s} for s in (5, 10)] + [
        {"kind": "epoch", "split": split, "epoch": 1, "step": 10} for split in ("train", "val", "test")]
    assert find_restarts(straight) == []
    # The same step logged twice: the resumed run went back to a checkpoint at an epoch boundary.
    twice = [*straight, {"kind": "step", "epoch": 2, "step": 15}, {"kind": "step", "epoch": 2, "step": 15}]
    assert [(r.line, r.last_epoch, r.last_step, r.resumed_step) for r in find_restarts(twice)] == [(6, 1, 15, 15)]


def test_flatten():
    assert flatten({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "model": {"args": {}}, "x": 1}) == {
        "optim.lr": 0.1, "optim.betas": [0.9, 0.99], "model.args": {}, "x": 1}
    assert flatten({}) == {} and flatten(None) == {}


def test_the_browser_check_catches_fetches_broken_images_and_console_messages(tmp_path):
    """The harness itself: a page that leaks must fail every one of the checks the reports pass."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="style-src '
                    "'none'\"><link rel=\"stylesheet\" href=\"https://fonts.example.com/a.css\"></head><body>"
                    '<p>text</p><img src="http://example.com/logo.png" alt="logo"></body></html>')
    check = open_in_chromium(page, tmp_path / "browser")
    assert len(check.images) == 1 and check.images[0]["w"] == 0
    assert "http://example.com/logo.png" in check.requests
    assert any("Content Security Policy" in line for line in check.console)
    with pytest.raises(AssertionError):
        assert_self_contained(page.read_text())
    with pytest.raises(AssertionError):
        assert_renders_offline(check, n_images=1)
    with pytest.raises(AssertionError, match="one colour"):
        assert_not_blank(np.full((200, 300, 3), 255, dtype=np.uint8))
