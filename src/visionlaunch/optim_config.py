"""The optim: and schedule: sections of the run config: the optimiser, the learning rate and how it scales with the
global batch size, and the learning-rate schedule. config.py assembles them into RunConfig with the other sections;
trainers/schedules.py builds what they describe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from visionlaunch.config_section import ConfigSection

# The linear scaling rule's reference batch (Goyal et al. 2017): with optim.lr_scaling=linear, optim.lr is the
# rate for this many images per optimizer step.
LR_REFERENCE_BATCH = 256


class OptimConfig(ConfigSection):
    name: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum) or adamw")
    lr: float = Field(0.05, gt=0, description="peak learning rate: for the global batch size (train.batch_size), or "
                                              "per 256 images of it with lr_scaling=linear")
    lr_scaling: Literal["none", "linear"] = Field(
        "none", description="none: the run's peak rate is optim.lr. linear: optim.lr is the rate per 256 images and "
                            "the run's peak rate is optim.lr x train.batch_size / 256 (the linear scaling rule, Goyal "
                            "et al. 2017), so a preset keeps its recipe when the batch size changes")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum")
    nesterov: bool = Field(True, description="sgd: Nesterov momentum (when momentum > 0)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay of conv and linear weights (decoupled for adamw); "
                                                       "norm weights and biases too with decay_norm_and_bias")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adamw: decay rates of the moment estimates")
    decay_norm_and_bias: bool = Field(False, description="apply weight decay to norm weights and biases too")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="share of each target spread over all classes")
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the global gradient norm to this; null = off")

    def peak_lr(self, global_batch: int) -> float:
        """The learning rate the run peaks at, for `global_batch` images per optimizer step."""
        return self.lr * global_batch / LR_REFERENCE_BATCH if self.lr_scaling == "linear" else self.lr


class ScheduleConfig(ConfigSection):
    name: Literal["onecycle", "cosine", "constant", "triangular", "step"] = Field(
        "onecycle", description="learning rate over the optimizer steps: one-cycle, cosine or constant (with "
                                "warm-up), or FFCV's ImageNet schedules triangular and step (train_imagenet.py's "
                                "cyclic and step: the rate is set at every epoch boundary and moves linearly between "
                                "two boundaries within the epoch)")
    pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle: fraction of steps spent warming up")
    div_factor: float = Field(25.0, gt=0, description="onecycle: initial lr = lr / div_factor")
    final_div_factor: float = Field(1e4, gt=0, description="onecycle: final lr = initial lr / final_div_factor")
    warmup_epochs: float = Field(0.0, ge=0, description="cosine/constant/step: linear warm-up length")
    min_lr: float = Field(0.0, ge=0, description="cosine: lr at the end")
    peak_epoch: float = Field(2.0, gt=0, description="triangular: the rate rises linearly from lr / 10^4 at epoch 0 "
                                                     "to lr at this epoch, then falls linearly to 0 at the end of "
                                                     "training (FFCV's lr_peak_epoch); below train.epochs")
    step_ratio: float = Field(0.1, gt=0, le=1, description="step: the rate is multiplied by this every step_epochs "
                                                           "epochs (FFCV's step_ratio)")
    step_epochs: int = Field(30, ge=1, description="step: epochs between two multiplications by step_ratio (FFCV's "
                                                   "step_length); the last epoch ends at 0, as FFCV's does")
