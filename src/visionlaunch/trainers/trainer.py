"""The Accelerate trainer: one path for one CPU, one GPU or many processes.

Reads top to bottom: set-up (`Trainer.__init__`, a list of named steps: everything is validated, including a
checkpoint to resume from, before the run folder exists) -> `fit`: epochs of optimizer steps (`_optimizer_step`:
train.grad_accum micro-batches each), a checkpoint every train.checkpoint_every steps and at each epoch end,
evaluation on val and test (and of the EMA weights) per epoch, the final record. Where training stands is one
`TrainState`, which is what a checkpoint stores. A preemption signal checkpoints and exits with status 75. The
command line then draws the figures and writes the report (`reports.artefacts.after_training`) inside the same
`with training(...)` block, so the signal handlers and the run folder's lock cover that too. Only the main process
writes files, prints, draws progress bars and talks to W&B; every process computes.

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
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from visionlaunch import __version__
from visionlaunch.atomic import atomic_write_text
from visionlaunch.config import RunConfig
from visionlaunch.datasets.loaders import make_loader
from visionlaunch.datasets.resized_crop import ResizedCrop
from visionlaunch.errors import VisionlaunchError, describe_os_error
from visionlaunch.ffcv_builders.requirements import require_ffcv
from visionlaunch.models import build_model
from visionlaunch.models.features import layer_names
from visionlaunch.models.summary import count_parameters, model_summary
from visionlaunch.models.weights import load_weights
from visionlaunch.progress import progress_bar
from visionlaunch.reports.analysis import final_record
from visionlaunch.trainers import checkpoint as ckpt
from visionlaunch.trainers.checkpoint import TrainState
from visionlaunch.trainers.data import DataBundle, prepare_data
from visionlaunch.trainers.distributed import (any_rank, broadcast_from_main, check_world_size, make_accelerator,
                                               mean_over_ranks, peer_lost, set_deterministic)
from visionlaunch.trainers.ema import ModelEMA
from visionlaunch.trainers.evaluation import Totals, evaluate
from visionlaunch.trainers.losses import CrossEntropyLoss
from visionlaunch.trainers.metrics import MetricsWriter, read_metrics
from visionlaunch.trainers.pipeline import BatchPipeline
from visionlaunch.trainers.preemption import Preempted, PreemptionWatcher, clear_marker, write_marker
from visionlaunch.trainers.rundir import (RunDirectory, atomic_torch_save, check_output_dir, default_run_name,
                                          only_job_files, read_run_identity, run_skeleton)
from visionlaunch.trainers.runlock import RunLock
from visionlaunch.trainers.schedules import build_optimizer, build_scheduler
from visionlaunch.trainers.trackers import RunTracker, check_tracker, new_run_id

# fp16: this many optimizer steps in a row skipped by the loss scaler means the loss itself is not finite,
# which no loss scale can fix (the scale has been halved this many times).
MAX_CONSECUTIVE_SKIPPED = 50


@dataclass
class SharedDecisions:
    """What the main process decides for every rank, sent to them in one broadcast."""
    plan: ckpt.ResumePlan  # the run folder, and the checkpoint to resume from (or None)
    replace: bool  # the folder exists and is to be replaced (output.overwrite, or restarting an unfinished run)
    betons: dict  # data.loader=ffcv: the .beton file of each split


@contextlib.contextmanager
def training(cfg: RunConfig, **kwargs) -> Iterator[Trainer]:
    """A set-up Trainer whose signal handlers, run-folder lock and trackers stay on for the whole `with` block
    (training and what follows it); a peer process's failure becomes one message (`PeerLost`)."""
    try:
        with Trainer(cfg, **kwargs) as trainer:
            yield trainer
    except Exception as exc:
        lost = peer_lost(exc, int(os.environ.get("WORLD_SIZE", "1")), cfg.train.dist_timeout_s)
        if lost is None:
            raise
        raise lost from None


class Trainer:
    def __init__(self, cfg: RunConfig, *, preset: str | None = None, argv: list[str] | None = None,
                 verbose: bool = False, data: DataBundle | None = None):
        """`data`: train on these tensors instead of reading cfg.data (benchmarks, tests); its name must be
        cfg.data.name. `verbose`: print the model's layer table too (it is always in summary.txt). Use it as
        `with Trainer(...) as t: t.fit()`: the block holds the signal handlers, the lock and the trackers."""
        self.lock: RunLock | None = None  # the run folder's lock, held by the main process until the block ends
        self.verbose, self.argv = verbose, argv if argv is not None else sys.argv
        try:
            self._start_processes(cfg)
            decided = self._decide_for_every_rank(cfg, preset, data)
            self._build_model()
            # Everything validated: now the run folder may exist. Set-up failures after this remove it again (a
            # resumed run's folder is never removed).
            self.run_dir = (RunDirectory.existing(self.run_path) if self.resuming else
                            RunDirectory(self.run_path, decided.replace)) if self.is_main else None
            try:
                self._build_loaders(decided.betons)
                self._build_optimization()
                self._restore()
                self._write_run_files()
                self._start_trackers()
            except BaseException:
                if self.run_dir is not None:
                    self.run_dir.discard()
                raise
        except BaseException:
            self.release_lock()
            raise

    def __enter__(self) -> Trainer:
        self.watcher.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if isinstance(exc, Preempted) and self.is_main:
                write_marker(self.run_path, exc)
            elif exc is None:  # the other ranks wait while the main process draws figures and writes the report
                self.accelerator.wait_for_everyone()
        finally:
            self.watcher.__exit__()
            self.metrics.close()
            self.accelerator.end_training()  # also finishes the W&B run; without it gloo groups sometimes abort
            self.release_lock()

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stderr)

    # ----------------------------------------------------------------------------------------------- set-up
    def _start_processes(self, cfg: RunConfig) -> None:
        """The Accelerator and the checks that need only it and the config (before anything is read)."""
        set_deterministic(cfg.train.deterministic)  # before the Accelerator touches CUDA (cuBLAS workspace)
        self.accelerator = acc = make_accelerator(cfg, training=True)
        self.is_main = acc.is_main_process
        self.watcher = PreemptionWatcher(cfg.train.preempt_signals, log=self.log)
        self.metrics = MetricsWriter(None)  # metrics.jsonl, opened by fit()
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
        if cfg.train.resume == "auto" and not cfg.output.name:
            self.log("NOTE: train.resume=auto finds a run by its folder name: set output.name for it to resume.")
        set_seed(cfg.train.seed)

    def _decide_for_every_rank(self, cfg: RunConfig, preset: str | None, data: DataBundle | None
                               ) -> SharedDecisions:
        """The main process locks the run folder, decides where training starts, reads the data (filling the cache
        the other ranks then read) and checks the checkpoint and the ffcv files; every rank gets its decision, or
        its VisionlaunchError, in one broadcast, so all of them go on or stop together."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", self._decide(cfg, preset, data))
            except VisionlaunchError as exc:
                outcome = ("error", str(exc))
        outcome = broadcast_from_main(self.accelerator, outcome)
        if outcome[0] == "error":
            raise VisionlaunchError(outcome[1])
        decided: SharedDecisions = outcome[1]
        if not self.is_main:
            self._read_data(cfg, data)
        self.run_path, self.resuming = decided.plan.run_path, decided.plan.checkpoint is not None
        self.plan = decided.plan
        return decided

    def _decide(self, cfg: RunConfig, preset: str | None, data: DataBundle | None) -> SharedDecisions:
        if cfg.data.loader == "ffcv":  # before anything is read or written: the message says how to install it
            require_ffcv()
        default_run_path = Path(cfg.output.dir).expanduser() / (cfg.output.name or default_run_name(preset))
        plan = ckpt.plan_resume(cfg.train.resume, default_run_path)
        # No other process may train into the folder, resume from it or replace it until this run ends; the plan
        # is made again once the lock is held, as the folder may have changed meanwhile.
        self.lock = RunLock(plan.run_path).acquire(log=self.log)
        plan = ckpt.plan_resume(cfg.train.resume, default_run_path)
        if plan.note:
            self.log(plan.note)
        replace = False
        if plan.checkpoint is None:
            restart = cfg.train.resume == "auto" and _unfinished_run(default_run_path)
            if restart and not only_job_files(default_run_path):
                self.log(f"no complete checkpoint in {default_run_path}: starting that run again")
            check_output_dir(default_run_path.parent, default_run_path.name, cfg.output.overwrite or restart)
            replace = cfg.output.overwrite or restart
        self._read_data(cfg, data)
        if plan.checkpoint is not None:
            ckpt.validate(plan.checkpoint, plan.meta, self.cfg.model_dump(mode="json"),
                          self.accelerator.num_processes, cfg.train.precision == "fp16")
        betons = {}
        if cfg.data.loader == "ffcv":  # missing files are written; stale, truncated or foreign ones refused
            from visionlaunch.ffcv_builders.prepare import ensure_betons
            splits = {"train": self.data.train, "val": self.data.val, "test": self.data.test}
            betons = ensure_betons(splits, self.data.name, cfg.data, log=self.log,
                                   progress=cfg.train.progress)
        return SharedDecisions(plan, replace, betons)

    def _read_data(self, cfg: RunConfig, data: DataBundle | None) -> None:
        """The data, and `self.cfg`: the config as used. After a fallback (the embedded MNIST sample) that is a
        copy naming the data really used, so that config.yaml and `visionlaunch evaluate` reload the same data."""
        self.data = data if data is not None else prepare_data(cfg.data, log=self.log,
                                                               progress=self.is_main and cfg.train.progress)
        if self.data.name != cfg.data.name:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"name": self.data.name,
                                                                              "fallback": "none"})})
        self.cfg = cfg

    def _build_model(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.model = build_model(cfg.model.name, self.data.in_shape, len(self.data.classes), cfg.model.args)
        if cfg.model.weights:
            load_weights(self.model, cfg.model.weights, cfg.model.name)
        if acc.num_processes > 1:  # one random stream per rank (dropout); the initial weights are the same everywhere
            set_seed((cfg.train.seed + acc.process_index) % 2**32)  # numpy takes 32-bit seeds
        self.summary = model_summary(self.model, self.data.in_shape)
        if cfg.report.figures and cfg.report.tsne_layer not in layer_names(self.model):
            raise VisionlaunchError(
                f"report.tsne_layer={cfg.report.tsne_layer!r} is not a layer of model {cfg.model.name!r}. Valid names: "
                f"{', '.join(layer_names(self.model)[:40])}.")

    def _build_loaders(self, betons: dict) -> None:
        cfg, acc = self.cfg, self.accelerator
        # The main process has just hashed every .beton against its manifest: not again there.
        loader_args = dict(seed=cfg.train.seed, device=acc.device, rank=acc.process_index, world=acc.num_processes,
                           num_workers=cfg.data.num_workers, channels_last=cfg.train.channels_last,
                           verify_beton=not self.is_main)
        crop = ResizedCrop(cfg.data.image_size, tuple(cfg.augment.crop_scale)) if cfg.data.image_size else None
        self.train_loader = make_loader(cfg.data.loader, self.data.train.images, self.data.train.labels,
                                        self.micro_batch, train=True, beton=betons.get("train"), augment=cfg.augment,
                                        resized_crop=crop, **loader_args)
        # An epoch is a whole number of optimizer steps; max_steps_per_epoch counts optimizer steps.
        self.steps_per_epoch = len(self.train_loader) // cfg.train.grad_accum
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        self.train_loader.max_steps = self.steps_per_epoch * cfg.train.grad_accum
        if self.steps_per_epoch == 0:
            raise VisionlaunchError(
                f"no training step fits in an epoch: {len(self.data.train)} training images cannot fill one batch "
                f"of {cfg.train.batch_size}. Lower train.batch_size or use more data.")
        eval_batch = max(1, cfg.train.eval_batch_size // acc.num_processes)
        self.eval_loaders = {
            split: make_loader(cfg.data.loader, ds.images, ds.labels, eval_batch, train=False, beton=betons.get(split),
                               **loader_args)
            for split, ds in (("val", self.data.val), ("test", self.data.test)) if ds is not None and len(ds)}
        for loader in (self.train_loader, *self.eval_loaders.values()):
            if loader.note:  # e.g. a dataset too big to stay resident on the device
                self.log(loader.note)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
        self.pipeline = BatchPipeline(cfg.augment, self.data.mean, self.data.std, acc.device,
                                      seed=cfg.train.seed + acc.process_index, channels_last=cfg.train.channels_last,
                                      dtype=half if cfg.data.half_inputs else torch.float32,
                                      loader_augments=self.train_loader.augments,
                                      resized_crop=None if self.train_loader.augments or self.train_loader.crops else crop)

    def _build_optimization(self) -> None:
        """Losses, model on the device, optimizer, schedule, EMA, compiled forward, checkpoint writer."""
        cfg, acc = self.cfg, self.accelerator
        self.criterion = CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        self.eval_criterion = CrossEntropyLoss()
        self.num_classes = len(self.data.classes)  # for the soft targets of mixup/cutmix
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model, self.optimizer = acc.prepare(self.model, build_optimizer(self.model, cfg.optim))
        # Kept out of prepare() and stepped once per optimizer step: see schedules.py.
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.optim.lr, self.steps_per_epoch,
                                         cfg.train.epochs)
        self.raw_model = acc.unwrap_model(self.model)
        self.ema = ModelEMA(self.raw_model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.forward_model = self.model
        if cfg.train.compile:
            if acc.device.type == "cpu":
                self.log("NOTE: train.compile on the CPU: compiling takes tens of seconds and small models often get "
                         "slower; it is meant for GPUs.")
            self.forward_model = torch.compile(self.model)  # forward only; checkpoints use the uncompiled module
        self.checkpoints = ckpt.CheckpointWriter(acc, self.run_path / "checkpoints", cfg.train.keep_checkpoints)

    def _restore(self) -> None:
        """Where training starts: the beginning, or exactly where the checkpoint stopped."""
        self.state = TrainState()
        self.resumed_epoch: dict | None = None  # a mid-epoch checkpoint's running totals of this rank
        self.last_checkpoint: Path | None = self.plan.checkpoint  # the newest end-of-epoch one, once written
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
        self.state = TrainState.from_meta(meta)
        self.resumed_epoch = rank_state
        if self.is_main:
            # Records written after the checkpoint are replayed by the resumed run: drop them, keep the rest.
            metrics = self.run_path / "metrics.jsonl"
            data = metrics.read_bytes()[:meta["metrics_bytes"]] if metrics.is_file() else b""
            with contextlib.suppress(FileNotFoundError):
                atomic_write_text(metrics, data.decode())
        if meta.get("finished"):
            self.log(f"{path} is the end of training: writing the final record and figures again")
        else:
            self.log(f"resuming from {path}: epoch {self.state.epoch + 1}, step {self.state.step_in_epoch}/"
                     f"{self.steps_per_epoch} of the epoch, global step {self.state.step}")

    def _write_run_files(self) -> None:
        """config.yaml, summary.txt and run.yaml (the run's identity; a resumed run keeps and extends it)."""
        if not self.is_main:
            return
        cfg, rd = self.cfg, self.run_dir.path
        saved = cfg.model_copy(deep=True)
        saved.train.resume = "none"  # config.yaml reruns the experiment from scratch
        atomic_write_text(rd / "config.yaml", saved.to_yaml())
        params = count_parameters(self.raw_model)
        atomic_write_text(rd / "summary.txt", f"{cfg.model.name} on {self.data.in_shape}: {params:,} trainable "
                                              f"parameters\n\n{self.summary}\n")
        previous = read_run_identity(rd) if self.resuming else {}
        now = dt.datetime.now().isoformat(timespec="seconds")
        identity = {
            "name": rd.name, "ident": cfg.resolved_ident(), "date": dt.date.today().isoformat(), "started": now,
            "command": shlex.join(self.argv), "visionlaunch": __version__, "git_commit": _git_commit(),
            "host": platform.node(), "python": platform.python_version(), "torch": str(torch.__version__),
            "device": str(self.accelerator.device), "processes": self.accelerator.num_processes,
            "precision": cfg.train.precision, "parameters": params, "data": self.data.note,
            "tracker_run_id": new_run_id(),
        }
        if previous:  # a resumed run keeps its identity (date on the figures, W&B run) and lists its sessions
            identity.update({k: previous[k] for k in ("ident", "date", "started", "tracker_run_id") if k in previous})
            identity["resumed"] = [*previous.get("resumed", []), {
                "at": now, "from": str(self.plan.checkpoint), "command": shlex.join(self.argv)}]
        atomic_write_text(rd / "run.yaml", yaml.safe_dump(identity, sort_keys=False))
        self.identity = identity

    def _start_trackers(self) -> None:
        self.accelerator.wait_for_everyone()
        identity = getattr(self, "identity", {})
        config = {**self.cfg.model_dump(mode="json"), "run": {k: v for k, v in identity.items() if k != "resumed"}}
        self.tracker = RunTracker(self.accelerator, self.cfg.tracker, self.run_path, self.run_path.name,
                                  identity.get("tracker_run_id", ""), config,
                                  self.state.step if self.resuming else None)

    # ------------------------------------------------------------------------------------------------- train
    def fit(self) -> dict:
        """Train to the end (or to an early stop) and write the final record, which it returns."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        self.log(f"visionlaunch {__version__} | {acc.num_processes} process(es) on {acc.device} | precision "
                 f"{cfg.train.precision} | global batch {cfg.train.batch_size} = {acc.num_processes} x "
                 f"{cfg.train.grad_accum} x {self.micro_batch}")
        self.log(self.data.note)
        if not self.resuming:  # the layer table is in summary.txt; a log gets it only when asked
            self.log(self.summary if self.verbose else
                     f"model {cfg.model.name}: {count_parameters(self.raw_model):,} trainable parameters (layers: "
                     f"{self.run_path / 'summary.txt'}; --verbose prints them here)")
        self.log(f"run folder: {self.run_path}")
        self.metrics = MetricsWriter(self.run_path / "metrics.jsonl" if self.is_main else None)
        if self.is_main:
            clear_marker(self.run_path)  # a resumed run is no longer the preempted one
        self._clock = time.perf_counter()
        while state.epoch < cfg.train.epochs and not state.early_stop.stopped:  # a run stopped early stays stopped
            self._end_epoch(self._train_epoch())
        return self._finish()

    def _elapsed(self) -> float:
        """Seconds of training over all sessions, brought up to date in the state."""
        now = time.perf_counter()
        self.state.elapsed += now - self._clock
        self._clock = now
        return self.state.elapsed

    def _train_epoch(self) -> dict:
        cfg, acc, state = self.cfg, self.accelerator, self.state
        epoch, start = state.epoch, state.step_in_epoch
        state.results = {}
        self.model.train()
        self.train_loader.set_epoch(epoch, start_batch=start * cfg.train.grad_accum)
        resumed, self.resumed_epoch = (self.resumed_epoch if start else None), None
        totals = Totals(acc.device, resumed["totals"] if resumed else None)  # this rank's samples this epoch
        seconds_before = resumed["epoch_seconds"] if resumed else 0.0
        self._consecutive_skips = 0
        bar = progress_bar(total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                           unit="step", disable=not (self.is_main and cfg.train.progress), leave=False,
                           dynamic_ncols=True)
        t0 = last_postfix = time.perf_counter()
        batches = iter(self.train_loader)
        for index in range(start, self.steps_per_epoch):
            step_loss, lr = self._optimizer_step(batches, totals)
            bar.update(1)
            if not bar.disable and time.perf_counter() - last_postfix > 1.0 and totals.sums[3] > 0:
                # Refreshed by time, not by log_every, so short epochs show live numbers too (this rank's share).
                last_postfix = time.perf_counter()
                rate = totals.sums[3].item() * acc.num_processes / max(last_postfix - t0, 1e-9)
                bar.set_postfix(loss=f"{step_loss.item():.4f}", acc=f"{100 * totals.sums[1].item() / totals.sums[3].item():.1f}%",
                                img_s=f"{rate:,.0f}", lr=f"{lr:.2e}")
            # Agreed every step (one tiny all-reduce with several processes); no signals configured, no check.
            stop = bool(cfg.train.preempt_signals) and any_rank(acc, self.watcher.requested)
            every, last_of_epoch = cfg.train.checkpoint_every, index + 1 == self.steps_per_epoch
            if stop or (every and state.step % every == 0 and not last_of_epoch):  # the epoch end saves anyway
                if any_rank(acc, not totals.loss_is_finite()):
                    self._nonfinite_error(f"before step {state.step} (epoch {epoch + 1})", float("nan"))
                path = self._save_checkpoint(totals, seconds_before + time.perf_counter() - t0)
                if stop:
                    bar.close()
                    raise Preempted(self.watcher.received or "a signal sent to another process", state.step, path)
        bar.close()
        if acc.device.type == "cuda":  # the epoch's time includes the kernels still queued, not only their launch
            torch.cuda.synchronize(acc.device)
        seconds = seconds_before + time.perf_counter() - t0
        stats = totals.result(acc)
        if not math.isfinite(stats["loss"]):
            self._nonfinite_error(f"in epoch {epoch + 1}", stats["loss"])
        return {**stats, "seconds": round(seconds, 3), "images_per_s": round(stats["n"] / max(seconds, 1e-9), 1)}

    def _optimizer_step(self, batches, epoch_totals: Totals) -> tuple[torch.Tensor, float]:
        """One optimizer step: train.grad_accum micro-batches (gradients all-reduced on the last one), clipping, the
        step (which fp16 loss scaling may skip), the schedule, the EMA and the step record. Returns the step's loss
        on this rank and the learning rate it used."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        accum, fp16 = cfg.train.grad_accum, cfg.train.precision == "fp16"
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        step_loss = torch.zeros((), device=acc.device)
        step_totals = Totals(acc.device)
        for micro in range(accum):
            images, labels = next(batches)
            with contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    inputs, targets = self.pipeline.train_targets(images, labels, self.num_classes)
                    logits = self.forward_model(inputs)
                    loss = self.criterion(logits, targets)
                acc.backward(loss / accum)
            step_totals.add(loss, logits, labels)  # with mixup: against the unmixed labels
            step_loss += loss.detach().float() / accum
        grad_norm = None
        if cfg.optim.clip_grad_norm:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
        self.optimizer.step()
        skipped = fp16 and self.optimizer.step_was_skipped  # the fp16 scaler found inf/nan gradients
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            state.skipped_steps += 1
            self._consecutive_skips += 1
            if self._consecutive_skips >= MAX_CONSECUTIVE_SKIPPED:
                raise VisionlaunchError(
                    f"fp16 loss scaling skipped {self._consecutive_skips} optimizer steps in a row (up to step "
                    f"{state.step + 1}): the loss or gradients are not finite at any scale. Lower optim.lr, try "
                    f"train.precision=bf16 or no. {self._saved_state()}")
        else:
            self._consecutive_skips = 0
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.raw_model)
            epoch_totals.merge(step_totals)
        state.step += 1
        state.step_in_epoch += 1
        if state.step % cfg.train.log_every == 0:
            loss_value = mean_over_ranks(acc, step_loss).item()  # the global batch's loss, on every rank
            if not skipped and not math.isfinite(loss_value):
                self._nonfinite_error(f"at step {state.step} (epoch {state.epoch + 1})", loss_value)
            record = {"kind": "step", "split": "train", "epoch": state.epoch + 1, "step": state.step,
                      "loss": loss_value, "lr": lr, "time": round(self._elapsed(), 3)}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if fp16:
                record["skipped_steps"] = state.skipped_steps
            self.metrics.write(record)
            self.tracker.log_step(record)
        return step_loss, lr

    def _nonfinite_error(self, where: str, value: float) -> None:
        raise VisionlaunchError(
            f"the training loss became {value} {where}. Lower optim.lr, set optim.clip_grad_norm, check the data, or "
            f"try train.precision=no. {self._saved_state()}")

    def _saved_state(self) -> str:
        """What a run that stops on bad numbers leaves to go back to: only files that exist are named."""
        weights = self.run_path / "weights" / "last.pt"
        found = ckpt.complete_checkpoints(self.run_path / "checkpoints")
        kept = ([f"the last finished epoch's weights are in {weights}"] if weights.is_file() else []) + \
            ([f"the checkpoint {found[-1]} holds the last good state"] if found else [])
        if not kept:
            return "Nothing was saved before it happened (no epoch finished, no checkpoint written)."
        text = " and ".join(kept)
        return text[0].upper() + text[1:] + "."

    def _end_epoch(self, train_stats: dict) -> None:
        """Evaluate, record, save the weights, check early stopping, checkpoint (the position: the next epoch)."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        epoch = state.epoch + 1  # the epoch that just ended, counted from 1
        results = {"train": train_stats}
        models = {"": self.model, **({"_ema": self.ema.model()} if self.ema is not None else {})}
        for suffix, model in models.items():
            for split, loader in self.eval_loaders.items():
                results[split + suffix] = evaluate(model, loader, self.pipeline, acc, self.eval_criterion,
                                                   cfg.train.tta_flip)
        elapsed = self._elapsed()
        lr = self.optimizer.param_groups[0]["lr"]
        for split, r in results.items():
            self.metrics.write({"kind": "epoch", "split": split, "epoch": epoch, "step": state.step, "lr": lr,
                                "time": round(elapsed, 3), **r})
        self.tracker.log_epoch(results, epoch, state.step, round(elapsed, 3))
        self._save_weights("last", self.raw_model.state_dict(), epoch, results)
        if "val" in results and results["val"]["acc"] > state.best["val_acc"]:
            state.best = {"val_acc": results["val"]["acc"], "epoch": epoch,
                          "test_acc": results["test"]["acc"] if "test" in results else None}
            self._save_weights("best", self.raw_model.state_dict(), epoch, results)
        if self.ema is not None:
            ema_state = self.ema.model().state_dict()
            # The file's results describe its own weights, so `visionlaunch evaluate --weights ema_last` compares
            # like with like.
            ema_results = {split[:-4]: r for split, r in results.items() if split.endswith("_ema")}
            self._save_weights("ema_last", ema_state, epoch, ema_results)
            if "val_ema" in results and results["val_ema"]["acc"] > state.ema_best:
                state.ema_best = results["val_ema"]["acc"]
                self._save_weights("ema_best", ema_state, epoch, ema_results)
        self.log(self._epoch_line(epoch, results, elapsed))
        state.results = results
        stop = state.early_stop
        if stop.update(results, epoch, cfg.train.early_stop_patience, cfg.train.early_stop_metric):
            self.log(f"early stopping after epoch {epoch}: {cfg.train.early_stop_metric} has not improved for "
                     f"{cfg.train.early_stop_patience} epochs (best {stop.best:.4f} at epoch {stop.best_epoch})")
        state.epoch, state.step_in_epoch = epoch, 0
        path = self.last_checkpoint = self._save_checkpoint(Totals(acc.device), 0.0)
        if cfg.train.preempt_signals and any_rank(acc, self.watcher.requested) and epoch < cfg.train.epochs \
                and not stop.stopped:
            raise Preempted(self.watcher.received or "a signal sent to another process", state.step, path)

    def _save_checkpoint(self, totals: Totals, epoch_seconds: float) -> Path:
        """The state at its current position, this rank's running totals of the epoch and the objects' states."""
        state, metrics_file = self.state, self.run_path / "metrics.jsonl"
        self._elapsed()
        meta = {"finished": state.epoch == self.cfg.train.epochs or state.early_stop.stopped,
                "metrics_bytes": metrics_file.stat().st_size if self.is_main and metrics_file.is_file() else 0,
                "world_size": self.accelerator.num_processes, "model": self.cfg.model.name,
                "config": self.cfg.model_dump(mode="json"), "visionlaunch": __version__,
                "written": dt.datetime.now().isoformat(timespec="seconds")}
        trainer_state = {"scheduler": self.scheduler.state_dict(),
                         "ema": self.ema.state_dict() if self.ema is not None else None}
        rank_state = {"pipeline": self.pipeline.state_dict(), "totals": totals.sums.detach().cpu(),
                      "epoch_seconds": float(epoch_seconds)}
        return self.checkpoints.save(state, meta, trainer_state, rank_state)

    def _finish(self) -> dict:
        cfg, acc, state = self.cfg, self.accelerator, self.state
        best, test = state.best, state.results.get("test", {})
        final = {"kind": "final", "epochs": cfg.train.epochs, "steps": state.step, "time": round(self._elapsed(), 3),
                 "test_acc": test.get("acc"), "test_acc5": test.get("acc5"), "test_loss": test.get("loss"),
                 "best_val_acc": best.get("val_acc") if "epoch" in best else None,
                 "best_epoch": best.get("epoch"), "test_acc_at_best_val": best.get("test_acc")}
        if "test_ema" in state.results:
            final["test_ema_acc"] = state.results["test_ema"]["acc"]
        if cfg.train.precision == "fp16":
            final["skipped_steps"] = state.skipped_steps
        if cfg.train.early_stop_patience:
            stop = state.early_stop
            final["early_stop"] = {"metric": cfg.train.early_stop_metric, "patience": cfg.train.early_stop_patience,
                                   "best": stop.best, "best_epoch": stop.best_epoch,
                                   "stopped_epoch": stop.stopped_epoch}
        self.metrics.write(final)
        self.metrics.close()
        acc.wait_for_everyone()
        # A signal that came during the last epoch's evaluation promised a checkpoint: the final one is written.
        if cfg.train.preempt_signals and any_rank(acc, self.watcher.requested):
            raise Preempted(self.watcher.received or "a signal sent to another process", state.step,
                            self.last_checkpoint, finished=True)
        self.watcher.training_finished(
            (lambda name: Preempted(name, state.step, self.last_checkpoint, finished=True)) if self.is_main else None)
        return final

    def _epoch_line(self, epoch: int, results: dict, elapsed: float) -> str:
        parts = [f"epoch {epoch:>3}/{self.cfg.train.epochs}"]
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
        path = self.run_dir.weights / f"{which}.pt"
        try:
            atomic_torch_save({"model": state, "epoch": epoch, "results": results, "model_name": self.cfg.model.name,
                               "model_args": self.cfg.model.args, "in_shape": list(self.data.in_shape),
                               "classes": self.data.classes, "mean": list(self.data.mean), "std": list(self.data.std)},
                              path)
        except OSError as exc:  # disk full, file-size limit: the file keeps its previous content
            raise VisionlaunchError(
                f"could not write the weights: {describe_os_error(exc)} "
                + (f"{path.name} still holds an earlier epoch's weights." if path.is_file() else "")) from exc


def _unfinished_run(path: Path) -> bool:
    """A run folder that was started but never finished (killed before its first checkpoint), or one that only
    holds the batch job that is about to start it (runs/<name>/slurm/, written by `visionlaunch submit`)."""
    if only_job_files(path) or run_skeleton(path):  # killed before it wrote run.yaml
        return True
    return (path / "run.yaml").is_file() and final_record(read_metrics(path / "metrics.jsonl")) is None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
