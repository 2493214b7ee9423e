"""A check shared by the model tests: can a freshly built model memorise one tiny random batch?"""

from __future__ import annotations

import torch
from torch import nn


def tiny_batch_accuracy(model: nn.Module, in_shape: tuple[int, int, int], lr: float, steps: int) -> float:
    """Train `model` with Adam on 32 random images with 10 labels for `steps` steps; its accuracy on them after."""
    images, labels = torch.randn(32, *in_shape), torch.arange(32) % 10
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    with torch.no_grad():
        return (model.eval()(images).argmax(1) == labels).float().mean().item()
