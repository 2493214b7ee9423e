"""Reports built from a run directory: figures now; the HTML report and run comparison read the same files."""

from .figures import (
    count_correct,
    most_confused_pairs,
    plot_confusion,
    plot_curves,
    plot_predictions,
    plot_tsne,
)
from .stamp import Stamp

__all__ = [
    "Stamp",
    "count_correct",
    "most_confused_pairs",
    "plot_confusion",
    "plot_curves",
    "plot_predictions",
    "plot_tsne",
]
