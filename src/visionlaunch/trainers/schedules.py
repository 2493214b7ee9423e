"""Optimisers and learning-rate schedules built from the config.

The scheduler is stepped by the trainer once per optimizer step and is NOT passed through
`accelerator.prepare()`: Accelerate's wrapper steps it once per process, which would run a OneCycle schedule
`num_processes` times too fast. Sized by the per-process step count, it is then the same
schedule whatever the process count.

Every schedule is a factor of the peak rate, a function of the optimizer step alone, so a resumed run continues it
exactly. The peak rate is optim.lr, or optim.lr x global batch / 256 with optim.lr_scaling=linear (OptimConfig.peak_lr).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from visionlaunch.config import OptimConfig, ScheduleConfig


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Weight decay on weights of convs and linears only, unless asked otherwise: decaying BatchNorm scales
    and biases only fights the normalisation and costs accuracy."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """lr: the peak rate, which the schedule's factors multiply (a run passes cfg.peak_lr(global batch)); default
    cfg.lr."""
    lr = cfg.lr if lr is None else lr
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)


def _cos(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * min(1.0, max(0.0, fraction))) + 1)


def onecycle_factor(cfg: ScheduleConfig, total: int):
    """OneCycle (cosine annealing, as PyTorch's OneCycleLR with cycle_momentum=False) as a factor of the peak rate:
    from 1/div_factor up to 1 at the step nearest pct_start x total - 1, then down to 1/(div_factor x
    final_div_factor) at the last step. PyTorch's class divides by zero when the warm-up is one step (a short run)
    and, with a fractional peak step, may skip the peak rate altogether; here the peak is a whole step, so every
    positive step count trains and runs one step at optim.lr (a warm-up under one step starts at the peak)."""
    start, end = 1 / cfg.div_factor, 1 / (cfg.div_factor * cfg.final_div_factor)
    top = max(0, min(round(cfg.pct_start * total) - 1, total - 2))  # the step at the peak; the last one ends low

    def factor(step: int) -> float:
        if step <= top:
            return _cos(start, 1.0, step / top) if top > 0 else 1.0
        return _cos(1.0, end, (step - top) / max(total - 1 - top, 1e-12))

    return factor


# FFCV's triangular schedule starts at this fraction of the peak rate (train_imagenet.py's get_cyclic_lr).
TRIANGULAR_START = 1e-4


def epoch_factor(cfg: ScheduleConfig, epochs: int):
    """FFCV's ImageNet schedules as the factor of the peak rate at the start of each epoch (train_imagenet.py's
    get_cyclic_lr and get_step_lr); epoch `epochs` is the end of training, where both reach 0."""
    def triangular(epoch: int) -> float:
        if epoch >= epochs:
            return 0.0
        if epoch <= cfg.peak_epoch:
            return TRIANGULAR_START + (1 - TRIANGULAR_START) * epoch / cfg.peak_epoch
        return (epochs - epoch) / (epochs - cfg.peak_epoch)

    def step(epoch: int) -> float:
        return 0.0 if epoch >= epochs else cfg.step_ratio ** (epoch // cfg.step_epochs)

    return triangular if cfg.name == "triangular" else step


def ffcv_factor(cfg: ScheduleConfig, steps_per_epoch: int, epochs: int):
    """Per optimizer step, as FFCV's train loop: within epoch e, step i of n runs at the rate that goes linearly
    from the epoch factor of e (at i = 0) towards that of e + 1 (at i = n), so the triangular schedule is
    piecewise linear in the step and each drop of the step schedule is spread over the epoch before it."""
    at_epoch = epoch_factor(cfg, epochs)
    steps_per_epoch = max(1, steps_per_epoch)

    def factor(step: int) -> float:
        epoch, i = divmod(step, steps_per_epoch)
        start, end = at_epoch(epoch), at_epoch(epoch + 1)
        return start + (end - start) * i / steps_per_epoch

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, peak_lr: float,
                    steps_per_epoch: int, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, steps_per_epoch * epochs)
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, onecycle_factor(cfg, total))
    if cfg.name == "triangular":  # its rise is its warm-up
        return torch.optim.lr_scheduler.LambdaLR(optimizer, ffcv_factor(cfg, steps_per_epoch, epochs))
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr / peak_lr
    step_factor = ffcv_factor(cfg, steps_per_epoch, epochs)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "step":
            return step_factor(step)
        return _cos(1.0, floor, (step - warmup) / max(1, total - warmup - 1))  # min_lr on the last step

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
