"""Schedules and optimiser groups: OneCycle peaks at optim.lr and ends near zero; cosine warms up then decays;
weight decay skips norm weights and biases."""

import pytest
import torch
from torch import nn

from visionlaunch.config import OptimConfig, ScheduleConfig
from visionlaunch.trainers.schedules import build_optimizer, build_scheduler


def _lrs(schedule: ScheduleConfig, steps_per_epoch=10, epochs=4, lr=0.4):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(lr=lr))
    sched = build_scheduler(opt, schedule, lr, steps_per_epoch, epochs)
    seen = []
    for _ in range(steps_per_epoch * epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_onecycle_peaks_at_lr_and_ends_low():
    lrs = _lrs(ScheduleConfig(name="onecycle", pct_start=0.25, div_factor=25, final_div_factor=1e4))
    assert max(lrs) == pytest.approx(0.4, rel=1e-3)
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert lrs.index(max(lrs)) == pytest.approx(0.25 * 40, abs=1)
    assert lrs[-1] < 0.4 / 25 / 100


def test_cosine_warms_up_then_decays_to_min_lr():
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.004))
    assert lrs[0] == pytest.approx(0.04)          # 1/10 of the warm-up
    assert lrs[9] == pytest.approx(0.4)           # end of warm-up
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never increases
    assert lrs[-1] == pytest.approx(0.004, rel=0.05)


def test_constant_schedule():
    assert set(_lrs(ScheduleConfig(name="constant"))) == {0.4}


def test_weight_decay_skips_biases_and_norm_weights():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    by_decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert by_decay[0.1] == 4 * 9 + 4 * 2         # conv and linear weights
    assert by_decay[0.0] == 4 + 4 + 4 + 2         # conv bias, BN weight and bias, linear bias
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1, decay_norm_and_bias=True))
    assert len(opt.param_groups) == 1


def test_adamw_and_sgd_nesterov():
    model = nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, OptimConfig(name="adamw", lr=1e-3)), torch.optim.AdamW)
    sgd = build_optimizer(model, OptimConfig(name="sgd"))
    assert sgd.param_groups[0]["nesterov"] is True
