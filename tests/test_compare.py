"""The comparison page: an ablation of three real short MNIST runs (learning rate and model width) compared on
one page, opened in headless Chromium, its text summary checked against the runs' own metrics, and bad input
(too few, missing or repeated run folders, an unfinished run, a config from another version) handled."""

import html
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.browser_check import assert_renders_offline, assert_self_contained, chromium_or_skip, open_in_chromium
from tests.conftest import SHARED_DATA, isolate_environment, require_shared_data
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.reports import write_comparison
from visionlaunch.reports.compare import changes, differing_keys, effects, load_runs, summarise

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.train_subset=1000", "data.test_subset=300", "data.val_size=200", "train.epochs=2",
        "train.batch_size=100", "train.progress=false", "report.figures=false", "report.ident=tester"]
WIDTH = "model.args={{channels: {}, hidden: [32], convs_per_stage: 1}}"
ABLATION = {  # name -> overrides; "base" first: it is the baseline of the comparison
    "base": ["optim.lr=0.05", WIDTH.format("[8, 16]")],
    "lr-0.2": ["optim.lr=0.2", WIDTH.format("[8, 16]")],
    "narrow": ["optim.lr=0.05", WIDTH.format("[4, 8]")],
}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> list[Path]:
    """Three real runs shared by this module's tests (copied before anything changes them). Module-scoped, so it
    checks the data itself (require_shared_data): skip on a developer machine, fail in CI."""
    require_shared_data()
    root = tmp_path_factory.mktemp("ablation")
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, root)
        for name, overrides in ABLATION.items():
            assert main(["train", "--config", str(REPO / "configs" / "mnist_cnn.yaml"), f"data.root={SHARED_DATA}",
                         f"output.dir={root / 'runs'}", f"output.name={name}", *TINY, *overrides]) == 0
    return [root / "runs" / name for name in ABLATION]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Session-scoped, so a test that needs the browser skips before the module's training runs start."""
    return chromium_or_skip()


@pytest.fixture
def runs(ablation, tmp_path) -> list[Path]:
    """A private copy of the ablation under tmp_path/runs."""
    return [Path(shutil.copytree(run, tmp_path / "runs" / run.name)) for run in ablation]


def _final(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return next(json.loads(line) for line in lines if '"kind": "final"' in line)


def _text(page: Path) -> str:
    body = re.sub(r"<style>.*?</style>|<[^>]+>", " ", page.read_text(), flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", body))


def test_compare_page_of_an_ablation_renders_offline_in_chromium(runs, tmp_path, capsys):
    assert main(["compare", *map(str, runs)]) == 0
    page = tmp_path / "runs" / "compare.html"  # default: beside the runs
    assert capsys.readouterr().out.strip() == str(page)
    assert (tmp_path / "runs" / "compare-curves.png").is_file()
    source = page.read_text()
    assert_self_contained(source)
    assert source.count("data:image/png;base64,") == 1

    text = _text(page)
    assert "3 runs compared" in text and "What changed most" in text
    header = re.search(r"<thead>(.*?)</thead>", source, re.S).group(1)
    assert "optim.lr" in header and "model.args.channels" in header
    assert "data.train_subset" not in header and "output.name" not in header  # same in every run / where written
    for run in runs:
        final = _final(run)
        assert f"{100 * final['test_acc']:.2f}%" in text and f"{100 * final['best_val_acc']:.2f}%" in text
        params = yaml.safe_load((run / "run.yaml").read_text())["parameters"]
        assert f"{params:,}" in text

    check = open_in_chromium(page, tmp_path / "browser")
    assert_renders_offline(check, n_images=1)
    assert check.images[0]["w"] > 1000  # three panels side by side


def test_summary_names_the_largest_gain_and_drop_with_their_config_change(runs):
    acc = {run.name: 100 * _final(run)["test_acc"] for run in runs}
    change = {"lr-0.2": "optim.lr 0.05 -> 0.2", "narrow": "model.args.channels [8, 16] -> [4, 8]"}
    compared = load_runs(runs)
    lines = summarise(compared, differing_keys(compared))
    assert lines[0] == f"Baseline: base (the first run given), test accuracy {acc['base']:.2f}%."
    deltas = {name: acc[name] - acc["base"] for name in change}
    gain, drop = max(deltas, key=deltas.get), min(deltas, key=deltas.get)
    if deltas[gain] > 0:
        assert (f"Largest gain: {gain} ({deltas[gain]:+.2f} points test accuracy) differs in {change[gain]}."
                in lines)
    else:
        assert not [line for line in lines if line.startswith("Largest gain")]
    if deltas[drop] < 0:
        assert (f"Largest drop: {drop} ({deltas[drop]:+.2f} points test accuracy) differs in {change[drop]}."
                in lines)
    else:
        assert not [line for line in lines if line.startswith("Largest drop")]
    best = max(acc, key=acc.get)
    assert f"Best test accuracy: {best}, {acc[best]:.2f}%." in lines
    assert any(line.startswith("Fastest: ") for line in lines)


def test_out_file(runs, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "ablation.html"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out.parent / "ablation-curves.png").is_file() and "3 runs compared" in _text(out)


def test_compare_pdf(chromium, runs, tmp_path):
    out = tmp_path / "ablation.html"
    assert main(["compare", *map(str, runs), "--out", str(out), "--pdf"]) == 0
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF-")


def test_bad_arguments_are_user_errors(runs, tmp_path, capsys):
    assert main(["compare", str(runs[0])]) == 2
    assert "at least two run folders" in capsys.readouterr().err
    assert main(["compare", str(runs[0]), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(runs[0]), str(runs[1]), str(runs[0])]) == 2
    assert "more than once" in capsys.readouterr().err
    with pytest.raises(VisionlaunchError, match="is a folder"):
        write_comparison(runs, tmp_path)


def test_unfinished_and_older_runs_still_compare(runs, tmp_path):
    crashed = Path(shutil.copytree(runs[0], tmp_path / "other" / "base"))  # same name as runs[0], other folder
    (crashed / "metrics.jsonl").unlink()
    older = runs[2]
    config = yaml.safe_load((older / "config.yaml").read_text())
    del config["train"]["log_every"]       # a key its version did not have yet, at the default elsewhere
    del config["optim"]["lr"]              # a varied key it did not record
    config["optim"]["legacy_knob"] = 3     # a key only its version had
    (older / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    page = write_comparison([*runs, crashed], tmp_path / "compare.html")
    text = _text(page)
    # Two runs share the folder name "base": labels become paths below the common parent.
    assert "Baseline: runs/base (the first run given)" in text and "other/base" in text
    assert "No test accuracy for other/base" in text and "no finished epoch" in text
    assert "other/base: metrics.jsonl is missing" in text
    assert "runs/narrow: config.yaml has keys this version of visionlaunch does not know (optim.legacy_knob)" in text
    keys = differing_keys(load_runs([*runs, crashed]))
    assert "optim.lr" in keys and "(absent)" in text    # varied; the older run shows it as absent
    assert "train.log_every" not in keys and "optim.legacy_knob" not in keys  # version differences only
    check = open_in_chromium(page, tmp_path / "browser")
    assert_renders_offline(check, n_images=1)


def test_only_trajectory_keys_are_credited_and_the_process_count_is_a_difference(runs, tmp_path):
    """Checkpointing, logging and tracker keys are shown when they differ but never named as the cause of a change
    in accuracy (the rule resuming uses for keys that may change); the process count (run.yaml) is a difference."""
    base, lr, narrow = runs
    config = yaml.safe_load((lr / "config.yaml").read_text())
    config["train"].update(checkpoint_every=7, log_every=3, progress=True)
    config["tracker"]["name"] = "csv"
    (lr / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    identity = yaml.safe_load((narrow / "run.yaml").read_text())
    identity["processes"] = 2
    (narrow / "run.yaml").write_text(yaml.safe_dump(identity, sort_keys=False))

    compared = load_runs(runs)
    keys = differing_keys(compared)
    assert {"train.checkpoint_every", "train.log_every", "tracker.name", "processes", "optim.lr"} <= set(keys)
    assert changes(compared[0], compared[1], keys) == "optim.lr 0.05 -> 0.2"
    assert changes(compared[0], compared[2], keys) == "model.args.channels [8, 16] -> [4, 8], processes 1 -> 2"
    credited = {key for key, _, _ in effects(compared, keys)}
    assert "train.checkpoint_every" not in credited and "tracker.name" not in credited and "processes" in credited

    page = write_comparison(runs, tmp_path / "compare.html").read_text()
    # Every table sits in a container that scrolls sideways instead of squeezing or clipping a wide table.
    assert page.count("<table") == page.count('<div class="scroll wide"><table')
    assert ".scroll.wide table { width: auto; min-width: 100%; }" in page
    assert "<th>processes</th>" in page  # a column of the results table


def test_comparison_figure_overlays_every_run_and_falls_back_to_validation(tmp_path, monkeypatch):
    from matplotlib.text import Text

    from visionlaunch.reports import Stamp, figures

    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.append(fig) or path)

    def records(acc: list[float], splits=("train", "test")) -> list[dict]:
        return [{"kind": "epoch", "split": s, "epoch": e + 1, "acc": a, "loss": 1 - a}
                for e, a in enumerate(acc) for s in splits]

    runs = [("a", records([0.5, 0.6])), ("b", records([0.4, 0.7])), ("no-test", records([0.3], ("train", "val"))),
            ("empty", [])]
    figures.plot_comparison(runs, tmp_path / "curves.png", Stamp("ada", "2024-05-01", "comparison"))
    fig = saved[0]
    texts = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
    assert "4 runs compared, per epoch" in texts and "ada · 2024-05-01 · comparison" in texts
    assert "Test accuracy (dashed: validation)" in texts and "Train loss" in texts
    test_acc, train_loss, test_loss = fig.axes
    assert [line.get_label() for line in test_acc.get_lines()] == ["a", "b", "no-test"]
    assert [line.get_linestyle() for line in test_acc.get_lines()] == ["-", "-", "--"]
    assert list(test_acc.get_lines()[1].get_ydata()) == [40.0, 70.0]  # percent
    assert len(train_loss.get_lines()) == 3 and fig.legends and len(fig.legends[0].get_texts()) == 3


def test_precision_compares_as_computed(runs):
    """Two runs with train.precision auto that computed in different types differ (auto resolves per machine); a
    run recorded with the old spelling 'no' and one with fp32 do not."""
    base, lr, narrow = runs
    for run, precision in ((base, "bf16"), (lr, "fp32"), (narrow, "no")):
        identity = yaml.safe_load((run / "run.yaml").read_text())
        identity["precision"] = precision
        (run / "run.yaml").write_text(yaml.safe_dump(identity, sort_keys=False))
    compared = load_runs(runs)
    assert all(yaml.safe_load((r / "config.yaml").read_text())["train"]["precision"] == "auto" for r in runs)
    keys = differing_keys(compared)
    assert changes(compared[0], compared[1], keys) == "optim.lr 0.05 -> 0.2, train.precision bf16 -> fp32"
    assert "train.precision" not in changes(compared[1], compared[2], keys)
