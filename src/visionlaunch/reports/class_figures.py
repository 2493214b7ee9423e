"""The figures of what a model learned: t-SNE of a layer's features, the grid of 10 test predictions and the
confusion matrix (with the most confused pairs), legible with 100 classes. Style, stamp and saving are shared with
the curves in `figures.py`."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from .figures import MAX_LEGEND_CLASSES, _RIGHT, _WRONG, Stamp, _frameless, _save, _short, _styled_figure
from .predictions import check_groups, indices, label_pair


# ---------------------------------------------------------------------------------------------------- t-SNE


def safe_perplexity(n_points: int) -> float:
    """sklearn's default of 30, lowered for small N because t-SNE needs perplexity < n_points."""
    return float(min(30.0, max(1.0, (n_points - 1) / 3.0)))


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE of (N, ...) features; the same seed gives the same embedding."""
    from sklearn.manifold import TSNE  # imported here: sklearn.manifold is slow to import and only needed here
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    x = np.asarray(features, dtype=np.float32)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"t-SNE needs features of shape (N>=2, D), got {x.shape}")
    x = x.reshape(len(x), -1)  # conv feature maps (N, C, H, W) are flattened
    if not np.isfinite(x).all():
        raise ValueError("t-SNE features contain NaN or inf (did the run diverge?)")
    init = "pca" if min(x.shape) >= 2 else "random"  # PCA init needs two components to exist
    tsne = TSNE(n_components=2, perplexity=safe_perplexity(len(x)), init=init, learning_rate="auto",
                random_state=seed)
    # One OpenMP thread: on a busy or small machine sklearn's threads fight torch's and run several times slower
    # (1,000 points: 4 s vs 30 s measured on 2 loaded cores); it also keeps the result thread-count independent.
    with threadpool_limits(1):
        return tsne.fit_transform(x)


def _group_names(names: list[str]) -> list[str]:
    """Superclass names as a legend reads them: 'large_man-made_outdoor_things' -> 'large man-made outdoor things'."""
    return [_short(n.replace("_", " "), 30) for n in names]


def _make_tsne_figure(embedding: np.ndarray, labels: np.ndarray, classes: list[str], stamp: Stamp, *,
                      layer: str, n_total: int, superclasses: list[str] | None = None,
                      superclass_of: np.ndarray | None = None) -> Figure:
    n = len(embedding)
    title = f"t-SNE of '{layer}' features · {n} points"
    if n_total > n:
        title += f" (random sample of {n_total})"
    many = len(classes) > MAX_LEGEND_CLASSES
    # Many classes with a known grouping (CIFAR-100's 20 superclasses): colour by group, which a legend can name.
    grouped = many and superclass_of is not None and len(superclasses) <= MAX_LEGEND_CLASSES
    if grouped:
        title += f"\ncoloured by the {len(superclasses)} superclasses of the {len(classes)} classes"
        labels, names = np.asarray(superclass_of)[labels], _group_names(superclasses)
    elif many:
        title += f"\n{len(classes)} classes: continuous colour map, no per-class legend"
    else:
        names = [_short(c) for c in classes]
    size = float(np.clip(3000 / n, 3, 25))  # smaller dots as the cloud gets denser
    with _styled_figure(stamp, title, (7.2, 6.4) if many and not grouped else (9.4 if grouped else 8.0, 6.4)) as fig:
        ax = fig.add_subplot()
        ax.set_xticks([])
        ax.set_yticks([])
        _frameless(ax)
        ax.set_aspect("equal", adjustable="datalim")
        if many and not grouped:
            ax.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="turbo", vmin=0, vmax=len(classes) - 1,
                       s=size, alpha=0.8, linewidths=0)
            return fig
        cmap = mpl.colormaps["tab10" if len(names) <= 10 else "tab20"]
        for idx, name in enumerate(names):
            mask = labels == idx
            if mask.any():
                ax.scatter(embedding[mask, 0], embedding[mask, 1], color=cmap(idx), label=name, s=size,
                           alpha=0.8, linewidths=0)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=max(1.0, 30 / size) ** 0.5,
                  title="superclass" if grouped else None)
        return fig


def plot_tsne(features: np.ndarray, labels: np.ndarray, classes: list[str], out_path: Path, stamp: Stamp, *,
              layer: str, seed: int = 0, max_points: int = 5000, superclasses: list[str] | None = None,
              superclass_of=None) -> Path:
    """Scatter a 2-D t-SNE of `features` coloured by class, or by superclass (`superclasses` names,
    `superclass_of[class]` its index) when there are too many classes for a legend. Above `max_points` a seeded
    random sample is used, since t-SNE time grows with N and a few thousand points already show the structure."""
    y = indices(labels, len(classes), "labels")
    groups = check_groups(superclasses, superclass_of, len(classes))
    if len(y) != len(features):
        raise ValueError(f"features and labels differ in length: {len(features)} vs {len(y)}")
    keep = np.arange(len(y))
    if len(y) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), size=max_points, replace=False))
    embedding = tsne_embedding(np.asarray(features)[keep], seed=seed)
    fig = _make_tsne_figure(embedding, y[keep], classes, stamp, layer=layer, n_total=len(y),
                            superclasses=superclasses, superclass_of=groups)
    return _save(fig, out_path)


# ---------------------------------------------------------------------------------------------------- predictions


def count_correct(labels, preds) -> int:
    return int(np.sum(np.asarray(labels) == np.asarray(preds)))


def _to_hwc(images) -> np.ndarray:
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8:
        raise ValueError(f"prediction images must be uint8 (un-normalised), got {imgs.dtype}")
    if imgs.ndim == 3:  # (k, H, W) grayscale without a channel axis
        imgs = imgs[:, None]
    if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
        raise ValueError(f"prediction images must be (k, C, H, W) with C = 1 or 3, got shape {imgs.shape}")
    return imgs.transpose(0, 2, 3, 1)


def plot_predictions(images: np.ndarray, labels: np.ndarray, preds: np.ndarray, classes: list[str], out_path: Path,
                     stamp: Stamp) -> Path:
    """A grid (2x5 for 10 images) titled with true and predicted class names: green when right, red when wrong."""
    imgs = _to_hwc(images)
    y, p = label_pair(labels, preds, classes)
    k = len(imgs)
    if k == 0 or len(y) != k:
        raise ValueError(f"need one label and prediction per image: {k} images, {len(y)} labels")
    ncols = min(5, k)
    nrows = math.ceil(k / ncols)
    title = f"Sample predictions · {count_correct(y, p)}/{k} correct"
    with _styled_figure(stamp, title, (1.9 * ncols, 2.15 * nrows + 0.6)) as fig:
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for i, ax in enumerate(axes):
            ax.set_axis_off()
            if i >= k:
                continue
            img = imgs[i]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            right = y[i] == p[i]
            ax.set_title(f"true: {_short(classes[y[i]])}\npred: {_short(classes[p[i]])}", fontsize=8,
                         color=_RIGHT if right else _WRONG)
        return _save(fig, out_path)


# ---------------------------------------------------------------------------------------------------- confusion


def confusion_counts(labels, preds, classes: list[str]) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class, in the order of `classes`."""
    from sklearn.metrics import confusion_matrix  # imported here to keep `import visionlaunch.reports` light

    y, p = label_pair(labels, preds, classes)
    return confusion_matrix(y, p, labels=np.arange(len(classes)))


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total; classes absent from the labels keep a row of zeros instead of NaN."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def plot_confusion(labels: np.ndarray, preds: np.ndarray, classes: list[str], out_path: Path, stamp: Stamp, *,
                   superclasses: list[str] | None = None, superclass_of=None) -> Path:
    """Row-normalised confusion matrix with class names on both axes and the overall accuracy in the title.
    Above MAX_LEGEND_CLASSES classes: a heatmap with the most confused pairs listed by name, ordered by superclass
    when `superclasses` and `superclass_of` are given."""
    groups = check_groups(superclasses, superclass_of, len(classes))
    counts = confusion_counts(labels, preds, classes)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("confusion matrix needs at least one sample")
    n = len(classes)
    if n > MAX_LEGEND_CLASSES:
        return _save(_make_large_confusion_figure(counts, classes, stamp, superclasses, groups), out_path)
    norm = row_normalise(counts)
    side = min(max(4.5, 0.42 * n + 2.5), 11.0)
    title = f"Confusion matrix (rows normalised) · accuracy {np.trace(counts) / total:.2%} on {total} samples"
    with _styled_figure(stamp, title, (side + 1.0, side)) as fig:
        ax = fig.add_subplot()
        _frameless(ax)
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        names = [_short(c, 16) for c in classes]
        ticks = np.arange(n)
        ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, names)
        fontsize = 8 if n <= 10 else 6.5
        for (i, j), value in np.ndenumerate(norm):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                    color="white" if value > 0.5 else "0.25")
        return _save(fig, out_path)


LARGE_CONFUSION_PAIRS = 25  # most-confused pairs listed beside a confusion matrix too large for cell numbers


def _make_large_confusion_figure(counts: np.ndarray, classes: list[str], stamp: Stamp,
                                 superclasses: list[str] | None, superclass_of: np.ndarray | None) -> Figure:
    """Many classes (CIFAR-100): a heatmap on a square-root colour scale, so that the small off-diagonal shares
    stay visible, every class named on the true-class axis, classes ordered by superclass with the blocks
    outlined and named when a grouping is known, and the most confused pairs listed by name beside it."""
    n, total = len(classes), int(counts.sum())
    order = np.arange(n) if superclass_of is None else np.argsort(superclass_of, kind="stable")
    norm = row_normalise(counts)[np.ix_(order, order)]
    names = [_short(classes[i], 16) for i in order]
    title = (f"Confusion matrix (rows normalised, square-root colour scale) · accuracy "
             f"{np.trace(counts) / total:.2%} on {total} samples")
    if superclass_of is not None:
        title += f"\nclasses ordered by their {len(superclasses)} superclasses (outlined)"
    height = float(np.clip(0.105 * n + 2.4, 9.0, 14.0))
    with _styled_figure(stamp, title, (height + 4.6, height)) as fig:
        # A square matrix (superclass names to its right), then the pairs above a horizontal colour bar.
        grid = fig.add_gridspec(2, 2, width_ratios=(height - 0.6, 3.8), height_ratios=(30, 1))
        ax, side = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1])
        _frameless(ax)
        im = ax.imshow(norm, cmap="Blues", norm=mpl.colors.PowerNorm(0.5, vmin=0.0, vmax=1.0),
                       interpolation="nearest")
        fig.colorbar(im, cax=fig.add_subplot(grid[1, 1]), orientation="horizontal",
                     label="fraction of the true class (square-root scale)", ticks=[0, 0.05, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fontsize = float(np.clip(560 / n, 3.5, 6.5))  # about one text line per row
        step = max(1, math.ceil(n / 120))
        ticks = np.arange(0, n, step)
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=fontsize)
        ax.set_xticks(ticks, [names[i] for i in ticks], fontsize=fontsize, rotation=90)
        ax.tick_params(length=1.5, pad=1)
        if superclass_of is not None:
            grouped = np.asarray(superclass_of)[order]
            bounds = np.flatnonzero(np.diff(grouped)) + 0.5
            for b in bounds:
                ax.axhline(b, color="0.55", linewidth=0.5)
                ax.axvline(b, color="0.55", linewidth=0.5)
            # Superclass names right of the matrix, beside their block (texts of the axes: the layout keeps room).
            edges = np.concatenate([[-0.5], bounds, [n - 0.5]])
            firsts = grouped[np.r_[0, bounds + 0.5].astype(int)]
            for centre, g in zip((edges[:-1] + edges[1:]) / 2, firsts):
                ax.text(n - 0.5 + 0.008 * n, centre, _group_names([superclasses[g]])[0], ha="left", va="center",
                        fontsize=fontsize + 1, color="0.25", clip_on=False)
        _pairs_panel(side, counts, classes, superclass_of)
        return fig


def _pairs_panel(ax, counts: np.ndarray, classes: list[str], superclass_of: np.ndarray | None) -> None:
    """The largest off-diagonal cells as text: true class, predicted class, images, share of the true class."""
    ax.set_axis_off()
    pairs = _confused(counts, LARGE_CONFUSION_PAIRS)
    totals = counts.sum(axis=1)
    same_group = [superclass_of is not None and superclass_of[i] == superclass_of[j] for i, j in pairs]
    lines = [f"{_short(classes[i], 14):>14} → {_short(classes[j], 14):<14}{counts[i, j]:>4}{counts[i, j] / totals[i]:>5.0%}"
             + (" *" if same else "") for (i, j), same in zip(pairs, same_group)]
    off = counts - np.diag(np.diag(counts))
    errors = int(off.sum())
    head = "Most confused pairs\n(true → predicted, images, share of the true class)"
    if superclass_of is not None and errors:
        same = int(off[superclass_of[:, None] == superclass_of[None, :]].sum())
        head += f"\n* same superclass: {same / errors:.0%} of all {errors:,} errors stay\n  in the true class's superclass"
    ax.text(0.0, 1.0, head, transform=ax.transAxes, va="top", ha="left", fontsize=8.5, fontweight="bold")
    ax.text(0.0, 0.92, "\n".join(lines) if lines else "no test image was misclassified", transform=ax.transAxes,
            va="top", ha="left", fontsize=8, family="monospace", linespacing=1.5)


def _confused(counts: np.ndarray, k: int) -> list[tuple[int, int]]:
    """(true, predicted) of the k largest off-diagonal counts, largest first; ties in class order."""
    off = counts - np.diag(np.diag(counts))
    return [divmod(int(f), len(off)) for f in np.argsort(-off, axis=None, kind="stable")[:k] if off.flat[f] > 0]


def most_confused_pairs(labels, preds, classes: list[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal counts as (true, predicted, count), largest first; ties in class order."""
    counts = confusion_counts(labels, preds, classes)
    return [(classes[i], classes[j], int(counts[i, j])) for i, j in _confused(counts, k)]
