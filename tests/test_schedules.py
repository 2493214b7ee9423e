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


@pytest.mark.parametrize("total", range(1, 13))
@pytest.mark.parametrize("pct_start", [0.05, 0.25, 0.5, 0.95])
def test_onecycle_works_for_any_positive_step_count(total, pct_start):
    """PyTorch's OneCycleLR divides by zero when pct_start x steps <= 1 (train.max_steps_per_epoch=2
    train.epochs=2 crashed); ours peaks at optim.lr and decays for every step count."""
    lrs = _lrs(ScheduleConfig(name="onecycle", pct_start=pct_start), steps_per_epoch=total, epochs=1)
    assert len(lrs) == total and all(0 < lr <= 0.4 + 1e-12 for lr in lrs[:-1])
    assert 0 <= lrs[-1] < 0.4 if total > 1 else lrs == [0.4]  # a single step runs at the peak
    assert max(lrs) == pytest.approx(0.4, rel=1e-12)
    peak = lrs.index(max(lrs))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # never rises after the peak


@pytest.mark.parametrize("total,pct_start", [(40, 0.25), (8, 0.5), (1000, 0.3)])
def test_onecycle_is_pytorchs_when_the_peak_is_a_whole_step(total, pct_start):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(lr=0.4))
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total, pct_start=pct_start,
                                              div_factor=25, final_div_factor=1e4, cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    ours = _lrs(ScheduleConfig(name="onecycle", pct_start=pct_start), steps_per_epoch=total, epochs=1)
    assert ours == pytest.approx(expected, rel=1e-12)
