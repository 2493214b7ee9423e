"""Reports built from a run directory: figures, the self-contained HTML report (`write_report`) and the comparison
page of several runs (`write_comparison`); all of them read only the run folders."""

from .compare import write_comparison
from .class_figures import count_correct, most_confused_pairs, plot_confusion, plot_predictions, plot_tsne
from .figures import Stamp, plot_comparison, plot_curves
from .html import write_report
from .predictions import save_predictions

__all__ = [
    "Stamp",
    "count_correct",
    "most_confused_pairs",
    "plot_comparison",
    "plot_confusion",
    "plot_curves",
    "plot_predictions",
    "plot_tsne",
    "save_predictions",
    "write_comparison",
    "write_report",
]
