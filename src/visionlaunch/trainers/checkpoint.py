"""Checkpoints in runs/<name>/checkpoints/step-<global step>/, and finding the one to resume from.

A checkpoint is Accelerate's `save_state` (model, optimizer, fp16 scaler, every rank's RNG states) plus:
  trainer_state.pt      learning-rate scheduler and EMA (main process; identical on every rank)
  rank_state_<i>.pt     per rank: the augmentation generator and the epoch's running totals
  visionlaunch.json     the TrainState (where training stood), the metrics.jsonl length, the config and the
                        process count; written last, so its presence marks a complete checkpoint
Everything is written into `.tmp-step-N/` and renamed when complete, so a process killed at any moment leaves
the previous checkpoints intact and the torn folder is ignored (and cleaned up by the next save). The run folder
must be on a filesystem every rank can see (the usual shared filesystem on a cluster).
Every file loads with `weights_only=True` (Accelerate's RNG files included), the model from safetensors.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import SAFE_WEIGHTS_NAME
from accelerate.utils import load as accelerate_load

from visionlaunch import __version__
from visionlaunch.atomic import as_os_error, atomic_torch_save, atomic_write_text, is_write_failure
from visionlaunch.config import canonical_precision
from visionlaunch.errors import VisionlaunchError, describe_load_failure, describe_os_error
from visionlaunch.runfolder import CHECKPOINT_DONE as META
from visionlaunch.runfolder import (CHECKPOINTS, TORN_CHECKPOINTS, checkpoint_name, checkpoint_step,
                                    complete_checkpoints, metrics_size, weights_file)
from visionlaunch.trainers.distributed import any_rank
from visionlaunch.trainers.precision import Precision
from visionlaunch.trajectory import config_differences

TRAINER_STATE = "trainer_state.pt"
RANK_STATE = "rank_state_{}.pt"  # of rank {}
FORMAT = 1
# What a resumed run needs from visionlaunch.json (results and early_stop default to empty).
META_KEYS = ("step", "epoch", "step_in_epoch", "best", "ema_best", "elapsed", "skipped_steps", "metrics_bytes",
             "world_size", "config")
TRY_ANOTHER = ("Resume from another checkpoint (train.resume=<folder>) or delete this one so that train.resume=auto "
               "picks the previous one.")


@dataclass
class EarlyStop:
    """Early stopping's counters: training ends when the validation metric (train.early_stop_metric) has not
    improved for train.early_stop_patience epochs in a row. Saved in every checkpoint, so a resumed run counts on
    from where the interrupted one stood and a run that stopped early stays stopped."""

    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_epoch: int | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def update(self, results: dict, epoch: int, patience: int, metric: str) -> bool:
        """Record epoch `epoch`'s results (1-based); True when training should stop after it."""
        split, key = metric.split("_", 1)  # "val_acc" -> results["val"]["acc"]
        if not patience or split not in results:
            return False
        value = results[split][key]
        improved = self.best is None or (value > self.best if key == "acc" else value < self.best)
        if improved and math.isfinite(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= patience:
            self.stopped_epoch = epoch
        return self.stopped


@dataclass
class TrainState:
    """Where training stands, and exactly what every checkpoint's visionlaunch.json records of it. The position
    (epoch, step_in_epoch) is where a resumed run starts: after epoch e (0-based) it is (e + 1, 0); after k optimizer
    steps of epoch e, (e, k)."""

    step: int = 0  # optimizer steps done, over all epochs
    epoch: int = 0
    step_in_epoch: int = 0
    best: dict = field(default_factory=lambda: {"val_acc": -1.0})  # best val accuracy, its epoch and test accuracy
    ema_best: float = -1.0  # best val accuracy of the EMA weights
    elapsed: float = 0.0  # seconds of training, all sessions together
    skipped_steps: int = 0  # optimizer steps the fp16 loss scaler skipped
    results: dict = field(default_factory=dict)  # the finished epoch's results, at an epoch's end
    early_stop: EarlyStop = field(default_factory=EarlyStop)

    @classmethod
    def from_meta(cls, meta: dict) -> TrainState:
        state = cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})
        state.early_stop = EarlyStop(**(meta.get("early_stop") or {}))
        return state

    def final_record(self, cfg, precision: str) -> dict:
        """metrics.jsonl's closing `kind: final` record of a run that ended in this state, computed in `precision`."""
        best, test = self.best, self.results.get("test", {})
        final = {"kind": "final", "epochs": cfg.train.epochs, "steps": self.step, "time": round(self.elapsed, 3),
                 "test_acc": test.get("acc"), "test_acc5": test.get("acc5"), "test_loss": test.get("loss"),
                 "best_val_acc": best.get("val_acc") if "epoch" in best else None,
                 "best_epoch": best.get("epoch"), "test_acc_at_best_val": best.get("test_acc")}
        if "test_ema" in self.results:
            final["test_ema_acc"] = self.results["test_ema"]["acc"]
        if precision == "fp16":
            final["skipped_steps"] = self.skipped_steps
        if cfg.train.early_stop_patience:
            final["early_stop"] = {"metric": cfg.train.early_stop_metric, "patience": cfg.train.early_stop_patience,
                                   "best": self.early_stop.best, "best_epoch": self.early_stop.best_epoch,
                                   "stopped_epoch": self.early_stop.stopped_epoch}
        return final


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError) as exc:
        problem = f"{META} cannot be read ({exc})"
    else:
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise VisionlaunchError(f"{path} is not a visionlaunch checkpoint of format {FORMAT}. Resume from a "
                                    "checkpoint written by this version, or start the run again.")
        missing = [key for key in META_KEYS if key not in meta]
        if not missing:
            return meta
        problem = f"its {META} lacks {', '.join(missing)}"
    raise VisionlaunchError(f"the checkpoint {path} is incomplete or corrupt: {problem}. {TRY_ANOTHER}")


def check_files(path: Path, needed: list[str]) -> None:
    """Stop unless the folder holds every file of `needed` and the model's weights."""
    missing = [name for name in needed if not (path / name).is_file()]
    if not ((path / "model.safetensors").is_file() or (path / "pytorch_model.bin").is_file()):
        missing.append("model.safetensors")
    if missing:
        raise VisionlaunchError(f"the checkpoint {path} is partial: {', '.join(missing)} missing. {TRY_ANOTHER}")


def validate(path: Path, meta: dict, cfg_dump: dict, world: int, precision: Precision) -> None:
    """Everything that can be checked before loading: the same config (train.precision as computed: `auto` and what
    it resolved to are the same) and process count, and no file missing."""
    before = meta.get("precision") or canonical_precision(meta["config"].get("train", {}).get("precision", "fp32"))
    old, new = (_computed_in(_resided(meta["config"]), before), _computed_in(_resided(cfg_dump), precision.name))
    if differences := config_differences(old, new, "checkpoint", "now"):
        moved = before != precision.name and "auto" in (meta["config"].get("train", {}).get("precision"),
                                                         cfg_dump["train"]["precision"])
        raise VisionlaunchError(
            f"the checkpoint {path} belongs to a run with a different configuration, so it cannot continue this one:"
            + "".join(f"\n  - {d}" for d in differences)
            + (f"\nThe checkpoint was computed in {before}; here {precision.reason}. To continue the run as it "
               f"trained, set train.precision={before} (on a device that computes it)." if moved else "")
            + "\nResume with the run's own settings (runs/<name>/config.yaml), or start a new run (another "
              "output.name, or train.resume=none).")
    if meta.get("world_size") != world:
        raise VisionlaunchError(
            f"the checkpoint {path} was written by {meta.get('world_size')} processes and this run has {world}. An "
            f"exact resumption (each rank's random state and data shard) needs the same count: launch "
            f"{meta.get('world_size')} processes.")
    check_files(path, [TRAINER_STATE, "optimizer.bin", *(f"random_states_{r}.pkl" for r in range(world)),
                       *(RANK_STATE.format(r) for r in range(world)),
                       *(["scaler.pt"] if precision.name == "fp16" else [])])


def _computed_in(config: dict, precision: str) -> dict:
    """A dumped config with train.precision replaced by the precision the run computed in."""
    return {**config, "train": {**config.get("train", {}), "precision": precision}}


def _resided(config: dict) -> dict:
    """A dumped config with data.residency as it was decided: without the key (a checkpoint written before it
    existed) or with `auto` (data given to the trainer, not planned), the training data was in memory."""
    data = config.get("data", {})
    if data.get("residency") in ("memory", "disk"):
        return config
    return {**config, "data": {**data, "residency": "memory"}}


@dataclass
class ResumePlan:
    run_path: Path                  # the run folder to write into
    checkpoint: Path | None         # None: start from scratch
    meta: dict | None
    note: str | None = None         # what the user should know (auto skipped a damaged checkpoint)


def plan_resume(resume: str, default_run_path: Path) -> ResumePlan:
    """Where a run with `train.resume=resume` starts (main process only; the trainer shares the answer).

    auto: the newest complete checkpoint of `default_run_path`, else a fresh start there.
    <path>: that checkpoint folder, or the newest checkpoint of that run folder; the run continues in its folder.
    none: a fresh start.
    """
    if resume == "none":
        return ResumePlan(default_run_path, None, None)
    if resume == "auto":
        found = complete_checkpoints(default_run_path / CHECKPOINTS)
        if not found:
            return ResumePlan(default_run_path, None, None)
        skipped = []
        for path in reversed(found):  # the newest one that is whole (a damaged one is kept for inspection)
            try:  # whatever the run's settings: readable metadata, and the files every checkpoint has
                meta = read_meta(path)
                check_files(path, [TRAINER_STATE, "optimizer.bin"])
            except VisionlaunchError as exc:  # its reason: the message's first sentence, after the path
                skipped.append(f"{path.name} ({str(exc).split(': ', 1)[-1].split('. ')[0]})")
                continue
            note = (f"NOTE: train.resume=auto skipped the damaged checkpoint(s) {'; '.join(skipped)} and resumes "
                    f"from the previous complete one, {path.name}") if skipped else None
            return ResumePlan(default_run_path, path, meta, note)
        raise VisionlaunchError(
            f"train.resume=auto: no checkpoint of {default_run_path} can be resumed from: {'; '.join(skipped)}. "
            "Restore one, or start the run again with train.resume=none and output.overwrite=true.")
    path = Path(resume).expanduser()
    if checkpoint_step(path) is None and (path / CHECKPOINTS).is_dir():
        found = complete_checkpoints(path / CHECKPOINTS)
        if not found:
            raise VisionlaunchError(
                f"train.resume={resume}: the run folder has no complete checkpoint under {path / CHECKPOINTS}. "
                "Start it again with train.resume=none and output.overwrite=true.")
        path = found[-1]
    if not path.is_dir() or checkpoint_step(path) is None:
        raise VisionlaunchError(
            f"train.resume={resume} is not a checkpoint folder (runs/<name>/checkpoints/step-NNNNNNNN) nor a run "
            "folder with checkpoints. Pass one of those, auto (with output.name) or none.")
    return ResumePlan(path.parent.parent, path, read_meta(path))


class Checkpoints:
    """The run's checkpoints in `root`, with the objects whose state they hold beside Accelerate's: `save` writes
    one (every rank at the same step) and keeps the newest train.keep_checkpoints, `restore` loads one."""

    def __init__(self, accelerator: Accelerator, root: Path, cfg, precision: str, scheduler, ema, pipeline):
        self.accelerator, self.root, self.cfg, self.precision = accelerator, Path(root), cfg, precision
        self.scheduler, self.ema, self.pipeline = scheduler, ema, pipeline

    def save(self, state: TrainState, totals: torch.Tensor, epoch_seconds: float) -> Path:
        """`totals`, `epoch_seconds`: this rank's running sums and seconds of the epoch so far."""
        acc, cfg = self.accelerator, self.cfg
        final = self.root / checkpoint_name(state.step)
        tmp = self.root / f".tmp-{final.name}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))  # model, optimizer, scaler (main) and random_states_<rank>.pkl (every rank)
            torch.save({"pipeline": self.pipeline.state_dict(), "totals": totals.detach().cpu(),
                        "epoch_seconds": float(epoch_seconds)}, tmp / RANK_STATE.format(acc.process_index))
            if acc.is_main_process:
                torch.save({"scheduler": self.scheduler.state_dict(),
                            "ema": self.ema.state_dict() if self.ema is not None else None}, tmp / TRAINER_STATE)
        except Exception as exc:
            if not is_write_failure(exc):
                raise
            # Judged before the torn folder goes: while it still fills the disk, the free space tells a full disk
            # from an I/O error (torch's error does not say which).
            error = as_os_error(exc, torn_file(tmp, exc))
            shutil.rmtree(tmp, ignore_errors=True)  # the torn folder would only take up the space that ran out
            raise self._write_failed(final, error) from exc
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {"format": FORMAT, **asdict(state),
                    "finished": state.epoch == cfg.train.epochs or state.early_stop.stopped,
                    "metrics_bytes": metrics_size(self.root.parent),  # a resumed run drops what follows
                    "world_size": acc.num_processes, "model": cfg.model.name, "config": cfg.model_dump(mode="json"),
                    "precision": self.precision,  # what train.precision resolved to on the machine that wrote it
                    "visionlaunch": __version__, "written": dt.datetime.now().isoformat(timespec="seconds")}
            try:
                atomic_write_text(tmp / META, json.dumps(meta, indent=1))
            except OSError as exc:
                error = as_os_error(exc, tmp / META)  # a failed write() names no file
                shutil.rmtree(tmp, ignore_errors=True)
                raise self._write_failed(final, error) from exc
            self._publish(tmp, final)
            self._prune()
        acc.wait_for_everyone()
        return final

    def restore(self, path: Path) -> dict:
        """Load checkpoint `path` into the prepared objects on every rank; return this rank's state (the epoch's
        running totals and seconds). A rank that cannot load it stops them all, with its message on that rank."""
        acc, rank, error = self.accelerator, self.accelerator.process_index, None
        try:
            # Accelerate ignores an unreadable RNG file in silence; read it first so that corruption is reported.
            accelerate_load(path / f"random_states_{rank}.pkl")
            acc.load_state(str(path))
            trainer_state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
            rank_state = torch.load(path / RANK_STATE.format(rank), map_location="cpu", weights_only=True)
            self.scheduler.load_state_dict(trainer_state["scheduler"])
            if self.ema is not None:
                self.ema.load_state_dict(trainer_state["ema"])
            self.pipeline.load_state_dict(rank_state["pipeline"])
        except Exception as exc:
            error = (f"cannot load the checkpoint {path}: {describe_load_failure(exc)}. The folder is corrupt or was "
                     f"written by another model. {TRY_ANOTHER}")
        if any_rank(acc, error is not None):
            raise VisionlaunchError(error or f"another process could not load the checkpoint {path}; see its message.")
        return rank_state

    def _write_failed(self, final: Path, exc: OSError) -> VisionlaunchError:
        kept = complete_checkpoints(self.root)
        return VisionlaunchError(
            f"could not write the checkpoint {final.name}: {describe_os_error(exc)} Nothing was lost: "
            + (f"the last complete checkpoint {kept[-1]} is intact, so rerunning with train.resume=auto continues "
               "from it." if kept else "no earlier checkpoint exists, so the run must start again.")
            + " weights/ holds the weights of the last finished epoch, if any.")

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        old = final.with_name(f".old-{final.name}")
        if final.exists():  # the same step saved twice (a preemption at an epoch's last step): replace it
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _prune(self) -> None:
        for old in complete_checkpoints(self.root)[:-self.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        for torn in self.root.glob(TORN_CHECKPOINTS):
            shutil.rmtree(torn, ignore_errors=True)


def torn_file(folder: Path, exc: BaseException) -> Path:
    """The file of a checkpoint folder whose write failed with `exc`: the newest (where the write stopped), except
    after a safetensors error, which removes its torn file itself: the one safetensors file Accelerate writes is
    the model's. The folder when neither is known."""
    if type(exc).__name__ == "SafetensorError":
        return folder / SAFE_WEIGHTS_NAME
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=folder)


def save_weights(path: Path, model_state: dict, epoch: int, results: dict, cfg, data) -> None:
    """A weights file (runfolder.weights_file): the model's tensors with what `evaluate`, `predict` and `export`
    need to rebuild it."""
    state = {k: v.detach().cpu() for k, v in model_state.items()}
    try:
        atomic_torch_save({"model": state, "epoch": epoch, "results": results, "model_name": cfg.model.name,
                           "model_args": cfg.model.args, "in_shape": list(data.in_shape), "classes": data.classes,
                           "mean": list(data.mean), "std": list(data.std)}, path)
    except OSError as exc:  # disk full, file-size limit: the file keeps its previous content
        raise VisionlaunchError(
            f"could not write the weights: {describe_os_error(exc)} "
            + (f"{path.name} still holds an earlier epoch's weights." if path.is_file() else "")) from exc


def what_was_saved(run_path: Path) -> str:
    """What a run that stops on bad numbers leaves to go back to: only files that exist are named."""
    weights, found = weights_file(run_path, "last"), complete_checkpoints(run_path / CHECKPOINTS)
    kept = ([f"The last finished epoch's weights are in {weights}."] if weights.is_file() else []) + \
        ([f"The checkpoint {found[-1]} holds the last good state."] if found else [])
    return " ".join(kept) or "Nothing was saved before it happened (no epoch finished, no checkpoint written)."
