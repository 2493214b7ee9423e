"""The resolution: section of the run config: progressive resizing, the training crop's side changing with the epoch
(FFCV's `resolution` section of train_imagenet.py: min_res, max_res, start_ramp, end_ramp). config.py assembles it
into RunConfig; datasets/mixed_size.py's SizeRamp computes the size of each epoch.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from visionlaunch.config_section import ConfigSection


class ResolutionConfig(ConfigSection):
    """Progressive resizing of the random-resized crop of data.image_size: `start` px until epoch `start_epoch`,
    `end` px from epoch `end_epoch` on, in between the linear interpolation rounded to the nearest multiple of
    `step` (FFCV's get_resolution). Epochs are counted from 0 (the first epoch is epoch 0), as in FFCV's configs.
    The size of an epoch is a function of the epoch alone: a resumed run and any number of processes crop alike.
    Evaluation keeps its own size (data.eval_image_size)."""

    start: int | None = Field(None, ge=8, description="training crop side (px) up to start_epoch; null = no "
                                                      "progressive resizing (the crop is data.image_size)")
    end: int | None = Field(None, ge=8, description="training crop side (px) from end_epoch on; >= start")
    start_epoch: int = Field(0, ge=0, description="the last epoch at `start` px, counted from 0 (FFCV's start_ramp)")
    end_epoch: int = Field(0, ge=0, description="the first epoch at `end` px, counted from 0 (FFCV's end_ramp); "
                                                ">= start_epoch")
    step: int = Field(32, ge=1, description="sizes between the two are rounded to the nearest multiple of this")

    @model_validator(mode="after")
    def _a_ramp(self) -> ResolutionConfig:
        if (self.start is None) != (self.end is None):
            raise ValueError("resolution.start and resolution.end go together: set both (e.g. start: 160, end: 192) "
                             "or neither (null: the crop stays data.image_size)")
        if self.start is not None and self.start > self.end:
            raise ValueError(f"resolution.start ({self.start}) must not exceed resolution.end ({self.end}): the "
                             "crop grows from start to end")
        if self.start_epoch > self.end_epoch:
            raise ValueError(f"resolution.start_epoch ({self.start_epoch}) must not come after resolution.end_epoch "
                             f"({self.end_epoch})")
        return self

    @property
    def enabled(self) -> bool:
        return self.start is not None

    def ramp(self):
        """The SizeRamp this section describes, or None when progressive resizing is off."""
        if not self.enabled:
            return None
        from visionlaunch.datasets.mixed_size import SizeRamp  # torch: imported when a run builds its loaders
        return SizeRamp(self.start, self.end, self.start_epoch, self.end_epoch, self.step)
