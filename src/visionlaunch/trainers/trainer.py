"""The Accelerate trainer: one path for one CPU, one GPU or many processes.

Reads top to bottom: set-up (`Trainer.__init__`: everything, a checkpoint to resume from included, is validated
before the run folder exists), then `fit`. Only the main process writes files, prints and talks to W&B.

What stays the same whatever the process count N and the accumulation A: train.batch_size is the global batch
of one optimizer step (each process runs micro-batches of batch_size / (N * A)), optim.lr is the learning rate
for that batch, the schedule counts optimizer steps, and step k of every rank together covers the same samples
as step k of one process. N processes then follow one process's trajectory up to float rounding, unless the
model has BatchNorm (statistics per rank's micro-batch) or draws random numbers (dropout, augmentation: one
stream per rank).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from visionlaunch import __version__
from visionlaunch import runfolder as rf
from visionlaunch.config import RunConfig
from visionlaunch.errors import VisionlaunchError
from visionlaunch.models.inspection import count_parameters, model_summary
from visionlaunch.progress import progress_bar
from visionlaunch.trainers import checkpoint as ckpt
from visionlaunch.trainers.checkpoint import TrainState
from visionlaunch.trainers.data import DataBundle
from visionlaunch.trainers.distributed import any_rank, peer_loss_reported, start_processes
from visionlaunch.trainers.ema import ModelEMA
from visionlaunch.trainers.evaluation import Totals, epoch_line, evaluate
from visionlaunch.trainers.losses import CrossEntropyLoss
from visionlaunch.trainers.preemption import Preempted, PreemptionWatcher
from visionlaunch.trainers.schedules import build_optimizer, build_scheduler
from visionlaunch.trainers.setup import (decide_for_every_rank, loaders_for, model_for, resized_crop_for,
                                         write_run_files)
from visionlaunch.trainers.trackers import RunTracker, check_tracker

# fp16: this many optimizer steps in a row skipped by the loss scaler means the loss itself is not finite,
# which no loss scale can fix (the scale has been halved this many times).
MAX_CONSECUTIVE_SKIPPED = 50


@contextlib.contextmanager
def training(cfg: RunConfig, **kwargs) -> Iterator[Trainer]:
    """A set-up Trainer whose signal handlers, run-folder lock and trackers last the whole `with` block; a peer
    process's failure becomes one message (`PeerLost`), printed before the Trainer's teardown."""
    with peer_loss_reported(cfg.train.dist_timeout_s):
        trainer = Trainer(cfg, **kwargs)
    with trainer, peer_loss_reported(cfg.train.dist_timeout_s):
        yield trainer


class Trainer:
    def __init__(self, cfg: RunConfig, *, preset: str | None = None, argv: list[str] | None = None,
                 verbose: bool = False, data: DataBundle | None = None):
        """`data`: train on these tensors instead of reading cfg.data (benchmarks, tests); its name must be
        cfg.data.name. `verbose`: print the model's layer table too (it is always in summary.txt). Use it as
        `with Trainer(...) as t: t.fit()`: the block holds the signal handlers, the lock and the trackers."""
        self.verbose, self.argv = verbose, argv if argv is not None else sys.argv
        with contextlib.ExitStack() as undo:  # what a failed set-up gives back (nothing once it has succeeded)
            self._start_processes(cfg)
            decided, self.data, self.cfg, self.lock = decide_for_every_rank(cfg, preset, data, self.accelerator,
                                                                            self.precision, self.log)
            if self.lock is not None:
                undo.callback(self.lock.release)
            self.plan, self.run_path = decided.plan, decided.plan.run_path
            self.resuming = self.plan.checkpoint is not None
            self.model = model_for(self.cfg, self.data, self.accelerator)
            self.summary = model_summary(self.model, self.data.in_shape)
            # Everything validated: now the run folder may exist. Set-up failures after this remove it again (a
            # resumed run's folder is never removed).
            if self.is_main:
                run_dir = (rf.RunDirectory.existing(self.run_path) if self.resuming else
                           rf.RunDirectory(self.run_path, decided.replace))
                undo.callback(run_dir.discard)
            self._build_loaders(decided.betons)
            self._build_optimization()
            self._restore()
            self.identity = write_run_files(self.run_path, self.cfg, self.data, self.raw_model, self.summary,
                                            self.accelerator, self.precision, self.argv,
                                            self.plan.checkpoint) if self.is_main else {}
            self.accelerator.wait_for_everyone()
            self.tracker = RunTracker(self.accelerator, self.cfg, self.run_path, self.identity,
                                      self.state.step if self.resuming else None)
            undo.pop_all()

    def __enter__(self) -> Trainer:
        self.watcher.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if isinstance(exc, Preempted) and self.is_main:
                rf.write_preempted(self.run_path, exc.signal_name, exc.step, exc.checkpoint)
            elif exc is None:  # the other ranks wait while the main process draws figures and writes the report
                with peer_loss_reported(self.cfg.train.dist_timeout_s):
                    self.accelerator.wait_for_everyone()
        finally:
            self.watcher.__exit__()
            self.metrics.close()
            self.accelerator.end_training()  # also finishes the W&B run; without it gloo groups sometimes abort
            if self.lock is not None:
                self.lock.release()

    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stderr)

    # ----------------------------------------------------------------------------------------------- set-up
    def _start_processes(self, cfg: RunConfig) -> None:
        """The Accelerator, and the checks that need only it and the config (before anything is read)."""
        self.accelerator, self.precision = acc, precision = start_processes(cfg)
        self.is_main = acc.is_main_process
        if precision.note:
            self.log(precision.note)
        self.watcher = PreemptionWatcher(cfg.train.preempt_signals, log=self.log)
        self.metrics = rf.MetricsWriter(None)  # metrics.jsonl, opened by fit()
        self.micro_batch = cfg.train.batch_size // (acc.num_processes * cfg.train.grad_accum)
        check_tracker(cfg.tracker)
        if cfg.train.resume == "auto" and not cfg.output.name:
            self.log("NOTE: train.resume=auto finds a run by its folder name: set output.name for it to resume.")
        set_seed(cfg.train.seed)

    def _build_loaders(self, betons: dict) -> None:
        # The main process has just hashed every .beton against its manifest: not again there.
        self.train_loader, self.eval_loaders, self.steps_per_epoch, self.pipeline = loaders_for(
            self.cfg, self.data, self.accelerator, self.micro_batch, betons, not self.is_main)
        self.crop = resized_crop_for(self.cfg)  # its size per epoch goes into the epoch records
        for loader in (self.train_loader, *self.eval_loaders.values()):
            if loader.note:  # e.g. a dataset too big to stay resident on the device
                self.log(loader.note)

    def _build_optimization(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.criterion = CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        self.eval_criterion = CrossEntropyLoss()
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        lr = cfg.optim.peak_lr(cfg.train.batch_size)
        if cfg.optim.lr_scaling == "linear":
            self.log(f"peak learning rate {lr:g} = optim.lr {cfg.optim.lr:g} per 256 images x train.batch_size "
                     f"{cfg.train.batch_size} / 256 (optim.lr_scaling=linear)")
        self.model, self.optimizer = acc.prepare(self.model, build_optimizer(self.model, cfg.optim, lr))
        # Kept out of prepare() and stepped once per optimizer step: see schedules.py.
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, lr, self.steps_per_epoch, cfg.train.epochs)
        self.raw_model = acc.unwrap_model(self.model)
        self.ema = ModelEMA(self.raw_model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.forward_model = self.model
        if cfg.train.compile:
            if acc.device.type == "cpu":
                self.log("NOTE: train.compile on the CPU: compiling takes tens of seconds and small models often get "
                         "slower; it is meant for GPUs.")
            self.forward_model = torch.compile(self.model)  # forward only; checkpoints use the uncompiled module
        self.checkpoints = ckpt.Checkpoints(acc, self.run_path / rf.CHECKPOINTS, cfg, self.precision.name,
                                            self.scheduler, self.ema, self.pipeline)

    def _restore(self) -> None:
        """Where training starts: the beginning, or exactly where the checkpoint stopped."""
        self.state = TrainState()
        self.resumed_epoch: dict | None = None  # a mid-epoch checkpoint's running totals of this rank
        self.last_checkpoint: Path | None = self.plan.checkpoint  # the newest end-of-epoch one, once written
        if not self.resuming:
            return
        path, meta = self.plan.checkpoint, self.plan.meta
        self.resumed_epoch = self.checkpoints.restore(path)
        self.state = TrainState.from_meta(meta)
        if self.is_main:
            # Records written after the checkpoint are replayed by the resumed run: drop them, keep the rest.
            rf.truncate_metrics(self.run_path, meta["metrics_bytes"])
        if meta.get("finished"):
            self.log(f"{path} is the end of training: writing the final record and figures again")
        else:
            self.log(f"resuming from {path}: epoch {self.state.epoch + 1}, step {self.state.step_in_epoch}/"
                     f"{self.steps_per_epoch} of the epoch, global step {self.state.step}")

    # ------------------------------------------------------------------------------------------------- train
    def fit(self) -> dict:
        """Train to the end (or to an early stop) and write the final record, which it returns."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        self.log(f"visionlaunch {__version__} | {acc.num_processes} process(es) on {acc.device} | precision "
                 f"{self.precision.name} | global batch {cfg.train.batch_size} = {acc.num_processes} x "
                 f"{cfg.train.grad_accum} x {self.micro_batch}")
        self.log(f"precision {self.precision.reason}")
        self.log(self.data.note)
        if not self.resuming:  # the layer table is in summary.txt; a log gets it only when asked
            self.log(self.summary if self.verbose else
                     f"model {cfg.model.name}: {count_parameters(self.raw_model):,} trainable parameters (layers: "
                     f"{self.run_path / rf.SUMMARY}; --verbose prints them here)")
        self.log(f"run folder: {self.run_path}")
        self.metrics = rf.MetricsWriter(self.run_path / rf.METRICS if self.is_main else None)
        if self.is_main:
            rf.clear_preempted(self.run_path)  # a resumed run is no longer the preempted one
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
        self.pipeline.set_epoch(epoch)  # progressive resizing: the crop size is the epoch's (resolution:)
        resumed, self.resumed_epoch = (self.resumed_epoch if start else None), None
        totals = Totals(acc.device, resumed["totals"] if resumed else None)  # this rank's samples this epoch
        seconds_before = resumed["epoch_seconds"] if resumed else 0.0
        self._consecutive_skips = 0
        with progress_bar(total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                          unit="step", disable=not (self.is_main and cfg.train.progress), leave=False,
                          dynamic_ncols=True) as bar:
            t0 = last_postfix = time.perf_counter()
            batches = iter(self.train_loader)
            for index in range(start, self.steps_per_epoch):
                step_loss, lr = self._optimizer_step(batches, totals)
                bar.update(1)
                if not bar.disable and time.perf_counter() - last_postfix > 1.0 and totals.sums[3] > 0:
                    # Refreshed by time, not by log_every, so short epochs show live numbers too (this rank's share).
                    last_postfix, (_, top1, _, n) = time.perf_counter(), totals.sums.tolist()
                    bar.set_postfix(loss=f"{step_loss.item():.4f}", acc=f"{100 * top1 / n:.1f}%", lr=f"{lr:.2e}",
                                    img_s=f"{n * acc.num_processes / max(last_postfix - t0, 1e-9):,.0f}")
                stop = self._preemption_requested()
                every, last_of_epoch = cfg.train.checkpoint_every, index + 1 == self.steps_per_epoch
                if stop or (every and state.step % every == 0 and not last_of_epoch):  # the epoch end saves anyway
                    if any_rank(acc, not torch.isfinite(totals.sums[0])):  # the sum of the epoch's losses so far
                        self._nonfinite_error(f"before step {state.step} (epoch {epoch + 1})", float("nan"))
                    path = self._save_checkpoint(totals, seconds_before + time.perf_counter() - t0)
                    if stop:
                        raise self._preempted(path)
        if acc.device.type == "cuda":  # the epoch's time includes the kernels still queued, not only their launch
            torch.cuda.synchronize(acc.device)
        seconds = seconds_before + time.perf_counter() - t0
        stats = totals.result(acc)
        if not math.isfinite(stats["loss"]):
            self._nonfinite_error(f"in epoch {epoch + 1}", stats["loss"])
        # The crop side of the epoch with data.image_size: recomputed from the epoch (and the config) on resume.
        size = {"resolution": self.crop.size_at(epoch)} if self.crop is not None else {}
        return {**stats, "seconds": round(seconds, 3), "images_per_s": round(stats["n"] / max(seconds, 1e-9), 1),
                **size}

    def _optimizer_step(self, batches, epoch_totals: Totals) -> tuple[torch.Tensor, float]:
        """One optimizer step: train.grad_accum micro-batches (gradients all-reduced on the last one), clipping, the
        step (which fp16 loss scaling may skip), the schedule, the EMA and the step record. Returns the step's loss
        on this rank and the learning rate it used."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        accum, fp16 = cfg.train.grad_accum, self.precision.name == "fp16"
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        step_loss = torch.zeros((), device=acc.device)
        step_totals = Totals(acc.device)
        for micro in range(accum):
            images, labels = next(batches)
            with contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    inputs, targets = self.pipeline.train_targets(images, labels, len(self.data.classes))
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
                    f"train.precision=bf16 or fp32. {ckpt.what_was_saved(self.run_path)}")
        else:
            self._consecutive_skips = 0
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.raw_model)
            epoch_totals.sums += step_totals.sums
        state.step += 1
        state.step_in_epoch += 1
        if state.step % cfg.train.log_every == 0:
            # The global batch's loss, on every rank (each rank's weighs the same: equal per-rank batches).
            loss_value = acc.reduce(step_loss.reshape(1), reduction="mean").item()
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
            f"try train.precision=fp32. {ckpt.what_was_saved(self.run_path)}")

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
        self.log(epoch_line(epoch, cfg.train.epochs, results, elapsed))
        state.results = results
        stop = state.early_stop
        if stop.update(results, epoch, cfg.train.early_stop_patience, cfg.train.early_stop_metric):
            self.log(f"early stopping after epoch {epoch}: {cfg.train.early_stop_metric} has not improved for "
                     f"{cfg.train.early_stop_patience} epochs (best {stop.best:.4f} at epoch {stop.best_epoch})")
        state.epoch, state.step_in_epoch = epoch, 0
        self.last_checkpoint = self._save_checkpoint(Totals(acc.device), 0.0)
        if epoch < cfg.train.epochs and not stop.stopped and self._preemption_requested():
            raise self._preempted(self.last_checkpoint)

    def _save_checkpoint(self, totals: Totals, epoch_seconds: float) -> Path:
        """The state at its current position, with this rank's running totals and seconds of the epoch."""
        self._elapsed()
        return self.checkpoints.save(self.state, totals.sums, epoch_seconds)

    def _finish(self) -> dict:
        cfg, acc, state = self.cfg, self.accelerator, self.state
        self._elapsed()
        final = state.final_record(cfg, self.precision.name)
        self.metrics.write(final)
        acc.wait_for_everyone()
        # A signal that came during the last epoch's evaluation promised a checkpoint: the final one is written.
        if self._preemption_requested():
            raise self._preempted(self.last_checkpoint, finished=True)
        self.watcher.training_finished(
            (lambda name: Preempted(name, state.step, self.last_checkpoint, finished=True)) if self.is_main else None)
        return final

    def _preemption_requested(self) -> bool:
        """Whether any rank got a preemption signal, agreed by every rank at the same step (no signals, no check)."""
        return bool(self.cfg.train.preempt_signals) and any_rank(self.accelerator, self.watcher.requested)

    def _preempted(self, checkpoint: Path, finished: bool = False) -> Preempted:
        return Preempted(self.watcher.received or "a signal sent to another process", self.state.step, checkpoint,
                         finished=finished)

    def _save_weights(self, which: str, model_state: dict, epoch: int, results: dict) -> None:
        if self.is_main:
            ckpt.save_weights(rf.weights_file(self.run_path, which), model_state, epoch, results, self.cfg, self.data)
