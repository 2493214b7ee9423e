"""Exponential moving average of the weights: ema = decay * ema + (1 - decay) * weights after every optimizer
step. Floating-point parameters and buffers are averaged in float32 (bf16 weights would round the tiny updates
away); integer buffers (BatchNorm's step counter) are copied. Every rank holds the same weights, so every rank
keeps the same EMA and no communication is needed."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                      for k, v in model.state_dict().items()}
        # An evaluation copy with the same architecture; it gets the averaged weights before each evaluation.
        self._shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        floats_ema, floats_now = [], []
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                floats_ema.append(self.state[k])
                floats_now.append(v.detach().float())
            else:
                self.state[k].copy_(v)
        torch._foreach_lerp_(floats_ema, floats_now, 1.0 - self.decay)
        self.updates += 1

    def model(self) -> nn.Module:
        """The evaluation copy, loaded with the current averaged weights."""
        current = self._shadow.state_dict()
        self._shadow.load_state_dict({k: v.to(current[k].dtype) for k, v in self.state.items()})
        return self._shadow

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        if missing := set(self.state) ^ set(saved["state"]):
            raise ValueError(f"EMA state does not fit the model (keys differ: {sorted(missing)[:5]})")
        for k, v in saved["state"].items():
            self.state[k].copy_(v)
        self.updates = int(saved["updates"])
