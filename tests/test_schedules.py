"""Schedules and optimiser groups: OneCycle peaks at optim.lr and ends near zero; cosine warms up then decays;
FFCV's triangular and step schedules step by step as FFCV's train loop; the linear lr scaling rule; weight decay
skips norm weights and biases."""

import numpy as np
import pytest
import torch
from torch import nn

from tests.run_helpers import FCN
from visionlaunch.config import OptimConfig, ScheduleConfig, load_config
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.runfolder import read_metrics
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


# --- FFCV's ImageNet schedules --------------------------------------------------------------------------------


def _ffcv_lrs(epoch_lr, steps_per_epoch, epochs):
    """FFCV's train loop (train_imagenet.py), written out as the oracle: per epoch, the rates of its steps go
    linearly from epoch_lr(epoch) towards epoch_lr(epoch + 1)."""
    out = []
    for epoch in range(epochs):
        out += list(np.interp(np.arange(steps_per_epoch), [0, steps_per_epoch], [epoch_lr(epoch), epoch_lr(epoch + 1)]))
    return out


@pytest.mark.parametrize("peak_epoch", [2, 1, 3.5])
def test_triangular_is_ffcvs_cyclic_schedule(peak_epoch):
    lr, epochs, steps = 1.7, 6, 8
    lrs = _lrs(ScheduleConfig(name="triangular", peak_epoch=peak_epoch), steps_per_epoch=steps, epochs=epochs, lr=lr)
    # FFCV's get_cyclic_lr: np.interp over [0, lr_peak_epoch, epochs] -> [1e-4 lr, lr, 0].
    expected = _ffcv_lrs(lambda e: np.interp([e], [0, peak_epoch, epochs], [1e-4 * lr, lr, 0])[0], steps, epochs)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lrs[0] == pytest.approx(1.7e-4)
    if peak_epoch == 2:  # a whole epoch: the peak rate is one step's, and the rest is linear in the step
        assert max(lrs) == pytest.approx(lr) and lrs.index(max(lrs)) == 2 * steps
        assert lrs[3 * steps] == pytest.approx(lr * 3 / 4)  # a quarter of the way down from epoch 2 to 6
    assert lrs[-1] == pytest.approx(lr / (epochs - peak_epoch) / steps)  # one step short of 0


def test_step_is_ffcvs_step_schedule():
    lr, epochs, steps = 0.5, 7, 4
    lrs = _lrs(ScheduleConfig(name="step", step_ratio=0.1, step_epochs=3), steps_per_epoch=steps, epochs=epochs,
               lr=lr)
    # FFCV's get_step_lr: lr x ratio^(epoch // length), 0 from the end of training on.
    expected = _ffcv_lrs(lambda e: 0 if e >= epochs else 0.1 ** (e // 3) * lr, steps, epochs)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert set(lrs[:2 * steps]) == {0.5}                               # epochs 1-2: the full rate
    assert lrs[2 * steps + 2] == pytest.approx(0.5 - 0.45 * 2 / 4)     # epoch 3 moves towards 0.05
    assert lrs[3 * steps:5 * steps] == pytest.approx([0.05] * 2 * steps)
    assert lrs[-1] == pytest.approx(0.005 / steps)                     # the last epoch runs down to 0


def test_step_schedule_with_a_warm_up():
    lrs = _lrs(ScheduleConfig(name="step", step_epochs=2, warmup_epochs=1), steps_per_epoch=4, epochs=4, lr=0.4)
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert lrs[4:8] == pytest.approx([0.4, 0.4 - 0.09, 0.4 - 0.18, 0.4 - 0.27])


@pytest.mark.parametrize("schedule", [ScheduleConfig(name="triangular", peak_epoch=1.5),
                                      ScheduleConfig(name="step", step_epochs=1, warmup_epochs=0.5)])
def test_a_restored_scheduler_continues_the_same_rates(schedule):
    """What a checkpoint holds (the scheduler's state_dict) is enough: a rebuilt scheduler that loads it after step
    k, mid-epoch, continues with the uninterrupted run's rates."""
    whole = _lrs(schedule, steps_per_epoch=6, epochs=3)
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(lr=0.4))
    sched = build_scheduler(opt, schedule, 0.4, 6, 3)
    for _ in range(8):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt = build_optimizer(model, OptimConfig(lr=0.4))
    sched = build_scheduler(opt, schedule, 0.4, 6, 3)
    sched.load_state_dict(state)
    opt.param_groups[0]["lr"] = sched.get_last_lr()[0]  # as the optimizer's own state_dict restores it
    rest = []
    for _ in range(10):
        rest.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rest == pytest.approx(whole[8:], rel=1e-12)


def test_linear_lr_scaling_rule():
    # optim.lr_scaling=linear: optim.lr is per 256 images; the run peaks at lr x global batch / 256.
    assert OptimConfig(lr=0.5).peak_lr(1024) == 0.5
    assert OptimConfig(lr=0.125, lr_scaling="linear").peak_lr(1024) == 0.5   # FFCV rn18: 0.5 at batch 1024
    assert OptimConfig(lr=0.1, lr_scaling="linear").peak_lr(4096) == pytest.approx(1.6)
    cfg = load_config(None, ["optim.lr_scaling=linear", "optim.lr=0.2", "train.batch_size=64"])
    assert cfg.optim.peak_lr(cfg.train.batch_size) == pytest.approx(0.05)
    with pytest.raises(VisionlaunchError, match="lr_scaling"):
        load_config(None, ["optim.lr_scaling=sqrt"])


def test_triangular_peak_must_come_before_the_end():
    assert load_config(None, ["schedule.name=triangular", "train.epochs=3"]).schedule.peak_epoch == 2
    with pytest.raises(VisionlaunchError, match=r"schedule.peak_epoch \(2\) must come before the end"):
        load_config(None, ["schedule.name=triangular", "train.epochs=2"])
    load_config(None, ["schedule.name=cosine", "train.epochs=2"])  # only the triangular schedule has a peak epoch


@pytest.mark.parametrize("schedule, overrides", [
    ("triangular", ["schedule.peak_epoch=1", "optim.lr_scaling=linear", "optim.lr=0.4"]),
    ("step", ["schedule.step_epochs=1", "schedule.step_ratio=0.5", "optim.lr=0.1"]),
])
def test_a_real_run_follows_the_schedule(tmp_path, shared_data, schedule, overrides):
    """MNIST (1,000 images, 10 steps an epoch, 3 epochs) through the command line: the run finishes, learns, and
    every step's logged rate is the schedule's."""
    args = ["train", "--config", str(FCN), f"data.root={shared_data}", f"output.dir={tmp_path}", "output.name=run",
            "data.train_subset=1000", "data.test_subset=500", "data.val_size=0", "train.epochs=3",
            "train.batch_size=100", "train.progress=false", "report.figures=false", "train.log_every=1",
            f"schedule.name={schedule}", *overrides]
    assert main(args) == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    logged = [r["lr"] for r in sorted((r for r in records if r["kind"] == "step"), key=lambda r: r["step"])]
    cfg = load_config(FCN, args[3:])
    peak = cfg.optim.peak_lr(100)
    assert peak == (0.4 * 100 / 256 if schedule == "triangular" else 0.1)
    assert logged == pytest.approx(_lrs(cfg.schedule, steps_per_epoch=10, epochs=3, lr=peak), rel=1e-9)
    final = [r for r in records if r["kind"] == "final"][0]
    assert final["test_acc"] > 0.5  # ten classes: chance is 0.1
