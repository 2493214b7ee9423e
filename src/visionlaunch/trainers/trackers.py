"""Experiment trackers beside metrics.jsonl (which is always written), all through Accelerate's tracker API:
Weights & Biases (`tracker.name=wandb`), TensorBoard (`tensorboard`: Accelerate's TensorBoardTracker, event files in
<run>/tensorboard/<run name>/) and a CSV file (`csv`: <run>/metrics.csv, a tracker of our own, since Accelerate has
none), or several at once (`tracker.name=[tensorboard, csv]`). Every tracker gets the same scalars: the step
and epoch records of metrics.jsonl (step/loss, val/acc, ...) against the global optimizer step.

W&B also gets the resolved config and the run identity, the figures as images, the model summary as a file and
the final record in its run summary. Only the main process talks to a tracker (Accelerate's rule too).

Offline mode (`tracker.mode=offline` or WANDB_MODE=offline) needs neither network nor key: the run is written under
<dir>/wandb/offline-run-*/ and `wandb sync <that folder>` uploads it later. Online mode without a key would stop
inside wandb.init (or hang ~100 s on a machine without network), so that case is refused before training.
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from urllib.parse import urlparse

from accelerate.tracking import GeneralTracker
from accelerate.utils import is_tensorboard_available, is_wandb_available

from visionlaunch import runfolder as rf
from visionlaunch.atomic import atomic_write
from visionlaunch.config import TrackerConfig, flatten
from visionlaunch.errors import VisionlaunchError

def wandb_mode(cfg: TrackerConfig) -> str:
    mode = cfg.mode or os.environ.get("WANDB_MODE") or "online"
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)  # W&B's older names


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:  # wandb's own .netrc reader knows its search path; it is internal, so fall back to the stdlib
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
        return bool(read_netrc_auth(host=base_url))
    except Exception:
        pass
    try:
        import netrc
        return netrc.netrc(os.environ.get("NETRC")).authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_tracker(cfg: TrackerConfig) -> None:
    """Refuse, before anything is written, a tracker set-up that cannot work."""
    if "tensorboard" in cfg.names and not is_tensorboard_available():  # Accelerate's own tests for its trackers
        raise VisionlaunchError(
            "tracker.name=tensorboard needs the tensorboard package: pip install 'visionlaunch[tensorboard]' "
            "(or pip install tensorboard), or choose another tracker (csv, wandb, none).")
    if "wandb" not in cfg.names:
        return
    if not is_wandb_available():
        raise VisionlaunchError(
            "tracker.name=wandb needs the wandb package: pip install 'visionlaunch[wandb]' (or pip install wandb), "
            "or set tracker.name=none.")
    mode = wandb_mode(cfg)
    if mode not in ("online", "offline", "disabled", "shared"):
        raise VisionlaunchError(f"W&B mode {mode!r} (from WANDB_MODE) is not one of online, offline, disabled.")
    if mode in ("online", "shared") and not _has_wandb_credentials():
        raise VisionlaunchError(
            "tracker.name=wandb in online mode needs a W&B API key, and none was found (WANDB_API_KEY, or "
            "`wandb login`'s entry in ~/.netrc). Run `wandb login`, or log without network with "
            "tracker.mode=offline (or WANDB_MODE=offline) and upload later with "
            "`wandb sync <dir>/wandb/offline-run-*`.")


class CsvTracker(GeneralTracker):
    """metrics.csv, one row per logged value: step, key, value (e.g. `120,val/acc,0.9713`), appended and flushed as
    it goes. A resumed run first drops the rows after its checkpoint's step, which it is about to log again. The
    configuration is not stored: config.yaml beside it holds it."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, path: Path, resume_step: int | None = None):
        super().__init__()
        self.path, self.resume_step = Path(path), resume_step
        self._fh = None

    @property
    def tracker(self):
        return self._fh

    def start(self) -> None:
        kept = []
        if self.resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["step"]) <= self.resume_step]
        # The header, and on resume the rows up to the checkpoint; replaced whole, so a crash here loses nothing.
        with atomic_write(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, ("step", "key", "value"))
            writer.writeheader()
            writer.writerows(kept)
        self._fh = open(self.path, "a", newline="", buffering=1)  # line-buffered: each row is flushed
        self._writer = csv.writer(self._fh)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        try:
            for key, value in values.items():  # numbers only: RunTracker logs no other values
                self._writer.writerow((step, key, repr(value) if isinstance(value, float) else value))
        except OSError as exc:  # a full disk: write() names no file, the message must
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def finish(self) -> None:  # once, by Accelerator.end_training, after start
        with contextlib.suppress(OSError):  # rows are flushed as written: only one whose write failed is left
            self._fh.close()


class RunTracker:
    """The trainer's view of the external trackers: no-ops unless one is on and this is the main process."""

    def __init__(self, accelerator, run_cfg, run_path: Path, identity: dict, resume_step: int | None = None):
        # identity: run.yaml's; its tracker_run_id makes a resumed run continue the same W&B run (resume="allow").
        # resume_step: the checkpoint's step; TensorBoard and the CSV drop what was logged after it.
        # Without trackers accelerator.trackers stays empty and its log() does nothing.
        self.accelerator, cfg, names = accelerator, run_cfg.tracker, run_cfg.tracker.names
        self.run = None
        if not (names and accelerator.is_main_process):  # Accelerate runs trackers there only
            return
        init_kwargs = {}
        if "wandb" in names:
            init = {"name": cfg.run_name or run_path.name, "id": identity.get("tracker_run_id", ""),
                    "resume": "allow", "mode": wandb_mode(cfg), "tags": list(cfg.tags), "group": cfg.group,
                    "entity": cfg.entity}
            if cfg.dir or not os.environ.get("WANDB_DIR"):
                init["dir"] = str(Path(cfg.dir or run_path).expanduser())
                Path(init["dir"]).mkdir(parents=True, exist_ok=True)
            init_kwargs["wandb"] = {k: v for k, v in init.items() if v is not None}
        # Accelerate starts custom trackers given as instances; these need the run folder, which is only known now,
        # after the Accelerator was made, so they join its list here.
        if "tensorboard" in names:
            from accelerate.tracking import TensorBoardTracker
            kwargs = {"purge_step": resume_step + 1} if resume_step is not None else {}
            accelerator.log_with.append(TensorBoardTracker(run_path.name, run_path / rf.TENSORBOARD, **kwargs))
        if "csv" in names:
            accelerator.log_with.append(CsvTracker(run_path / rf.METRICS_CSV, resume_step))
        accelerator.init_trackers(cfg.project, init_kwargs=init_kwargs)
        # W&B keeps the nested config; TensorBoard's hyper-parameter table wants flat scalars (the rest as text).
        config = {**run_cfg.model_dump(mode="json"), "run": {k: v for k, v in identity.items() if k != "resumed"}}
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}
        for tracker in accelerator.trackers:
            tracker.store_init_configuration(config if tracker.name == "wandb" else flat)
        if "wandb" in names:
            self.run = accelerator.get_tracker("wandb", unwrap=True)

    def log_step(self, record: dict) -> None:
        values = {f"step/{k}": record[k] for k in ("loss", "lr", "grad_norm", "skipped_steps") if k in record}
        self.accelerator.log(values, step=record["step"])

    def log_epoch(self, results: dict, epoch: int, step: int, seconds: float) -> None:
        values = {"epoch": epoch, "time": seconds}
        for split, r in results.items():
            values.update({f"{split}/{k}": r[k] for k in ("loss", "acc", "acc5", "images_per_s") if k in r})
        self.accelerator.log(values, step=step)

    def log_files(self, figures: list[Path], summary: Path | None, step: int) -> None:
        if self.run is None:
            return
        import wandb
        images = {f"figures/{Path(p).stem}": wandb.Image(str(p)) for p in figures if Path(p).suffix == ".png"}
        if images:
            self.run.log(images, step=step)
        if summary is not None and summary.is_file():
            self.run.save(str(summary), base_path=str(summary.parent), policy="now")

    def log_final(self, final: dict, step: int) -> None:
        values = {k: v for k, v in final.items() if k != "kind" and v is not None}
        if self.run is not None:
            self.run.summary.update(values)
        scalars = {f"final/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.accelerator.trackers:  # W&B has them in its run summary, the others as scalars
            if tracker.name != "wandb":
                tracker.log(scalars, step=step)
