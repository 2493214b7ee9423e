"""Cross-entropy with label smoothing, written from tensor operations (no torch.nn loss functions).

Same values and gradients as ``torch.nn.functional.cross_entropy(logits, targets, label_smoothing=eps)``:
per sample ``(1 - eps) * (-log p[target]) + eps * mean_c(-log p[c])``, averaged (or summed) over the batch.
Targets may also be class probabilities (N, C), as mixup and cutmix produce: per sample
``sum_c q[c] * (-log p[c])`` with ``q = (1 - eps) * targets + eps / C``, which is the formula above for one-hot
targets. Half and bfloat16 logits are computed in float32 and the loss is returned in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def stable_log_softmax(x: Tensor) -> Tensor:
    """log softmax over dim 1, stable for huge or infinite logits (max subtraction before exp)."""
    # The max is a constant shift: it cancels in the result, so no gradient needs to flow through it.
    m = x.detach().amax(dim=1, keepdim=True)
    # A row whose max is +-inf would give inf - inf = nan; shift by 0 there (as torch.logsumexp does).
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    shifted = x - m
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(
    logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of ``logits`` (N, C) against class indices ``targets`` (N,) or class probabilities (N, C)."""
    _check_options(label_smoothing, reduction)
    soft = targets.is_floating_point() and targets.dim() == 2
    if soft:
        _check_soft_targets(logits, targets)
    else:
        _check_inputs(logits, targets)
    x = logits.float() if logits.dtype in _LOW_PRECISION else logits
    log_probs = stable_log_softmax(x)
    if soft:
        # The logits' precision is enough: the targets only weight log-probabilities that are already float32.
        loss = -(targets.to(log_probs.dtype) * log_probs).sum(dim=1)
    else:
        loss = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * log_probs.mean(dim=1)
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(logits.dtype)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`, with the options fixed at construction."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_options(label_smoothing, reduction)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets, self.label_smoothing, self.reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


def _check_options(label_smoothing: float, reduction: str) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2 or not logits.is_floating_point() or logits.shape[1] == 0:
        raise ValueError(
            f"logits must be a floating-point tensor of shape (N, C) with C >= 1, "
            f"got dtype {logits.dtype} and shape {tuple(logits.shape)}"
        )


def _check_soft_targets(logits: Tensor, targets: Tensor) -> None:
    _check_logits(logits)
    if targets.shape != logits.shape:
        raise ValueError(f"class-probability targets must have the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(targets.shape)}")
    if torch.compiler.is_compiling() or targets.device.type != "cpu" or targets.numel() == 0:
        return
    # Rows must be distributions, else the loss is not a cross-entropy (and can go negative).
    if bool((targets < 0).any()) or not torch.allclose(targets.double().sum(1), torch.ones(len(targets),
                                                                                           dtype=torch.float64),
                                                       atol=1e-3):
        raise ValueError("class-probability targets must be >= 0 with rows summing to 1")


def _check_inputs(logits: Tensor, targets: Tensor) -> None:
    _check_logits(logits)
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape (N,) = ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices (int64) of shape (N,) or class probabilities "
                         f"of shape (N, C), got dtype {targets.dtype} and shape {tuple(targets.shape)}")
    if torch.compiler.is_compiling() or targets.numel() == 0:
        return
    num_classes = logits.shape[1]
    in_range = (targets >= 0) & (targets < num_classes)
    if targets.device.type == "cpu":
        if not bool(in_range.all()):
            bad = targets[~in_range][:5].tolist()
            raise ValueError(f"targets must be class indices in [0, {num_classes}), found {bad}")
    else:
        # On an accelerator a Python check would wait for the device every step; assert on the device instead.
        torch._assert_async(in_range.all(), f"targets must be class indices in [0, {num_classes})")
