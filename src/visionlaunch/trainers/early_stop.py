"""Early stopping: end training when the validation metric has not improved for `patience` epochs in a row.

Its state (best value, the epoch it came from, epochs without improvement, whether it stopped) is saved in every
checkpoint, so a resumed run counts on from where the interrupted one stood and a run that stopped early stays
stopped when it is resumed.
"""

from __future__ import annotations

import math


class EarlyStopping:
    def __init__(self, patience: int, metric: str = "val_acc"):
        self.patience, self.metric = patience, metric
        self.split, self.key = metric.split("_", 1)  # "val_acc" -> results["val"]["acc"]
        self.higher_is_better = self.key == "acc"
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def update(self, results: dict, epoch: int) -> bool:
        """Record epoch `epoch`'s results (1-based); True when training should stop after it."""
        if not self.enabled or self.split not in results:
            return False
        value = results[self.split][self.key]
        improved = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if improved and math.isfinite(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped_epoch = epoch
        return self.stopped

    def record(self) -> dict:
        """What the final record and the report say about it."""
        return {"metric": self.metric, "patience": self.patience, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.best, self.best_epoch = state["best"], state["best_epoch"]
            self.bad_epochs, self.stopped_epoch = state["bad_epochs"], state["stopped_epoch"]
