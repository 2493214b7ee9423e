"""The Accelerate trainer: one path for one CPU, one GPU or many processes.

Reads top to bottom: set up (validate everything, including a checkpoint to resume from, before the run folder
exists) -> epochs of optimizer steps (each of train.grad_accum micro-batches), a checkpoint every
train.checkpoint_every steps and at each epoch end, evaluation on val and test (and of the EMA weights) per
epoch -> weights, metrics, figures, trackers. A preemption signal checkpoints and exits with status 75.
Only the main process writes files, prints, draws progress bars and talks to W&B; every process computes.

What stays the same whatever the process count N and the accumulation A: train.batch_size is the global batch
of one optimizer step (each process runs micro-batches of batch_size / (N * A)), optim.lr is the learning rate
for that batch, the schedule counts optimizer steps, and step k of every rank together covers the same samples
as step k of one process. N processes then follow one process's trajectory up to float rounding, unless the
model has BatchNorm (statistics per rank's micro-batch) or draws random numbers (dropout, augmentation: one
stream per rank).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm

from visionlaunch import __version__
from visionlaunch import runfolder as rf
from visionlaunch.atomic import atomic_torch_save, atomic_write_text
from visionlaunch.config import RunConfig
from visionlaunch.errors import VisionlaunchError, describe_os_error
from visionlaunch.ffcv_builders import require_ffcv
from visionlaunch.models import build_model
from visionlaunch.models.weights import load_weights
from visionlaunch.datasets.resized_crop import ResizedCrop
from visionlaunch.models.features import layer_names
from visionlaunch.models.summary import count_parameters, model_summary
from visionlaunch.progress import progress_bar
from visionlaunch.trainers import checkpoint as ckpt
from visionlaunch.reports.html import write_report
from visionlaunch.trainers.artefacts import make_figures
from visionlaunch.trainers.data import DataBundle, make_loader, prepare_data, train_steps_per_epoch
from visionlaunch.trainers.determinism import set_deterministic
from visionlaunch.trainers.distributed import (any_rank, broadcast_from_main, check_world_size, mean_over_ranks,
                                               peer_lost)
from visionlaunch.trainers.early_stop import EarlyStopping
from visionlaunch.trainers.ema import ModelEMA
from visionlaunch.trainers.losses import CrossEntropyLoss
from visionlaunch.trainers.metrics import topk_correct
from visionlaunch.datasets.augment import BatchPipeline
from visionlaunch.trainers.preemption import Preempted, PreemptionWatcher
from visionlaunch.trainers.runlock import RunLock
from visionlaunch.trainers.schedules import build_optimizer, build_scheduler
from visionlaunch.trainers.tta import tta_logits
from visionlaunch.trainers.trackers import RunTracker, check_tracker, new_run_id

# fp16: this many optimizer steps in a row skipped by the loss scaler means the loss itself is not finite,
# which no loss scale can fix (the scale has been halved this many times).
MAX_CONSECUTIVE_SKIPPED = 50


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_accelerator(cfg: RunConfig, *, training: bool = False) -> Accelerator:
    # Accelerate keeps its precision settings in a process-wide singleton; a second run in the same process (a
    # notebook, the tests) with another precision would be refused. The process group (PartialState) is kept.
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    kwargs = {}
    if training:
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))]
        if "wandb" in cfg.tracker.names:
            kwargs["log_with"] = "wandb"
    return Accelerator(mixed_precision=cfg.train.precision, cpu=cfg.train.device == "cpu", **kwargs)


@torch.no_grad()
def evaluate(model, loader, pipeline: BatchPipeline, accelerator: Accelerator, criterion, tta_flip: bool = False) -> dict:
    """Loss and top-1/top-5 accuracy over every sample of `loader`, summed across processes (each rank holds a
    disjoint, untrimmed shard, so every sample counts exactly once). `tta_flip` averages the logits of each image
    and its mirror image."""
    model.eval()
    device = accelerator.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    for images, labels in loader:
        with accelerator.autocast():
            logits = tta_logits(model, pipeline.eval(images), tta_flip)
        loss = criterion(logits.float(), labels)
        top1, top5 = topk_correct(logits, labels)
        totals += torch.stack([loss.double() * len(labels), top1.double(), top5.double(),
                               torch.tensor(len(labels), dtype=torch.float64, device=device)])
    totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, top1, top5, n = totals.tolist()
    n = max(n, 1)
    return {"loss": loss_sum / n, "acc": top1 / n, "acc5": top5 / n, "n": int(n)}


# A run folder that was started but never finished (killed before its first checkpoint), or one that only holds
# the batch job that is about to start it (runs/<name>/slurm/, written by `visionlaunch submit`).
UNFINISHED = (rf.FolderState.EMPTY, rf.FolderState.JOB_ONLY, rf.FolderState.STARTED, rf.FolderState.PREEMPTED)


class Trainer:
    def __init__(self, cfg: RunConfig, *, preset: str | None = None, argv: list[str] | None = None,
                 verbose: bool = False, data: DataBundle | None = None):
        """`data`: train on these tensors instead of reading cfg.data (benchmarks, tests); its name must be
        cfg.data.name. `verbose`: print the model's layer table too (it is always in summary.txt)."""
        self.lock: RunLock | None = None  # the run folder's lock, held by the main process until fit() ends
        self.verbose = verbose
        try:
            self._set_up(cfg, preset, argv, data)
        except BaseException:
            self.release_lock()
            raise

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _set_up(self, cfg: RunConfig, preset: str | None, argv: list[str] | None, data: DataBundle | None) -> None:
        self.cfg = cfg
        self.argv = argv if argv is not None else sys.argv
        set_deterministic(cfg.train.deterministic)  # before the Accelerator touches CUDA (cuBLAS workspace)
        self.accelerator = acc = make_accelerator(cfg, training=True)
        self.is_main = acc.is_main_process
        check_world_size(acc)
        if cfg.train.precision == "fp16" and acc.device.type == "cpu":
            raise VisionlaunchError(
                "train.precision=fp16 needs a GPU: on the CPU Accelerate would silently train in fp32 (it has no "
                "fp16 autocast or loss scaling there). Use train.precision=bf16 (CPU autocast) or no.")
        world, accum = acc.num_processes, cfg.train.grad_accum
        if cfg.train.batch_size % (world * accum):
            raise VisionlaunchError(
                f"train.batch_size={cfg.train.batch_size} is the global batch of one optimizer step and must divide "
                f"evenly into {world} process(es) x train.grad_accum={accum} micro-batches. Choose a multiple of "
                f"{world * accum}, or change train.grad_accum.")
        self.micro_batch = cfg.train.batch_size // (world * accum)
        check_tracker(cfg.tracker)
        if cfg.data.loader == "ffcv":  # before anything is read or written: the message says how to install it
            self._agreed(lambda: require_ffcv() and None)

        # Validate what is cheap and certain to fail before reading data or creating anything.
        name = cfg.output.name or rf.default_run_name(preset)
        out_dir = Path(cfg.output.dir).expanduser()
        self.plan = self._agreed(lambda: self._lock_and_plan(out_dir / name))
        self.resuming = self.plan.checkpoint is not None
        if self.plan.note:
            self.log(self.plan.note)
        if cfg.train.resume == "auto" and not cfg.output.name:
            self.log("NOTE: train.resume=auto finds a run by its folder name: set output.name for it to resume.")
        if self.resuming:
            self.run_path = self.plan.run_path
        else:
            state = rf.folder_state(out_dir / name)
            restart = cfg.train.resume == "auto" and state in UNFINISHED
            if restart and state is not rf.FolderState.JOB_ONLY:
                self.log(f"no complete checkpoint in {out_dir / name}: starting that run again")
            self.run_path = rf.check_output_dir(out_dir, name, cfg.output.overwrite or restart)
            self._replace_existing = cfg.output.overwrite or restart
        set_seed(cfg.train.seed)

        with acc.main_process_first():  # one process fills the data cache, the others read it
            self.data: DataBundle = data if data is not None else prepare_data(
                cfg.data, log=self.log, progress=self.is_main and cfg.train.progress)
        if self.data.name != cfg.data.name:  # record what was really used, so `evaluate` reloads the same data
            cfg.data.fallback = "none"
            cfg.data.name = self.data.name
        self.model = build_model(cfg.model.name, self.data.in_shape, len(self.data.classes), cfg.model.args)
        if cfg.model.weights:
            load_weights(self.model, cfg.model.weights, cfg.model.name)
        if world > 1:  # one random stream per rank (dropout); the initial weights above are the same everywhere
            set_seed((cfg.train.seed + acc.process_index) % 2**32)  # numpy takes 32-bit seeds
        self.summary = model_summary(self.model, self.data.in_shape)
        if cfg.report.figures and cfg.report.tsne_layer not in layer_names(self.model):
            raise VisionlaunchError(
                f"report.tsne_layer={cfg.report.tsne_layer!r} is not a layer of model {cfg.model.name!r}. Valid names: "
                f"{', '.join(layer_names(self.model)[:40])}.")
        if self.resuming:
            self._agreed(lambda: ckpt.validate(self.plan.checkpoint, self.plan.meta, self._config_dump(), world,
                                               cfg.train.precision == "fp16"))

        # Everything validated: now the run folder may exist. Set-up failures after this remove it again (a
        # resumed run's folder is never removed).
        if self.resuming:
            self.run_dir = rf.RunDirectory.existing(self.run_path) if self.is_main else None
        else:
            self.run_dir = rf.RunDirectory(self.run_path, self._replace_existing) if self.is_main else None
        try:
            self._setup_training()
            self._position()
            if self.is_main:
                self._write_run_files(self.run_path.name)
            acc.wait_for_everyone()
            self.tracker = RunTracker(acc, cfg.tracker, self.run_path, self.run_path.name,
                                      self.identity.get("tracker_run_id") if self.is_main else "",
                                      self._tracker_config(), self.step if self.resuming else None)
        except BaseException:
            if self.run_dir is not None:
                self.run_dir.discard()
            raise

    # ----------------------------------------------------------------------------------------------- set-up
    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stderr)

    def _agreed(self, fn):
        """Run `fn` on the main process and give its result, or its VisionlaunchError, to every rank, so that
        all of them go on or stop together (a rank that stops alone leaves the others waiting forever)."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except VisionlaunchError as exc:
                outcome = ("error", str(exc))
        outcome = broadcast_from_main(self.accelerator, outcome)
        if outcome[0] == "error":
            raise VisionlaunchError(outcome[1])
        return outcome[1]

    def _lock_and_plan(self, default_run_path: Path) -> ckpt.ResumePlan:
        """Lock the run folder (main process), then decide where to start: no other process may train into it,
        resume from it or replace it until this run ends."""
        plan = ckpt.plan_resume(self.cfg.train.resume, default_run_path)
        self.lock = RunLock(plan.run_path).acquire(log=self.log)
        return ckpt.plan_resume(self.cfg.train.resume, default_run_path)  # again: it may have changed meanwhile

    def _config_dump(self) -> dict:
        return self.cfg.model_dump(mode="json")

    def _setup_training(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        device = acc.device
        loader_args = dict(seed=cfg.train.seed, device=device, rank=acc.process_index, world=acc.num_processes,
                           num_workers=cfg.data.num_workers)
        betons = self._ffcv_files() if cfg.data.loader == "ffcv" else {}
        crop = ResizedCrop(cfg.data.image_size, tuple(cfg.augment.crop_scale)) if cfg.data.image_size else None
        # _ffcv_files has just hashed every file against its manifest on the main process: not again there.
        loader_args["verify_beton"] = not self.is_main
        # An epoch is a whole number of optimizer steps; max_steps_per_epoch counts optimizer steps.
        self.steps_per_epoch = train_steps_per_epoch(len(self.data.train), self.micro_batch, cfg.train.grad_accum,
                                                     acc.num_processes, cfg.train.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise VisionlaunchError(
                f"no training step fits in an epoch: {len(self.data.train)} training images cannot fill one batch "
                f"of {cfg.train.batch_size}. Lower train.batch_size or use more data.")
        self.train_loader = make_loader(cfg.data.loader, self.data.train.images, self.data.train.labels,
                                        self.micro_batch, train=True, beton=betons.get("train"), augment=cfg.augment,
                                        channels_last=cfg.train.channels_last, resized_crop=crop,
                                        max_steps=self.steps_per_epoch * cfg.train.grad_accum, **loader_args)
        eval_batch = max(1, cfg.train.eval_batch_size // acc.num_processes)
        self.eval_loaders = {
            split: make_loader(cfg.data.loader, ds.images, ds.labels, eval_batch, train=False, beton=betons.get(split),
                               channels_last=cfg.train.channels_last, **loader_args)
            for split, ds in (("val", self.data.val), ("test", self.data.test)) if ds is not None and len(ds)}
        for loader in (self.train_loader, *self.eval_loaders.values()):
            if loader.note:  # e.g. a dataset too big to stay resident on the device
                self.log(loader.note)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
        self.pipeline = BatchPipeline(cfg.augment, self.data.mean, self.data.std, device,
                                      seed=cfg.train.seed + acc.process_index, channels_last=cfg.train.channels_last,
                                      dtype=half if cfg.data.half_inputs else torch.float32,
                                      loader_augments=self.train_loader.augments,
                                      resized_crop=None if self.train_loader.augments or self.train_loader.crops else crop)
        self.criterion = CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        self.num_classes = len(self.data.classes)  # for the soft targets of mixup/cutmix
        self.eval_criterion = CrossEntropyLoss()
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(self.model, cfg.optim)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        # Kept out of prepare() and stepped once per optimizer step: see schedules.py.
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.optim.lr, self.steps_per_epoch,
                                         cfg.train.epochs)
        self.raw_model = acc.unwrap_model(self.model)
        self.ema = ModelEMA(self.raw_model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.forward_model = self.model
        if cfg.train.compile:
            if device.type == "cpu":
                self.log("NOTE: train.compile on the CPU: compiling takes tens of seconds and small models often get "
                         "slower; it is meant for GPUs.")
            self.forward_model = torch.compile(self.model)  # forward only; checkpoints use the uncompiled module
        self.checkpoints = ckpt.CheckpointWriter(acc, self.run_path / rf.CHECKPOINTS, cfg.train.keep_checkpoints)

    def _ffcv_files(self) -> dict:
        """The run's .beton files: the main process writes missing ones (the others wait) and refuses stale,
        truncated or foreign ones, for every rank at once."""
        from visionlaunch.ffcv_builders.prepare import ensure_betons

        splits = {"train": self.data.train, "val": self.data.val, "test": self.data.test}
        return self._agreed(lambda: ensure_betons(splits, self.data.name, self.cfg.data, log=self.log,
                                                  progress=self.is_main and self.cfg.train.progress))

    def _position(self) -> None:
        """Where training starts: the beginning, or exactly where the checkpoint stopped."""
        self.step, self.start_epoch, self.start_in_epoch = 0, 0, 0
        self.best, self.ema_best, self.elapsed0, self.skipped_steps = {"val_acc": -1.0}, -1.0, 0.0, 0
        self.last_results: dict = {}
        self.resume_rank_state: dict | None = None
        self.last_checkpoint: Path | None = self.plan.checkpoint  # the newest end-of-epoch one, once written
        self.early_stop = EarlyStopping(self.cfg.train.early_stop_patience, self.cfg.train.early_stop_metric)
        if not self.resuming:
            return
        path, meta = self.plan.checkpoint, self.plan.meta
        error = None
        try:
            trainer_state, rank_state = ckpt.load(self.accelerator, path)
            self.scheduler.load_state_dict(trainer_state["scheduler"])
            if self.ema is not None:
                self.ema.load_state_dict(trainer_state["ema"])
            self.pipeline.load_state_dict(rank_state["pipeline"])
        except (VisionlaunchError, KeyError, ValueError, RuntimeError) as exc:
            error = str(exc) if isinstance(exc, VisionlaunchError) else f"cannot load the checkpoint {path}: {exc}"
        if any_rank(self.accelerator, error is not None):
            raise VisionlaunchError(error or f"another process could not load the checkpoint {path}; see its message.")
        self.resume_rank_state = rank_state
        self.step, self.start_epoch, self.start_in_epoch = meta["step"], meta["epoch"], meta["step_in_epoch"]
        self.best, self.ema_best = meta["best"], meta["ema_best"]
        self.elapsed0, self.skipped_steps = meta["elapsed"], meta["skipped_steps"]
        self.last_results = meta.get("results", {})
        self.early_stop.load_state_dict(meta.get("early_stop"))
        if self.is_main:
            # Records written after the checkpoint are replayed by the resumed run: drop them, keep the rest.
            rf.truncate_metrics(self.run_path, meta["metrics_bytes"])
        if meta.get("finished"):
            self.log(f"{path} is the end of training: writing the final record and figures again")
        else:
            self.log(f"resuming from {path}: epoch {self.start_epoch + 1}, step {self.start_in_epoch}/"
                     f"{self.steps_per_epoch} of the epoch, global step {self.step}")

    def _write_run_files(self, name: str) -> None:
        rd = self.run_dir.path
        saved = self.cfg.model_copy(deep=True)
        saved.train.resume = "none"  # config.yaml reruns the experiment from scratch
        atomic_write_text(rd / rf.CONFIG, saved.to_yaml())
        params = count_parameters(self.raw_model)
        atomic_write_text(rd / rf.SUMMARY, f"{self.cfg.model.name} on {self.data.in_shape}: {params:,} trainable "
                                           f"parameters\n\n{self.summary}\n")
        previous = rf.read_run_identity(rd) if self.resuming else {}
        identity = {
            "name": name, "ident": self.cfg.resolved_ident(), "date": dt.date.today().isoformat(),
            "started": dt.datetime.now().isoformat(timespec="seconds"), "command": shlex.join(self.argv),
            "visionlaunch": __version__, "git_commit": git_commit(), "host": platform.node(),
            "python": platform.python_version(), "torch": str(torch.__version__), "device": str(self.accelerator.device),
            "processes": self.accelerator.num_processes, "precision": self.cfg.train.precision,
            "parameters": params, "data": self.data.note, "tracker_run_id": new_run_id(),
        }
        if previous:  # a resumed run keeps its identity (date on the figures, W&B run) and lists its sessions
            identity.update({k: previous[k] for k in ("ident", "date", "started", "tracker_run_id") if k in previous})
            identity["resumed"] = [*previous.get("resumed", []), {
                "at": dt.datetime.now().isoformat(timespec="seconds"), "from": str(self.plan.checkpoint),
                "command": shlex.join(self.argv)}]
        atomic_write_text(rd / rf.IDENTITY, yaml.safe_dump(identity, sort_keys=False))
        self.identity = identity

    def _tracker_config(self) -> dict:
        return {**self._config_dump(), "run": {k: v for k, v in getattr(self, "identity", {}).items()
                                               if k not in ("resumed",)}}

    # ------------------------------------------------------------------------------------------------- train
    def fit(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        self.log(f"visionlaunch {__version__} | {acc.num_processes} process(es) on {acc.device} | precision "
                 f"{cfg.train.precision} | global batch {cfg.train.batch_size} = {acc.num_processes} x "
                 f"{cfg.train.grad_accum} x {self.micro_batch}")
        self.log(self.data.note)
        if not self.resuming:  # the layer table is in summary.txt; a log gets it only when asked
            self.log(self.summary if self.verbose else
                     f"model {cfg.model.name}: {count_parameters(self.raw_model):,} trainable parameters (layers: "
                     f"{self.run_path / rf.SUMMARY}; --verbose prints them here)")
        self.log(f"run folder: {self.run_path}")
        self.metrics = rf.MetricsWriter(self.run_path / rf.METRICS if self.is_main else None)
        if self.is_main:
            rf.clear_preempted(self.run_path)  # a resumed run is no longer the preempted one
        self.start_time = time.perf_counter()
        try:
            with PreemptionWatcher(cfg.train.preempt_signals, log=self.log) as self.watcher:
                results = self.last_results
                for epoch in range(self.start_epoch, cfg.train.epochs):
                    if self.early_stop.stopped:  # a resumed run that had stopped early stays stopped
                        break
                    start = self.start_in_epoch if epoch == self.start_epoch else 0
                    train_stats = self._train_epoch(epoch, start)
                    results = self._end_epoch(epoch, train_stats)
                final = self._finish(results)
        except Preempted as exc:
            if self.is_main:
                rf.write_preempted(self.run_path, exc.signal_name, exc.step, exc.checkpoint)
            raise
        finally:
            self.metrics.close()
            acc.end_training()  # also finishes the W&B run; without it gloo groups sometimes abort at exit
            self.release_lock()
        return final

    def _elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.start_time

    def _train_epoch(self, epoch: int, start: int) -> dict:
        cfg, acc = self.cfg, self.accelerator
        accum, fp16 = cfg.train.grad_accum, cfg.train.precision == "fp16"
        self.model.train()
        self.train_loader.set_epoch(epoch, start_batch=start * accum)
        device = acc.device
        # loss sum, top1, top5, count of this rank's samples this epoch (restored mid-epoch when resuming)
        totals = torch.zeros(4, dtype=torch.float64, device=device)
        seconds_before = 0.0
        if start and self.resume_rank_state is not None:
            totals += self.resume_rank_state["totals"].to(device)
            seconds_before = self.resume_rank_state["epoch_seconds"]
        self.resume_rank_state = None
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        # Sample counts as (one on the device) * n: torch.tensor(n, device=cuda) would be a blocking copy that
        # stalls the GPU queue every micro-batch.
        one = torch.ones((), dtype=torch.float64, device=device)
        consecutive_skips = 0
        bar = progress_bar(total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                           unit="step", disable=not (self.is_main and cfg.train.progress), leave=False,
                           dynamic_ncols=True)
        t0 = last_postfix = time.perf_counter()
        batches = iter(self.train_loader)
        for index in range(start, self.steps_per_epoch):
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            step_loss = torch.zeros((), device=device)
            step_totals = torch.zeros(4, dtype=torch.float64, device=device)
            for micro in range(accum):
                images, labels = next(batches)
                # Gradients are all-reduced once per optimizer step, on its last micro-batch.
                sync = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(self.model)
                with sync:
                    with acc.autocast():
                        inputs, targets = self.pipeline.train_targets(images, labels, self.num_classes)
                        logits = self.forward_model(inputs)
                        loss = self.criterion(logits, targets)
                    acc.backward(loss / accum)
                top1, top5 = topk_correct(logits.detach(), labels)  # with mixup: against the unmixed labels
                n = len(labels)
                step_loss += loss.detach().float() / accum
                step_totals += torch.stack([loss.detach().double() * n, top1.double(), top5.double(), one * n])
            grad_norm = None
            if cfg.optim.clip_grad_norm:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
            self.optimizer.step()
            skipped = fp16 and self.optimizer.step_was_skipped  # the fp16 scaler found inf/nan gradients
            self.optimizer.zero_grad(set_to_none=True)
            if skipped:
                self.skipped_steps += 1
                consecutive_skips += 1
                if consecutive_skips >= MAX_CONSECUTIVE_SKIPPED:
                    raise VisionlaunchError(
                        f"fp16 loss scaling skipped {consecutive_skips} optimizer steps in a row (up to step "
                        f"{self.step + 1}): the loss or gradients are not finite at any scale. Lower optim.lr, try "
                        f"train.precision=bf16 or no. {self._saved_state()}")
            else:
                consecutive_skips = 0
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.raw_model)
                totals += step_totals
                nonfinite |= ~torch.isfinite(step_loss)
            self.step += 1
            bar.update(1)
            if not bar.disable and time.perf_counter() - last_postfix > 1.0 and totals[3] > 0:
                # Refreshed by time, not by log_every, so short epochs show live numbers too (this rank's share).
                last_postfix = time.perf_counter()
                rate = totals[3].item() * acc.num_processes / max(last_postfix - t0, 1e-9)
                bar.set_postfix(loss=f"{step_loss.item():.4f}", acc=f"{100 * totals[1].item() / totals[3].item():.1f}%",
                                img_s=f"{rate:,.0f}", lr=f"{lr:.2e}")

            if self.step % cfg.train.log_every == 0:
                loss_value = mean_over_ranks(acc, step_loss).item()  # the global batch's loss, on every rank
                if not skipped and not torch.isfinite(torch.tensor(loss_value)):
                    self._nonfinite_error(f"at step {self.step} (epoch {epoch + 1})", loss_value)
                record = {"kind": "step", "split": "train", "epoch": epoch + 1, "step": self.step, "loss": loss_value,
                          "lr": lr, "time": round(self._elapsed(), 3)}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                if fp16:
                    record["skipped_steps"] = self.skipped_steps
                self.metrics.write(record)
                self.tracker.log_step(record)

            last_of_epoch = index + 1 == self.steps_per_epoch
            # Agreed every step (one tiny all-reduce with several processes); no signals configured, no check.
            stop = bool(cfg.train.preempt_signals) and any_rank(acc, self.watcher.requested)
            every = cfg.train.checkpoint_every
            if stop or (every and self.step % every == 0 and not last_of_epoch):  # the epoch end saves anyway
                if any_rank(acc, bool(nonfinite)):
                    self._nonfinite_error(f"before step {self.step} (epoch {epoch + 1})", float("nan"))
                seconds = seconds_before + time.perf_counter() - t0
                path = self._save_checkpoint(epoch, index + 1, totals, seconds)
                if stop:
                    bar.close()
                    raise Preempted(self.watcher.received or "a signal sent to another process", self.step, path)
        bar.close()
        if device.type == "cuda":  # the epoch's time includes the kernels still queued, not only their launch
            torch.cuda.synchronize(device)
        seconds = seconds_before + time.perf_counter() - t0
        totals = acc.reduce(totals, reduction="sum")
        loss_sum, top1, top5, n = totals.tolist()
        if not torch.isfinite(torch.tensor(loss_sum)):
            self._nonfinite_error(f"in epoch {epoch + 1}", loss_sum)
        n = max(n, 1)
        return {"loss": loss_sum / n, "acc": top1 / n, "acc5": top5 / n, "n": int(n),
                "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 1)}

    def _nonfinite_error(self, where: str, value: float) -> None:
        raise VisionlaunchError(
            f"the training loss became {value} {where}. Lower optim.lr, set optim.clip_grad_norm, check the data, or "
            f"try train.precision=no. {self._saved_state()}")

    def _saved_state(self) -> str:
        """What a run that stops on bad numbers leaves to go back to: only files that exist are named."""
        weights = rf.weights_file(self.run_path, "last")
        found = rf.complete_checkpoints(self.run_path / rf.CHECKPOINTS)
        kept = ([f"the last finished epoch's weights are in {weights}"] if weights.is_file() else []) + \
            ([f"the checkpoint {found[-1]} holds the last good state"] if found else [])
        if not kept:
            return "Nothing was saved before it happened (no epoch finished, no checkpoint written)."
        text = " and ".join(kept)
        return text[0].upper() + text[1:] + "."

    def _end_epoch(self, epoch: int, train_stats: dict) -> dict:
        cfg, acc = self.cfg, self.accelerator
        results = {"train": train_stats}
        for split, loader in self.eval_loaders.items():
            results[split] = evaluate(self.model, loader, self.pipeline, acc, self.eval_criterion, cfg.train.tta_flip)
        if self.ema is not None:
            ema_model = self.ema.model()
            for split, loader in self.eval_loaders.items():
                results[f"{split}_ema"] = evaluate(ema_model, loader, self.pipeline, acc, self.eval_criterion,
                                                   cfg.train.tta_flip)
        elapsed = self._elapsed()
        lr = self.optimizer.param_groups[0]["lr"]
        for split, r in results.items():
            self.metrics.write({"kind": "epoch", "split": split, "epoch": epoch + 1, "step": self.step, "lr": lr,
                                "time": round(elapsed, 3), **r})
        self.tracker.log_epoch(results, epoch + 1, self.step, round(elapsed, 3))
        self._save_weights("last", self.raw_model.state_dict(), epoch + 1, results)
        if "val" in results and results["val"]["acc"] > self.best["val_acc"]:
            self.best = {"val_acc": results["val"]["acc"], "epoch": epoch + 1,
                         "test_acc": results["test"]["acc"] if "test" in results else None}
            self._save_weights("best", self.raw_model.state_dict(), epoch + 1, results)
        if self.ema is not None:
            ema_state = self.ema.model().state_dict()
            # The file's results describe its own weights, so `visionlaunch evaluate --weights ema_last` compares
            # like with like.
            ema_results = {split[:-4]: r for split, r in results.items() if split.endswith("_ema")}
            self._save_weights("ema_last", ema_state, epoch + 1, ema_results)
            if "val_ema" in results and results["val_ema"]["acc"] > self.ema_best:
                self.ema_best = results["val_ema"]["acc"]
                self._save_weights("ema_best", ema_state, epoch + 1, ema_results)
        self.log(self._epoch_line(epoch, results, elapsed))
        zeros = torch.zeros(4, dtype=torch.float64, device=acc.device)
        self.last_results = results
        if self.early_stop.update(results, epoch + 1):  # before the checkpoint, which saves its counter
            self.log(f"early stopping after epoch {epoch + 1}: {cfg.train.early_stop_metric} has not improved for "
                     f"{self.early_stop.patience} epochs (best {self.early_stop.best:.4f} at epoch "
                     f"{self.early_stop.best_epoch})")
        path = self.last_checkpoint = self._save_checkpoint(epoch + 1, 0, zeros, 0.0)
        if cfg.train.preempt_signals and any_rank(acc, self.watcher.requested) and epoch + 1 < cfg.train.epochs \
                and not self.early_stop.stopped:
            raise Preempted(self.watcher.received or "a signal sent to another process", self.step, path)
        return results

    def _save_checkpoint(self, epoch: int, step_in_epoch: int, totals: torch.Tensor, epoch_seconds: float) -> Path:
        """Position (epoch, step_in_epoch) is where a resumed run starts: the epoch-end checkpoint of epoch e is
        (e + 1, 0); a mid-epoch one after k optimizer steps of epoch e is (e, k)."""
        meta = {
            "step": self.step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "finished": epoch == self.cfg.train.epochs or self.early_stop.stopped, "best": self.best,
            "ema_best": self.ema_best,
            "results": self.last_results if step_in_epoch == 0 else {}, "early_stop": self.early_stop.state_dict(),
            "elapsed": round(self._elapsed(), 3), "skipped_steps": self.skipped_steps,
            "metrics_bytes": rf.metrics_size(self.run_path) if self.is_main else 0,
            "world_size": self.accelerator.num_processes, "model": self.cfg.model.name,
            "config": self._config_dump(), "visionlaunch": __version__,
            "written": dt.datetime.now().isoformat(timespec="seconds"),
        }
        trainer_state = {"scheduler": self.scheduler.state_dict(),
                         "ema": self.ema.state_dict() if self.ema is not None else None}
        rank_state = {"pipeline": self.pipeline.state_dict(), "totals": totals.detach().cpu(),
                      "epoch_seconds": float(epoch_seconds)}
        return self.checkpoints.save(self.step, meta, trainer_state, rank_state)

    def _finish(self, results: dict) -> dict:
        cfg, acc = self.cfg, self.accelerator
        best = self.best
        test = results.get("test", {})
        final = {"kind": "final", "epochs": cfg.train.epochs, "steps": self.step, "time": round(self._elapsed(), 3),
                 "test_acc": test.get("acc"), "test_acc5": test.get("acc5"), "test_loss": test.get("loss"),
                 "best_val_acc": best.get("val_acc") if "epoch" in best else None,
                 "best_epoch": best.get("epoch"), "test_acc_at_best_val": best.get("test_acc")}
        if "test_ema" in results:
            final["test_ema_acc"] = results["test_ema"]["acc"]
        if cfg.train.precision == "fp16":
            final["skipped_steps"] = self.skipped_steps
        if self.early_stop.enabled:
            final["early_stop"] = self.early_stop.record()
        self.metrics.write(final)
        self.metrics.close()
        acc.wait_for_everyone()
        # A signal that came during the last epoch's evaluation promised a checkpoint: the final one is written.
        if cfg.train.preempt_signals and any_rank(acc, self.watcher.requested):
            raise Preempted(self.watcher.received or "a signal sent to another process", self.step,
                            self.last_checkpoint, finished=True)
        self.watcher.training_finished(
            (lambda name: Preempted(name, self.step, self.last_checkpoint, finished=True)) if self.is_main else None)
        figures = []
        if self.is_main and cfg.report.figures:
            self.log("drawing figures (curves, t-SNE, predictions, confusion matrix) ...")
            figures = make_figures(self.run_path, self.raw_model, self.data, self.pipeline, cfg, self.identity,
                                   device=acc.device)
        self.tracker.log_files(figures, self.run_path / rf.SUMMARY, self.step)
        self.tracker.log_final(final, self.step)
        if self.is_main:
            self.log(f"report: {write_report(self.run_path)}")
        if self.is_main and final["test_acc"] is not None:
            self.log(f"done in {final['time']:.1f} s: test accuracy {100 * final['test_acc']:.2f}%"
                     + (f", best val {100 * final['best_val_acc']:.2f}% at epoch {final['best_epoch']}"
                        if final["best_val_acc"] is not None else "") + f" -> {self.run_path}")
        acc.wait_for_everyone()
        return final

    def _epoch_line(self, epoch: int, results: dict, elapsed: float) -> str:
        parts = [f"epoch {epoch + 1:>3}/{self.cfg.train.epochs}"]
        for split in ("train", "val", "test", "test_ema"):
            if split in results:
                r = results[split]
                parts.append(f"{split} loss {r['loss']:.4f} acc {100 * r['acc']:6.2f}%")
        parts.append(f"{results['train']['images_per_s']:,.0f} img/s")
        parts.append(f"{elapsed:,.0f} s")
        return " | ".join(parts)

    def _save_weights(self, which: str, state: dict, epoch: int, results: dict) -> None:
        if not self.is_main:
            return
        state = {k: v.detach().cpu() for k, v in state.items()}
        path = rf.weights_file(self.run_path, which)
        try:
            atomic_torch_save({"model": state, "epoch": epoch, "results": results, "model_name": self.cfg.model.name,
                               "model_args": self.cfg.model.args, "in_shape": list(self.data.in_shape),
                               "classes": self.data.classes, "mean": list(self.data.mean), "std": list(self.data.std)},
                              path)
        except OSError as exc:  # disk full, file-size limit: the file keeps its previous content
            raise VisionlaunchError(
                f"could not write the weights: {describe_os_error(exc)} "
                + (f"{path.name} still holds an earlier epoch's weights." if path.is_file() else "")) from exc


def train(cfg: RunConfig, *, preset: str | None = None, argv: list[str] | None = None, verbose: bool = False) -> dict:
    try:
        return Trainer(cfg, preset=preset, argv=argv, verbose=verbose).fit()
    except Exception as exc:
        lost = peer_lost(exc, int(os.environ.get("WORLD_SIZE", "1")), cfg.train.dist_timeout_s)
        if lost is None:
            raise
        raise lost from None
