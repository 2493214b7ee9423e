"""The Accelerate trainer: one path for one CPU, one GPU or many processes.

Reads top to bottom: set up (validate everything before the run folder exists) -> epochs of training with
per-epoch evaluation on val and test -> weights, metrics and the assignment's figures in the run folder.
Only the main process writes files, prints and draws progress bars; every process computes.
"""

from __future__ import annotations

import datetime as dt
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from visionlaunch import __version__
from visionlaunch.atomic import atomic_write_text
from visionlaunch.config import RunConfig
from visionlaunch.datasets.loaders import make_loader
from visionlaunch.errors import VisionlaunchError
from visionlaunch.models import build_model
from visionlaunch.models.features import layer_names
from visionlaunch.models.summary import count_parameters, model_summary
from visionlaunch.trainers.artefacts import make_figures
from visionlaunch.trainers.data import DataBundle, prepare_data
from visionlaunch.trainers.losses import CrossEntropyLoss
from visionlaunch.trainers.metrics import MetricsWriter, topk_correct
from visionlaunch.trainers.pipeline import BatchPipeline
from visionlaunch.trainers.rundir import RunDirectory, atomic_torch_save, check_output_dir, default_run_name
from visionlaunch.trainers.schedules import build_optimizer, build_scheduler


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_accelerator(cfg: RunConfig) -> Accelerator:
    return Accelerator(mixed_precision=cfg.train.precision, cpu=cfg.train.device == "cpu")


@torch.no_grad()
def evaluate(model, loader, pipeline: BatchPipeline, accelerator: Accelerator, criterion) -> dict:
    """Loss and top-1/top-5 accuracy over every sample of `loader`, summed across processes."""
    model.eval()
    device = accelerator.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(pipeline.eval(images))
        loss = criterion(logits.float(), labels)
        top1, top5 = topk_correct(logits, labels)
        totals += torch.stack([loss.double() * len(labels), top1.double(), top5.double(),
                               torch.tensor(len(labels), dtype=torch.float64, device=device)])
    totals = accelerator.reduce(totals, reduction="sum")
    loss_sum, top1, top5, n = totals.tolist()
    n = max(n, 1)
    return {"loss": loss_sum / n, "acc": top1 / n, "acc5": top5 / n, "n": int(n)}


class Trainer:
    def __init__(self, cfg: RunConfig, *, preset: str | None = None, argv: list[str] | None = None):
        self.cfg = cfg
        self.argv = argv if argv is not None else sys.argv
        self.accelerator = make_accelerator(cfg)
        self.is_main = self.accelerator.is_main_process
        world = self.accelerator.num_processes
        if cfg.train.batch_size % world:
            raise VisionlaunchError(
                f"train.batch_size={cfg.train.batch_size} is the global batch size and must divide evenly across "
                f"{world} processes. Choose a multiple of {world}.")
        self.per_device_batch = cfg.train.batch_size // world

        # Validate what is cheap and certain to fail before reading data or creating anything.
        name = cfg.output.name or default_run_name(preset)
        self.run_path = check_output_dir(Path(cfg.output.dir).expanduser(), name, cfg.output.overwrite)
        set_seed(cfg.train.seed)

        with self.accelerator.main_process_first():  # one process fills the data cache, the others read it
            self.data: DataBundle = prepare_data(cfg.data, log=self.log, progress=self.is_main and cfg.train.progress)
        if self.data.name != cfg.data.name:  # record what was really used, so `evaluate` reloads the same data
            cfg.data.fallback = "none"
            cfg.data.name = self.data.name
        self.model = build_model(cfg.model.name, self.data.in_shape, len(self.data.classes), cfg.model.args)
        self.summary = model_summary(self.model, self.data.in_shape)
        if cfg.report.figures and cfg.report.tsne_layer not in layer_names(self.model):
            raise VisionlaunchError(
                f"report.tsne_layer={cfg.report.tsne_layer!r} is not a layer of model {cfg.model.name!r}. Valid names: "
                f"{', '.join(layer_names(self.model)[:40])}.")

        # Everything validated: now the run folder may exist. Set-up failures after this remove it again.
        self.run_dir = RunDirectory(self.run_path, cfg.output.overwrite) if self.is_main else None
        try:
            self._setup_training()
            if self.is_main:
                self._write_run_files(name)
        except BaseException:
            if self.run_dir is not None:
                self.run_dir.discard()
            raise

    def log(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message, file=sys.stderr)

    def _setup_training(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        device = acc.device
        loader_args = dict(seed=cfg.train.seed, device=device, rank=acc.process_index, world=acc.num_processes,
                           num_workers=cfg.data.num_workers)
        self.train_loader = make_loader(cfg.data.loader, self.data.train.images, self.data.train.labels,
                                        self.per_device_batch, train=True, max_steps=cfg.train.max_steps_per_epoch,
                                        **loader_args)
        if len(self.train_loader) == 0:
            raise VisionlaunchError(
                f"no training step fits in an epoch: {len(self.data.train)} training images cannot fill one batch "
                f"of {cfg.train.batch_size}. Lower train.batch_size or use more data.")
        eval_batch = max(1, cfg.train.eval_batch_size // acc.num_processes)
        self.eval_loaders = {
            split: make_loader(cfg.data.loader, ds.images, ds.labels, eval_batch, train=False, **loader_args)
            for split, ds in (("val", self.data.val), ("test", self.data.test)) if ds is not None and len(ds)}
        self.pipeline = BatchPipeline(cfg.augment, self.data.mean, self.data.std, device,
                                      seed=cfg.train.seed + acc.process_index)
        self.criterion = CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        self.eval_criterion = CrossEntropyLoss()
        optimizer = build_optimizer(self.model, cfg.optim)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        # Kept out of prepare(): see schedules.py.
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.optim.lr, len(self.train_loader),
                                         cfg.train.epochs)

    def _write_run_files(self, name: str) -> None:
        rd = self.run_dir.path
        atomic_write_text(rd / "config.yaml", self.cfg.to_yaml())
        params = count_parameters(self.accelerator.unwrap_model(self.model))
        atomic_write_text(rd / "summary.txt", f"{self.cfg.model.name} on {self.data.in_shape}: {params:,} trainable "
                                              f"parameters\n\n{self.summary}\n")
        identity = {
            "name": name, "ident": self.cfg.resolved_ident(), "date": dt.date.today().isoformat(),
            "started": dt.datetime.now().isoformat(timespec="seconds"), "command": shlex.join(self.argv),
            "visionlaunch": __version__, "git_commit": git_commit(), "host": platform.node(),
            "python": platform.python_version(), "torch": str(torch.__version__), "device": str(self.accelerator.device),
            "processes": self.accelerator.num_processes, "precision": self.cfg.train.precision,
            "parameters": params, "data": self.data.note,
        }
        atomic_write_text(rd / "run.yaml", yaml.safe_dump(identity, sort_keys=False))
        self.identity = identity

    def fit(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        self.log(f"visionlaunch {__version__} | {acc.num_processes} process(es) on {acc.device} | precision "
                 f"{cfg.train.precision}")
        self.log(self.data.note)
        self.log(self.summary)
        if self.is_main:
            self.log(f"run folder: {self.run_dir.path}")
        metrics = MetricsWriter(self.run_dir.path / "metrics.jsonl" if self.is_main else None)
        start = time.perf_counter()
        best = {"val_acc": -1.0}
        step = 0
        try:
            for epoch in range(cfg.train.epochs):
                step, train_stats = self._train_epoch(epoch, step, metrics, start)
                results = {"train": train_stats}
                for split, loader in self.eval_loaders.items():
                    results[split] = evaluate(self.model, loader, self.pipeline, acc, self.eval_criterion)
                elapsed = time.perf_counter() - start
                lr = self.optimizer.param_groups[0]["lr"]
                for split, r in results.items():
                    metrics.write({"kind": "epoch", "split": split, "epoch": epoch + 1, "step": step, "lr": lr,
                                   "time": round(elapsed, 3), **r})
                self._save_weights("last", epoch + 1, results)
                if "val" in results and results["val"]["acc"] > best["val_acc"]:
                    best = {"val_acc": results["val"]["acc"], "epoch": epoch + 1,
                            "test_acc": results["test"]["acc"] if "test" in results else None}
                    self._save_weights("best", epoch + 1, results)
                self.log(self._epoch_line(epoch, results, elapsed))
            wall = time.perf_counter() - start
            final = {"kind": "final", "epochs": cfg.train.epochs, "steps": step, "time": round(wall, 3),
                     "test_acc": results.get("test", {}).get("acc"), "test_acc5": results.get("test", {}).get("acc5"),
                     "test_loss": results.get("test", {}).get("loss"),
                     "best_val_acc": best.get("val_acc") if "epoch" in best else None,
                     "best_epoch": best.get("epoch"), "test_acc_at_best_val": best.get("test_acc")}
            metrics.write(final)
        finally:
            metrics.close()
        acc.wait_for_everyone()
        if self.is_main and cfg.report.figures:
            self.log("drawing figures (curves, t-SNE, predictions, confusion matrix) ...")
            make_figures(self.run_dir.path, acc.unwrap_model(self.model), self.data, self.pipeline, cfg,
                         self.identity, device=acc.device)
        if self.is_main:
            self.log(f"done in {final['time']:.1f} s: test accuracy {100 * final['test_acc']:.2f}%"
                     + (f", best val {100 * final['best_val_acc']:.2f}% at epoch {final['best_epoch']}"
                        if final["best_val_acc"] is not None else "") + f" -> {self.run_dir.path}")
        acc.end_training()
        return final

    def _train_epoch(self, epoch: int, step: int, metrics: MetricsWriter, start: float) -> tuple[int, dict]:
        cfg, acc = self.cfg, self.accelerator
        self.model.train()
        self.train_loader.set_epoch(epoch)
        device = acc.device
        totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
        bar = tqdm(total=len(self.train_loader), desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
                   disable=not (self.is_main and cfg.train.progress), leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        for images, labels in self.train_loader:
            with acc.autocast():
                logits = self.model(self.pipeline.train(images))
                loss = self.criterion(logits, labels)
            acc.backward(loss)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            top1, top5 = topk_correct(logits.detach(), labels)
            n = len(labels)
            totals += torch.stack([loss.detach().double() * n, top1.double(), top5.double(),
                                   torch.tensor(n, dtype=torch.float64, device=device)])
            if step % cfg.train.log_every == 0:
                loss_value = loss.item()
                if not torch.isfinite(torch.tensor(loss_value)):
                    raise VisionlaunchError(
                        f"the training loss became {loss_value} at step {step} (epoch {epoch + 1}). Lower optim.lr, "
                        "check the data, or try train.precision=no; the weights of the last finished epoch are in "
                        "weights/last.pt.")
                metrics.write({"kind": "step", "split": "train", "epoch": epoch + 1, "step": step, "loss": loss_value,
                               "lr": self.optimizer.param_groups[0]["lr"],
                               "time": round(time.perf_counter() - start, 3)})
                rate = totals[3].item() * acc.num_processes / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_value:.4f}", acc=f"{100 * totals[1].item() / totals[3].item():.1f}%",
                                img_s=f"{rate:,.0f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
        bar.close()
        seconds = time.perf_counter() - t0
        totals = acc.reduce(totals, reduction="sum")
        loss_sum, top1, top5, n = totals.tolist()
        if not torch.isfinite(torch.tensor(loss_sum)):
            raise VisionlaunchError(
                f"the training loss became non-finite in epoch {epoch + 1}. Lower optim.lr, check the data, or try "
                "train.precision=no; the weights of the last finished epoch are in weights/last.pt.")
        return step, {"loss": loss_sum / n, "acc": top1 / n, "acc5": top5 / n, "n": int(n),
                      "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}

    def _epoch_line(self, epoch: int, results: dict, elapsed: float) -> str:
        parts = [f"epoch {epoch + 1:>3}/{self.cfg.train.epochs}"]
        for split in ("train", "val", "test"):
            if split in results:
                r = results[split]
                parts.append(f"{split} loss {r['loss']:.4f} acc {100 * r['acc']:6.2f}%")
        parts.append(f"{results['train']['images_per_s']:,.0f} img/s")
        parts.append(f"{elapsed:,.0f} s")
        return " | ".join(parts)

    def _save_weights(self, which: str, epoch: int, results: dict) -> None:
        if not self.is_main:
            return
        state = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(self.model).state_dict().items()}
        atomic_torch_save({"model": state, "epoch": epoch, "results": results, "model_name": self.cfg.model.name,
                           "model_args": self.cfg.model.args, "in_shape": list(self.data.in_shape),
                           "classes": self.data.classes}, self.run_dir.weights / f"{which}.pt")


def train(cfg: RunConfig, *, preset: str | None = None, argv: list[str] | None = None) -> dict:
    return Trainer(cfg, preset=preset, argv=argv).fit()
