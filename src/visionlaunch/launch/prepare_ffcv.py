"""`visionlaunch prepare ffcv`: the .beton files of a config's data, planned as `train` plans them: a training split
that fits in memory is decoded and written from its tensor, one that does not is written streaming from its files
(ffcv_builders/stream.py), so the files are the ones `train` with data.loader=ffcv will look for."""

from __future__ import annotations

from pathlib import Path

from visionlaunch.config import DataConfig
from visionlaunch.ffcv_builders import require_ffcv
from visionlaunch.ffcv_builders.prepare import ensure_betons
from visionlaunch.trainers.data import prepare_data
from visionlaunch.trainers.memory_plan import plan_residency


def prepare_ffcv(data_cfg: DataConfig, *, overwrite: bool = False, log=print) -> dict[str, Path]:
    """Write (or check) the .beton file of every split; the data note goes to stdout, the plan and progress to
    `log`. Returns split -> file."""
    require_ffcv("`visionlaunch prepare ffcv`")
    ffcv_cfg = data_cfg.model_copy(update={"loader": "ffcv"})

    def plan(train, test_bytes: int) -> bool:
        planned = plan_residency(ffcv_cfg, train, test_bytes, 1, loader_set=True)
        for line in planned.lines:
            log(line)
        return planned.out_of_core

    bundle = prepare_data(data_cfg, plan=plan)
    print(bundle.note)
    return ensure_betons({"train": bundle.train, "val": bundle.val, "test": bundle.test}, bundle.name, data_cfg,
                         overwrite=overwrite, log=log)
