"""Figures: each is built, inspected through its texts, written as a real PNG and checked not to be blank."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from visionlaunch.reports import (
    Stamp,
    count_correct,
    most_confused_pairs,
    plot_confusion,
    plot_curves,
    plot_predictions,
    plot_tsne,
)
from visionlaunch.reports import class_figures, figures
from tests.cifar_format import CIFAR100_COARSE, CIFAR100_FINE, FINE_TO_COARSE

STAMP = Stamp(ident="ada", date="2024-05-01", run_name="mnist-cnn")
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def check_png(path):
    """A complete, non-blank PNG of readable size, and no temporary file left beside it."""
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        pixels = np.asarray(img.convert("RGB"), dtype=float)
    assert min(pixels.shape[:2]) >= 300
    assert pixels.std() > 0
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return pixels


@pytest.fixture
def saved_figs(monkeypatch):
    """Keep every figure the public functions save, so a test can read what was drawn."""
    kept = {}
    real_save = figures._save

    def keep(fig, path):
        kept[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    monkeypatch.setattr(class_figures, "_save", keep)
    return kept


# ---------------------------------------------------------------------------------------------------- stamp


def test_stamp_text_and_validation():
    assert Stamp("ada", "2024-05-01").text() == "ada · 2024-05-01"
    assert STAMP.text() == "ada · 2024-05-01 · mnist-cnn"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        Stamp("ada", "01/05/2024")
    with pytest.raises(ValueError):
        Stamp("ada", "2024-02-30")
    with pytest.raises(ValueError, match="report.ident"):
        Stamp("  ", "2024-05-01")
    assert len(Stamp.today().date) == 10


# ---------------------------------------------------------------------------------------------------- curves


def epoch(split, e, loss, acc, **extra):
    return {"kind": "epoch", "split": split, "epoch": e, "step": 100 * e, "loss": loss, "acc": acc, "acc5": 1.0,
            "lr": 0.1, "time": 1.0 * e, **extra}


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_curves_train_and_test_only(tmp_path, saved_figs):
    records = [epoch("train", e, 1.0 / e, 0.5 + 0.1 * e) for e in (1, 2, 3)]
    records += [epoch("test", e, 1.2 / e, acc) for e, acc in ((1, 0.6), (2, 0.9), (3, 0.8))]
    paths = plot_curves(records, tmp_path, STAMP)

    assert paths == [tmp_path / "loss.png", tmp_path / "accuracy.png"]
    for path in paths:
        check_png(path)
    loss, acc = saved_figs["loss.png"], saved_figs["accuracy.png"]
    for fig in (loss, acc):
        assert STAMP.text() in texts(fig)
    assert [label.split(" ")[0] for label in legend_labels(loss)] == ["train", "test"]
    assert legend_labels(acc) == ["train (last 80.00%)", "test (best 90.00% @ epoch 2)"]


def test_curves_train_val_test_marks_best(tmp_path, saved_figs):
    records = []
    for e in range(1, 6):
        records += [epoch("train", e, 1.0 / e, 0.6 + 0.05 * e), epoch("val", e, 1.1 / e, [.5, .7, .95, .9, .85][e - 1]),
                    epoch("test", e, 1.2 / e, [.4, .6, .8, .92, .91][e - 1])]
        records.append({"kind": "step", "split": "train", "epoch": e, "step": 100 * e - 10, "loss": 9.0, "lr": 0.1,
                        "time": 1.0})
    plot_curves(records, tmp_path, STAMP)

    acc = saved_figs["accuracy.png"]
    assert legend_labels(acc) == ["train (last 85.00%)", "val (best 95.00% @ epoch 3)", "test (best 92.00% @ epoch 4)"]
    stars = [line for line in acc.axes[0].get_lines() if line.get_marker() == "*"]
    assert sorted((float(s.get_xdata()[0]), round(float(s.get_ydata()[0]), 6)) for s in stars) == [(3.0, 95.0),
                                                                                                  (4.0, 92.0)]
    # step records (loss 9.0) are not drawn among the per-epoch lines
    assert max(max(line.get_ydata()) for line in saved_figs["loss.png"].axes[0].get_lines()) < 9.0


def test_curves_skip_bad_records_and_keep_last_of_repeated_epoch(tmp_path):
    records = [
        epoch("train", 1, 0.9, 0.5),
        {"kind": "epoch", "split": "train", "epoch": 2},               # truncated: no loss, no acc
        {"kind": "epoch", "split": "train", "epoch": 3, "loss": "nan?", "acc": True},
        {"kind": "epoch", "split": "val", "loss": 0.5, "acc": 0.5},    # no epoch
        {"kind": "epoch", "split": "val", "epoch": 1, "loss": float("nan"), "acc": 0.7},
        {"kind": "epoch", "split": "holdout", "epoch": 1, "loss": 0.1, "acc": 0.1},
        {"kind": "eval", "split": "test", "epoch": 1, "loss": 0.1, "acc": 0.1},
        {"split": "test", "epoch": 1, "loss": 0.1},
        "not a record", None, [],
        epoch("train", 4, 0.6, 0.6),
        epoch("train", 4, 0.4, 0.8),                                   # resumed run logs epoch 4 again
    ]
    loss = figures.epoch_series(records, "loss")
    assert list(loss) == ["train"]
    np.testing.assert_array_equal(loss["train"][0], [1, 4])
    np.testing.assert_array_equal(loss["train"][1], [0.9, 0.4])
    acc = figures.epoch_series(records, "acc")
    assert list(acc) == ["train", "val"]
    np.testing.assert_array_equal(acc["val"][1], [0.7])

    for path in plot_curves(records, tmp_path, STAMP):
        check_png(path)


def test_curves_without_epoch_records_say_so(tmp_path, saved_figs):
    steps = [{"kind": "step", "split": "train", "epoch": 1, "step": s, "loss": 2.0, "lr": 0.1, "time": 1.0}
             for s in (10, 20)]
    for records in ([], steps):
        paths = plot_curves(records, tmp_path, STAMP)
        for path in paths:
            check_png(path)
        for name in ("loss.png", "accuracy.png"):
            assert "no epoch finished yet" in texts(saved_figs[name])
            assert STAMP.text() in texts(saved_figs[name])

    plot_curves([{"kind": "epoch", "split": "train", "epoch": 1, "loss": 1.0}], tmp_path, STAMP)
    assert "no accuracy in the epoch records" in texts(saved_figs["accuracy.png"])


# ---------------------------------------------------------------------------------------------------- t-SNE


def gaussian_clusters(n=200, dim=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 10.0, size=(k, dim))
    labels = np.arange(n) % k
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_tsne_is_deterministic_separates_clusters_and_writes_png(tmp_path, saved_figs):
    features, labels = gaussian_clusters()
    classes = ["cat", "dog", "bird"]
    embedding = class_figures.tsne_embedding(features, seed=0)
    assert embedding.shape == (200, 2)
    centroids = np.stack([embedding[labels == c].mean(axis=0) for c in range(3)])
    nearest = np.argmin(((embedding[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).all()  # well-separated clusters stay separated

    # plot_tsne, run again with the same seed, draws exactly the figure of the embedding above
    out = plot_tsne(features, labels, classes, tmp_path / "tsne.png", STAMP, layer="penultimate", seed=0)
    reference = figures._save(class_figures._make_tsne_figure(embedding, labels, classes, STAMP, layer="penultimate",
                                                        n_total=200), tmp_path / "reference.png")
    np.testing.assert_array_equal(check_png(out), check_png(reference))

    fig = saved_figs["tsne.png"]
    title = fig.get_suptitle()
    assert "penultimate" in title and "200 points" in title
    assert legend_labels(fig) == classes
    assert STAMP.text() in texts(fig)


def test_tsne_many_classes_small_n_and_sampling(tmp_path, saved_figs):
    classes = [f"species_{i}" for i in range(25)]
    features, labels = gaussian_clusters(n=60, dim=4, k=25, seed=1)
    check_png(plot_tsne(features, labels, classes, tmp_path / "many.png", STAMP, layer="fc1", max_points=40))
    fig = saved_figs["many.png"]
    assert "40 points (random sample of 60)" in fig.get_suptitle()
    assert "no per-class legend" in fig.get_suptitle()
    assert fig.axes[0].get_legend() is None

    assert class_figures.safe_perplexity(5) < 5 and class_figures.safe_perplexity(10_000) == 30.0
    tiny, tiny_labels = gaussian_clusters(n=5, dim=3, k=2)
    check_png(plot_tsne(tiny, tiny_labels, ["a", "b"], tmp_path / "tiny.png", STAMP, layer="x"))


# ---------------------------------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("channels", [1, 3])
def test_prediction_grid_titles_and_count(tmp_path, channels, saved_figs):
    rng = np.random.default_rng(channels)
    images = rng.integers(0, 256, size=(10, channels, 28, 28), dtype=np.uint8)
    labels = np.arange(10)
    preds = labels.copy()
    wrong = [1, 4, 8] if channels == 1 else [0, 2, 3, 5, 9]
    preds[wrong] = (labels[wrong] + 1) % 10
    assert count_correct(labels, preds) == 10 - len(wrong)

    out = plot_predictions(images, labels, preds, CIFAR, tmp_path / "predictions.png", STAMP)
    check_png(out)
    fig = saved_figs["predictions.png"]
    assert fig.get_suptitle().endswith(f"{10 - len(wrong)}/10 correct")
    assert STAMP.text() in texts(fig)
    titles = [ax.title for ax in fig.axes]
    assert len(titles) == 10
    for i, title in enumerate(titles):
        assert title.get_text() == f"true: {CIFAR[labels[i]]}\npred: {CIFAR[preds[i]]}"
        assert title.get_color() == (figures._WRONG if i in wrong else figures._RIGHT)


def test_prediction_grid_rejects_float_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        plot_predictions(np.zeros((2, 3, 8, 8)), [0, 1], [0, 1], CIFAR, tmp_path / "p.png", STAMP)


# ---------------------------------------------------------------------------------------------------- confusion


def test_confusion_small_case_values_and_names(tmp_path, saved_figs):
    classes = ["cat", "dog", "bird", "fish"]  # fish never occurs: its row stays zeros, not NaN
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 0, 0, 1, 1, 0, 2, 2, 1, 0])
    norm = class_figures.row_normalise(class_figures.confusion_counts(labels, preds, classes))
    np.testing.assert_allclose(norm, [[.75, .25, 0, 0], [.5, .5, 0, 0], [.25, .25, .5, 0], [0, 0, 0, 0]])

    check_png(plot_confusion(labels, preds, classes, tmp_path / "confusion.png", STAMP))
    fig = saved_figs["confusion.png"]
    assert "accuracy 60.00% on 10 samples" in fig.get_suptitle()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert [t.get_text() for t in ax.get_yticklabels()] == classes
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 16 and cells[:3] == ["0.75", "0.25", "0.00"]
    assert STAMP.text() in texts(fig)


def _hundred_class_predictions(seed=0, n=4000):
    """CIFAR-100's names and grouping; 60% right, and half the errors inside the true class's superclass."""
    rng = np.random.default_rng(seed)
    groups = np.array(FINE_TO_COARSE)
    labels = rng.integers(0, 100, size=n)
    siblings = [np.flatnonzero(groups == groups[c]) for c in range(100)]
    preds = labels.copy()
    for i in np.flatnonzero(rng.random(n) > 0.6):
        preds[i] = rng.choice(siblings[labels[i]]) if rng.random() < 0.5 else rng.integers(0, 100)
    preds[labels == 3] = 7  # one pair stands out: every 'bear' (3) predicted as 'beetle' (7)
    return labels, preds


def test_confusion_hundred_classes_is_readable(tmp_path, saved_figs):
    labels, preds = _hundred_class_predictions()
    pixels = check_png(plot_confusion(labels, preds, CIFAR100_FINE, tmp_path / "confusion.png", STAMP))
    assert pixels.shape[1] >= 1500  # shown at its own size: every name legible
    fig = saved_figs["confusion.png"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == CIFAR100_FINE  # every class named, in class order
    accuracy = np.mean(labels == preds)
    assert f"accuracy {accuracy:.2%}" in fig.get_suptitle()
    panel = "\n".join(texts(fig))
    assert "Most confused pairs" in panel
    first_pair = next(line for line in panel.splitlines() if "→" in line and "predicted" not in line)
    assert first_pair.split() == ["bear", "→", "beetle", str(int((labels == 3).sum())), "100%"]


def test_confusion_hundred_classes_ordered_by_superclass(tmp_path, saved_figs):
    labels, preds = _hundred_class_predictions()
    check_png(plot_confusion(labels, preds, CIFAR100_FINE, tmp_path / "confusion.png", STAMP,
                             superclasses=CIFAR100_COARSE, superclass_of=FINE_TO_COARSE))
    fig = saved_figs["confusion.png"]
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows[:5] == ["beaver", "dolphin", "otter", "seal", "whale"] and sorted(rows) == CIFAR100_FINE
    assert [FINE_TO_COARSE[CIFAR100_FINE.index(r)] for r in rows] == sorted(FINE_TO_COARSE)
    assert len(ax.lines) == 2 * 19  # the 20 blocks outlined
    assert [t.get_text() for t in ax.texts] == [class_figures._group_names([c])[0] for c in CIFAR100_COARSE]
    wrong = labels != preds
    inside = np.mean(np.array(FINE_TO_COARSE)[labels[wrong]] == np.array(FINE_TO_COARSE)[preds[wrong]])
    assert f"{inside:.0%} of all {wrong.sum():,} errors stay" in "\n".join(texts(fig))
    with pytest.raises(ValueError, match="superclass_of"):
        plot_confusion(labels, preds, CIFAR100_FINE, tmp_path / "bad.png", STAMP, superclasses=CIFAR100_COARSE,
                       superclass_of=FINE_TO_COARSE[:99])


def test_tsne_hundred_classes_coloured_by_superclass(tmp_path, saved_figs):
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 100
    centres = rng.normal(0, 8, size=(20, 8))
    features = (centres[np.array(FINE_TO_COARSE)[labels]] + rng.normal(size=(300, 8))).astype(np.float32)
    check_png(plot_tsne(features, labels, CIFAR100_FINE, tmp_path / "tsne.png", STAMP, layer="fc",
                        superclasses=CIFAR100_COARSE, superclass_of=FINE_TO_COARSE))
    fig = saved_figs["tsne.png"]
    assert "coloured by the 20 superclasses of the 100 classes" in fig.get_suptitle()
    assert legend_labels(fig) == [c.replace("_", " ") for c in CIFAR100_COARSE]
    assert fig.axes[0].get_legend().get_title().get_text() == "superclass"


def test_confusion_rejects_out_of_range_labels(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        plot_confusion([0, 2], [0, 1], ["a", "b"], tmp_path / "c.png", STAMP)


def test_most_confused_pairs_order():
    classes = ["cat", "dog", "bird"]
    #            cat->dog x3, dog->cat x2, bird->cat x2, bird->dog x1, plus correct ones
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 0, 1, 2]
    preds = [1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 2]
    assert most_confused_pairs(labels, preds, classes) == [
        ("cat", "dog", 3), ("dog", "cat", 2), ("bird", "cat", 2), ("bird", "dog", 1)]
    assert most_confused_pairs(labels, preds, classes, k=2) == [("cat", "dog", 3), ("dog", "cat", 2)]
    assert most_confused_pairs([0, 1, 2], [0, 1, 2], classes) == []


# ---------------------------------------------------------------------------------------------------- atomic save


def test_failed_save_keeps_the_old_png_and_leaves_no_temp_file(tmp_path, monkeypatch):
    out = tmp_path / "figs" / "confusion.png"
    plot_confusion([0, 1], [0, 1], ["a", "b"], out, STAMP)
    before = out.read_bytes()

    def crash(self, f, **kwargs):
        Path(f).write_bytes(b"\x89PNG half")  # a torn write into the temporary file
        raise RuntimeError("disk full")

    monkeypatch.setattr(figures.Figure, "savefig", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_confusion([0, 1], [1, 1], ["a", "b"], out, STAMP)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["confusion.png"]
