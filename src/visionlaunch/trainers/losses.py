"""Cross-entropy with label smoothing, written from tensor operations (no torch.nn loss functions).

Same values and gradients as ``torch.nn.functional.cross_entropy(logits, targets, label_smoothing=eps)``:
per sample ``(1 - eps) * (-log p[target]) + eps * mean_c(-log p[c])``, averaged over the batch.
Targets may also be class probabilities (N, C), as mixup and cutmix produce: per sample
``sum_c q[c] * (-log p[c])`` with ``q = (1 - eps) * targets + eps / C``, which is the formula above for one-hot
targets. The inputs are the batch contract's (logits (N, C); class indices in range, or rows of class
probabilities), made where the batches are made and the config is validated, so no step checks them again.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

def stable_log_softmax(x: Tensor) -> Tensor:
    """log softmax over dim 1, stable for huge or infinite logits (max subtraction before exp)."""
    # The max is a constant shift: it cancels in the result, so no gradient needs to flow through it.
    m = x.detach().amax(dim=1, keepdim=True)
    # A row whose max is +-inf would give inf - inf = nan; shift by 0 there (as torch.logsumexp does).
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    shifted = x - m
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``logits`` (N, C) against class indices ``targets`` (N,) or class probabilities (N, C)."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    log_probs = stable_log_softmax(x)
    if targets.is_floating_point() and targets.dim() == 2:
        # The logits' precision is enough: the targets only weight log-probabilities that are already float32.
        loss = -(targets.to(log_probs.dtype) * log_probs).sum(dim=1)
    else:
        loss = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * log_probs.mean(dim=1)
    return loss.mean().to(logits.dtype)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`, with the label smoothing fixed at construction."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
