"""Measuring a model: the running totals (loss, top-1, top-5, samples) that training and evaluation share, the
evaluation of a loader, test-time augmentation and the test predictions the figures and reports use.

Test-time augmentation (`train.tta_flip`) averages the logits of an image and of its mirror image. Horizontal
flips are part of the training augmentation for natural images, so the mirror image is an equally valid view;
averaging both usually adds a few tenths of a percent of accuracy at twice the evaluation cost. Off for digits,
which are not mirror-symmetric.
"""

from __future__ import annotations

import torch
from torch import nn


TOP_KS = (1, 5)  # the accuracies every evaluation reports: top-1 and top-5


def ranked_classes(logits: torch.Tensor, k: int = max(TOP_KS)) -> torch.Tensor:
    """The k highest-scoring classes of each row, best first (k clipped to the class count). The one ranking
    that both the accuracy and the test predictions use: ties, common in bf16 logits, are broken the same way."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = TOP_KS) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k clipped to the class count)."""
    hit = ranked_classes(logits, max(ks)).eq(labels[:, None])
    return [hit[:, :k].any(dim=1).sum() for k in ks]


class Totals:
    """Sums of loss x samples, top-1 hits, top-5 hits and samples, kept on the device in float64 so that adding a
    batch never waits for the device. Each rank sums its own disjoint shard; `result` adds the ranks up."""

    def __init__(self, device: torch.device, sums: torch.Tensor | None = None):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device) if sums is None else sums.to(device)
        # Sample counts as (one on the device) * n: torch.tensor(n, device=cuda) would be a blocking copy per batch.
        self._one = torch.ones((), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch: its mean loss, its logits and its (unmixed) labels."""
        top1, top5 = topk_correct(logits.detach(), labels)
        n = len(labels)
        self.sums += torch.stack([loss.detach().double() * n, top1.double(), top5.double(), self._one * n])

    def result(self, accelerator) -> dict:
        """Mean loss, top-1 and top-5 accuracy and the sample count over every rank (a collective)."""
        loss_sum, top1, top5, n = accelerator.reduce(self.sums, reduction="sum").tolist()
        n = max(n, 1)
        return {"loss": loss_sum / n, "acc": top1 / n, "acc5": top5 / n, "n": int(n)}


def tta_logits(model: nn.Module, images: torch.Tensor, flip: bool) -> torch.Tensor:
    """``model(images)``, or with ``flip`` the mean of the logits of the batch and of its left-right mirror."""
    logits = model(images)
    if not flip:
        return logits
    return (logits + model(images.flip(3))) / 2


@torch.no_grad()
def evaluate(model, loader, pipeline, accelerator, criterion, tta_flip: bool = False) -> dict:
    """Loss and top-1/top-5 accuracy over every sample of `loader`, summed across processes (each rank holds a
    disjoint, untrimmed shard, so every sample counts exactly once)."""
    model.eval()
    totals = Totals(accelerator.device)
    for images, labels in loader:
        with accelerator.autocast():
            logits = tta_logits(model, pipeline.eval(images), tta_flip)
        totals.add(criterion(logits.float(), labels), logits, labels)
    return totals.result(accelerator)


@torch.no_grad()
def predict(model, images: torch.Tensor, pipeline, accelerator, batch_size: int = 1000, tta_flip: bool = False
            ) -> torch.Tensor:
    """The predicted class of every image (uint8 NCHW on the CPU), as the test accuracy counts them: under the
    same autocast as `evaluate` and with the same tie-breaking, so a bf16/fp16 run's figures agree with its
    reported accuracy."""
    model.eval()
    preds = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size].to(accelerator.device)
        with accelerator.autocast():
            logits = tta_logits(model, pipeline.eval(batch), tta_flip)
        preds.append(ranked_classes(logits)[:, 0].cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def epoch_line(epoch: int, epochs: int, results: dict, elapsed: float) -> str:
    """The log line of a finished epoch (counted from 1)."""
    parts = [f"epoch {epoch:>3}/{epochs}"]
    parts += [f"{split} loss {results[split]['loss']:.4f} acc {100 * results[split]['acc']:6.2f}%"
              for split in ("train", "val", "test", "test_ema") if split in results]
    parts += [f"{results['train']['images_per_s']:,.0f} img/s", f"{elapsed:,.0f} s"]
    return " | ".join(parts)
