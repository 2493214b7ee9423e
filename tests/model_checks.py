"""Checks shared by the model tests: does a model honour the contract the trainer and reports rely on, and can a
freshly built model memorise one tiny random batch?"""

from __future__ import annotations

import inspect
import typing

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


def check_model_contract(model: nn.Module, num_classes: int) -> None:
    """The contract of every registered model: its final nn.Linear is `.classifier` (num_classes outputs) and
    `.feature_dim` is that layer's in_features (capture_features, weights files and reports rely on both)."""
    classifier = getattr(model, "classifier", None)
    assert isinstance(classifier, nn.Linear) and classifier.out_features == num_classes, \
        f"a model must expose its final nn.Linear({num_classes} outputs) as .classifier"
    assert getattr(model, "feature_dim", None) == classifier.in_features, \
        "a model must set .feature_dim to classifier.in_features"


def check_builder_signature(builder) -> None:
    """The contract of every builder: `(in_shape, num_classes, *, arg: type = default, ...)`; the registry reads
    the keyword arguments' annotations and defaults to validate model.args and to print help."""
    params = list(inspect.signature(builder).parameters.values())
    assert [p.name for p in params[:2]] == ["in_shape", "num_classes"], "a builder must start with in_shape, num_classes"
    hints = typing.get_type_hints(builder, include_extras=True)
    for p in params[2:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty, \
            f"argument {p.name!r} must be keyword-only with a default"
        assert p.name in hints, f"argument {p.name!r} needs a type annotation"
