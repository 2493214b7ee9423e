"""The run's curves (loss, accuracy; several runs or settings overlaid) and the style, stamp and atomic saving
every figure shares (t-SNE, predictions and the confusion matrix are in `class_figures.py`). Figures use
matplotlib's object API on the Agg canvas: no pyplot, so no global figure list to leak and no display needed."""

from __future__ import annotations

import datetime as dt
import getpass
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from visionlaunch.atomic import atomic_write
from visionlaunch.runfolder import figure_file

from .analysis import SPLITS, epoch_rows, row_value

DPI = 120
MAX_LEGEND_CLASSES = 20  # above this, t-SNE drops the per-class legend and the confusion matrix its cell text

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.titlesize": 11,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
}
_STAMP_STRIP_IN = 0.25  # inches kept free at the bottom of every figure for the stamp
_SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
_RIGHT, _WRONG = "#1a7f37", "#c62828"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Stamp:
    """The mark every figure carries: who made it (report.ident, default the user name), on which day
    ("YYYY-MM-DD") and for which run. The date is passed in rather than read from the clock so that a report
    rebuilt later keeps the run's date."""

    ident: str
    date: str
    run_name: str = ""

    def __post_init__(self) -> None:
        if not self.ident.strip():
            raise ValueError("Stamp.ident is empty; set report.ident in the config (it defaults to the user name)")
        if not _DATE.fullmatch(self.date):
            raise ValueError(f"Stamp.date must be 'YYYY-MM-DD', got {self.date!r}")
        dt.date.fromisoformat(self.date)  # rejects impossible dates such as 2024-02-30

    def text(self) -> str:
        """'<ident> · <date>', followed by ' · <run_name>' when a run name was given."""
        return " · ".join(part for part in (self.ident.strip(), self.date, self.run_name.strip()) if part)

    @classmethod
    def today(cls, ident: str = "", run_name: str = "") -> Stamp:
        """A stamp dated today; an empty ident falls back to the login name."""
        if not ident:
            try:
                ident = getpass.getuser()
            except (KeyError, OSError):  # a uid without a passwd entry (containers): the figure still gets a stamp
                ident = "unknown"
        return cls(ident=ident, date=dt.date.today().isoformat(), run_name=run_name)


# ---------------------------------------------------------------------------------------------------- style + save


@contextmanager
def _styled_figure(stamp: Stamp, title: str, figsize: tuple[float, float]) -> Iterator[Figure]:
    """The one place figure style lives: rc settings, layout, title and the stamp in the bottom-right corner."""
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        strip = _STAMP_STRIP_IN / figsize[1]
        fig.get_layout_engine().set(rect=(0.0, strip, 1.0, 1.0 - strip))
        fig.suptitle(title)
        fig.text(0.995, 0.3 * strip, stamp.text(), ha="right", va="bottom", fontsize=7, color="0.4")
        yield fig


def _save(fig: Figure, path: Path) -> Path:
    """Write a PNG via a temporary file in the same folder, so a crash never leaves a half-written image."""
    path = Path(path)
    with atomic_write(path) as tmp, mpl.rc_context(_STYLE):  # ticks are created at draw time: style them too
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _placeholder(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.45")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _frameless(ax) -> None:
    """No grid or spines: for images and embeddings, whose frame carries no scale."""
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------------- curves


def epoch_series(records: Iterable, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split present, (epochs, values) of the epoch rows (`epoch_rows`) whose record carries a finite `key`."""
    rows = epoch_rows(records)
    series = {}
    for split in SPLITS:
        points = [(row["epoch"], value) for row in rows if (value := row_value(row, split, key)) is not None]
        if points:
            series[split] = tuple(np.array(column) for column in zip(*points))
    return series


def _epoch_axes(ax, ylabel: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _line(ax, split: str, epochs: np.ndarray, values: np.ndarray, label: str) -> None:
    marker = "o" if len(epochs) <= 40 else None  # dots help with few epochs, clutter with many
    ax.plot(epochs, values, marker=marker, color=_SPLIT_COLORS[split], label=label)


_CURVES = {  # metrics.jsonl key -> figure stem, title, y label
    "loss": ("loss", "Loss per epoch", "loss"),
    "acc": ("accuracy", "Top-1 accuracy per epoch", "top-1 accuracy (%)"),
}


def _make_curve_figure(records: list, stamp: Stamp, key: str) -> Figure:
    """One line per split: loss (log scale when it spans decades) or accuracy in %, starred at val's and test's best."""
    series = epoch_series(records, key)
    what, title, ylabel = _CURVES[key]
    with _styled_figure(stamp, title, (6.4, 4.2)) as fig:
        ax = fig.add_subplot()
        _epoch_axes(ax, ylabel)
        if not series:
            logged = any(isinstance(r, dict) and r.get("kind") == "epoch" and r.get("split") in SPLITS
                         for r in records)
            _placeholder(ax, f"no {what} in the epoch records" if logged else "no epoch finished yet")
            return fig
        for split, (epochs, values) in series.items():
            if key == "acc":
                values = 100.0 * values  # metrics.jsonl stores fractions
            if key == "loss" or split == "train":
                last = f"{values[-1]:.4g}" if key == "loss" else f"{values[-1]:.2f}%"
                _line(ax, split, epochs, values, f"{split} (last {last})")
                continue
            best = int(np.argmax(values))
            _line(ax, split, epochs, values, f"{split} (best {values[best]:.2f}% @ epoch {epochs[best]:g})")
            ax.plot(epochs[best], values[best], marker="*", markersize=13, color=_SPLIT_COLORS[split],
                    markeredgecolor="black", markeredgewidth=0.6, zorder=5)
        values = np.concatenate([v for _, v in series.values()])
        if key == "loss" and values.min() > 0 and values.max() / values.min() > 100:  # decades read better in log
            ax.set_yscale("log")
        ax.legend()
        return fig


def plot_curves(records: list[dict], out_dir: Path, stamp: Stamp) -> list[Path]:
    """Write out_dir/loss.png and out_dir/accuracy.png from the parsed lines of metrics.jsonl."""
    records = list(records)
    return [_save(_make_curve_figure(records, stamp, key), figure_file(out_dir, _CURVES[key][0])) for key in _CURVES]


# ---------------------------------------------------------------------------------------------------- several runs


def mean_curve(runs: list[list[dict]], split: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(epochs, mean, std) of one split's `key` over several runs (seeds), at every epoch that some run logged;
    std is the sample standard deviation (0 where only one run reached the epoch). None when no run has it."""
    points: dict[float, list[float]] = {}
    for records in runs:
        for epoch, value in zip(*epoch_series(records, key).get(split, ((), ()))):  # (epochs, values) of that run
            points.setdefault(float(epoch), []).append(float(value))
    if not points:
        return None
    epochs = np.array(sorted(points))
    values = [np.array(points[e]) for e in epochs]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return epochs, mean, std


def _run_colors(n: int) -> list:
    if n <= 20:
        return list(mpl.colormaps["tab10" if n <= 10 else "tab20"].colors[:n])
    return [mpl.colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def _make_overlay_figure(groups: list[tuple[str, list[list[dict]]]], stamp: Stamp, title: str, panels: tuple,
                         figsize: tuple[float, float], *, label_width: int, empty: str, legend_title: str) -> Figure:
    """Panels of (metric, split, y label, title) side by side, one colour per group of runs: its mean per epoch,
    with a band of ± one standard deviation where it has several runs. Groups without test records fall back to
    validation (dashed), so runs without a test split still compare."""
    colors = _run_colors(len(groups))
    with _styled_figure(stamp, title, figsize) as fig:
        axes = fig.subplots(1, len(panels))
        for ax, (key, split, ylabel, panel) in zip(axes, panels):
            _epoch_axes(ax, ylabel)
            drawn, used_val = 0, False
            for (label, runs), color in zip(groups, colors):
                curve, dashed = mean_curve(runs, split, key), False
                if curve is None and split == "test":
                    curve, dashed = mean_curve(runs, "val", key), True
                if curve is None:
                    continue
                used_val |= dashed
                epochs, mean, std = curve
                scale = 100.0 if key == "acc" else 1.0
                ax.plot(epochs, scale * mean, color=color, marker="o" if len(epochs) <= 40 else None,
                        linestyle="--" if dashed else "-", label=_short(label, label_width))
                if std.any():
                    ax.fill_between(epochs, scale * (mean - std), scale * (mean + std), color=color, alpha=0.15,
                                    linewidth=0)
                drawn += 1
            ax.set_title(panel + (" (dashed: validation)" if used_val else ""))
            if not drawn:
                _placeholder(ax, empty)
        handles, labels = next((h for h in map(Axes.get_legend_handles_labels, axes) if h[0]), ([], []))
        if handles:
            fig.legend(handles, labels, loc="outside right upper", title=legend_title)
        return fig


def plot_comparison(runs: list[tuple[str, list[dict]]], out_path: Path, stamp: Stamp) -> Path:
    """Test accuracy, train loss and test loss per epoch of several runs, given as (label, parsed metrics.jsonl
    records) pairs, one colour per run."""
    panels = (("acc", "test", "top-1 accuracy (%)", "Test accuracy"), ("loss", "train", "loss", "Train loss"),
              ("loss", "test", "loss", "Test loss"))
    fig = _make_overlay_figure([(label, [records]) for label, records in runs], stamp,
                               f"{len(runs)} runs compared, per epoch", panels, (13.0, 4.4), label_width=28,
                               empty="no epoch records", legend_title="run")
    return _save(fig, out_path)


def plot_ablation_curves(groups: list[tuple[str, list[list[dict]]]], out_path: Path, stamp: Stamp, title: str) -> Path:
    """Test accuracy and test loss per epoch of an ablation's settings, each the mean over its seeds, given as
    (label, [records of each seed])."""
    panels = (("acc", "test", "top-1 accuracy (%)", "Test accuracy"), ("loss", "test", "loss", "Test loss"))
    fig = _make_overlay_figure(groups, stamp, title, panels, (11.5, 4.4), label_width=36,
                               empty="no finished run with epoch records", legend_title="setting (finished seeds)")
    return _save(fig, out_path)
