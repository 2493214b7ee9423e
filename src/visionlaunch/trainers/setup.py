"""What a run needs before its first step, one function per thing, called in order by `Trainer.__init__`: the
decisions every rank shares, the data and the config as used, the model, the loaders and the run's own files."""

from __future__ import annotations

import datetime as dt
import platform
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate.utils import broadcast_object_list, set_seed

from visionlaunch import __version__
from visionlaunch import runfolder as rf
from visionlaunch.atomic import atomic_write_text
from visionlaunch.config import RunConfig
from visionlaunch.datasets.augment import BatchPipeline
from visionlaunch.datasets.loaders import epoch_steps
from visionlaunch.datasets.mixed_size import ResizedCrop
from visionlaunch.errors import VisionlaunchError
from visionlaunch.ffcv_builders import require_ffcv
from visionlaunch.models import build_model
from visionlaunch.models.inspection import count_parameters, layer_names
from visionlaunch.models.weights import load_weights
from visionlaunch.trainers import checkpoint as ckpt
from visionlaunch.trainers import memory_plan
from visionlaunch.trainers.data import DataBundle, prepare_data, split_loader
from visionlaunch.trainers.precision import HALF_TYPES, Precision
from visionlaunch.trainers.runlock import RunLock


@dataclass
class SharedDecisions:
    """What the main process decides for every rank, sent to them in one broadcast."""
    plan: ckpt.ResumePlan  # the run folder, and the checkpoint to resume from (or None)
    replace: bool  # the folder exists and is to be replaced (output.overwrite, or restarting an unfinished run)
    betons: dict  # data.loader=ffcv: the .beton file of each split
    out_of_core: bool | None  # the training split read out of core (None: the data was given, not planned)


def decide_for_every_rank(cfg: RunConfig, preset: str | None, data: DataBundle | None, accelerator,
                          precision: Precision, log) -> tuple[SharedDecisions, DataBundle, RunConfig, RunLock | None]:
    """The main process locks the run folder, decides where training starts, reads the data (filling the cache
    the other ranks then read) and checks the checkpoint and the ffcv files; every rank gets its decision, or its
    VisionlaunchError, in one broadcast, so all of them go on or stop together; the main process keeps the lock."""
    outcome, lock = None, None
    if accelerator.is_main_process:
        try:
            if cfg.data.loader == "ffcv":  # before anything is read or written: the message says how to install it
                require_ffcv()
            run_path = Path(cfg.output.dir).expanduser() / (cfg.output.name or rf.default_run_name(preset))
            # Held until the run ends: no other process may train into the folder, resume from it or replace it.
            lock = RunLock(ckpt.plan_resume(cfg.train.resume, run_path).run_path).acquire(log=log)
            plan, replace = plan_start(cfg, run_path, log)
            data, used, out_of_core = read_data(cfg, data, log, cfg.train.progress, accelerator.num_processes)
            if plan.checkpoint is not None:
                ckpt.validate(plan.checkpoint, plan.meta, used.model_dump(mode="json"), accelerator.num_processes,
                              precision)
            betons = {}
            if used.data.loader == "ffcv":  # missing files are written; stale, truncated or foreign ones refused
                from visionlaunch.ffcv_builders.prepare import ensure_betons
                betons = ensure_betons({"train": data.train, "val": data.val, "test": data.test}, data.name,
                                       cfg.data, log=log, progress=cfg.train.progress)
            outcome = ("ok", SharedDecisions(plan, replace, betons, out_of_core))
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if not isinstance(exc, VisionlaunchError):
                raise
            outcome = ("error", str(exc))
    outcome = broadcast_object_list([outcome], from_process=0)[0]  # None on the other ranks until now
    if outcome[0] == "error":
        raise VisionlaunchError(outcome[1])
    if not accelerator.is_main_process:
        data, used, _ = read_data(cfg, data, log, False, accelerator.num_processes, outcome[1].out_of_core)
    return outcome[1], data, used, lock


def read_data(cfg: RunConfig, data: DataBundle | None, log, progress: bool, processes: int = 1,
              out_of_core: bool | None = None) -> tuple[DataBundle, RunConfig, bool | None]:
    """The data (given, or read from cfg.data), the config as used, and whether the training split is read out of
    core: planned here from its decoded size (memory_plan.py, whose lines are logged), or the main process's
    `out_of_core` on the other ranks. The config as used names the data really used, so that config.yaml and
    `visionlaunch evaluate` reload the same data: the fallback (the embedded MNIST sample), and where the data
    lived (data.residency, and data.loader when the plan chose torch). The config itself is never changed."""
    decided = {}

    def plan(train, test_bytes: int) -> bool:
        if out_of_core is None:
            p = memory_plan.plan_residency(cfg.data, train, test_bytes, memory_plan.node_processes(processes),
                                           loader_set="loader" in cfg.data.model_fields_set)
            for line in p.lines:
                log(line)
            decided.update(out=p.out_of_core, loader=p.loader)
        else:
            # the main process's plan: out of core, ffcv stays ffcv (its .beton) and any other loader becomes torch
            decided.update(out=out_of_core, loader=("ffcv" if cfg.data.loader == "ffcv" else "torch") if out_of_core
                           else cfg.data.loader)
        return decided["out"]

    data = data if data is not None else prepare_data(cfg.data, log=log, progress=progress, plan=plan)
    used = {}
    if data.name != cfg.data.name:
        used.update(name=data.name, fallback="none", val_size=data.val_size)
    if decided:
        used.update(residency="disk" if decided["out"] else "memory", loader=decided["loader"])
    if used:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=used)})
    return data, cfg, decided.get("out")


# A run folder that was started but never finished (killed before its first checkpoint), or one that only holds
# the batch job that is about to start it (runs/<name>/slurm/, written by `visionlaunch submit`).
UNFINISHED = (rf.FolderState.EMPTY, rf.FolderState.JOB_ONLY, rf.FolderState.STARTED, rf.FolderState.PREEMPTED)


def plan_start(cfg: RunConfig, run_path: Path, log) -> tuple[ckpt.ResumePlan, bool]:
    """Main process, the run folder locked: where training starts, and whether an existing folder is to be replaced
    (output.overwrite, or restarting an unfinished run)."""
    plan = ckpt.plan_resume(cfg.train.resume, run_path)  # again, under the lock: the folder may have changed meanwhile
    if plan.note:
        log(plan.note)
    if plan.checkpoint is not None:
        return plan, False
    state = rf.folder_state(run_path)
    restart = cfg.train.resume == "auto" and state in UNFINISHED
    if restart and state is not rf.FolderState.JOB_ONLY:
        log(f"no complete checkpoint in {run_path}: starting that run again")
    rf.check_output_dir(run_path.parent, run_path.name, cfg.output.overwrite or restart)
    return plan, cfg.output.overwrite or restart


def model_for(cfg: RunConfig, data: DataBundle, accelerator) -> torch.nn.Module:
    """The model of cfg.model for this data (with its starting weights), checked against report.tsne_layer. The
    initial weights are the same on every rank; from here on each rank draws its own random numbers (dropout)."""
    model = build_model(cfg.model.name, data.in_shape, len(data.classes), cfg.model.args)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights, cfg.model.name)
    if accelerator.num_processes > 1:
        set_seed((cfg.train.seed + accelerator.process_index) % 2**32)  # numpy takes 32-bit seeds
    if cfg.report.figures and cfg.report.tsne_layer not in layer_names(model):
        raise VisionlaunchError(
            f"report.tsne_layer={cfg.report.tsne_layer!r} is not a layer of model {cfg.model.name!r}. Valid names: "
            f"{', '.join(layer_names(model)[:40])}.")
    return model


def loaders_for(cfg: RunConfig, data: DataBundle, accelerator, micro_batch: int, betons: dict,
                verify_beton: bool) -> tuple[object, dict, int, BatchPipeline]:
    """The training loader, the evaluation loaders (split name -> loader, for val and test when they hold images),
    the optimizer steps of an epoch and the batch pipeline."""
    acc = accelerator
    common = dict(seed=cfg.train.seed, device=acc.device, rank=acc.process_index, world=acc.num_processes,
                  num_workers=cfg.data.num_workers, channels_last=cfg.train.channels_last, verify_beton=verify_beton)
    crop = resized_crop_for(cfg)
    # An epoch is a whole number of optimizer steps (each of grad_accum micro-batches per rank);
    # max_steps_per_epoch counts optimizer steps.
    steps = epoch_steps(len(data.train), micro_batch, train=True, world=acc.num_processes) // cfg.train.grad_accum
    steps = min(steps, cfg.train.max_steps_per_epoch or steps)
    if steps == 0:
        raise VisionlaunchError(
            f"no training step fits in an epoch: {len(data.train)} training images cannot fill one batch "
            f"of {cfg.train.batch_size}. Lower train.batch_size or use more data.")
    train = split_loader(cfg.data.loader, data.train, micro_batch, train=True, beton=betons.get("train"),
                         augment=cfg.augment, resized_crop=crop, max_steps=steps * cfg.train.grad_accum,
                         order=memory_plan.OUT_OF_CORE_ORDER, **common)
    eval_batch = max(1, cfg.train.eval_batch_size // acc.num_processes)
    evals = {split: split_loader(cfg.data.loader, ds, eval_batch, train=False, beton=betons.get(split), **common)
             for split, ds in (("val", data.val), ("test", data.test)) if ds is not None and len(ds)}
    pipeline = batch_pipeline(cfg, data, acc.device, cfg.train.seed + acc.process_index, half_type(acc),
                              loader_augments=train.augments,
                              resized_crop=None if train.augments or train.crops else crop)
    return train, evals, steps, pipeline


def resized_crop_for(cfg: RunConfig) -> ResizedCrop | None:
    """The training view of data.image_size (its size per epoch with progressive resizing), None without it."""
    if not cfg.data.image_size:
        return None
    return ResizedCrop(cfg.data.image_size, tuple(cfg.augment.crop_scale), cfg.resolution.ramp())


def half_type(accelerator) -> torch.dtype | None:
    """The autocast type of an Accelerator's mixed precision (the run's precision as resolved), None in fp32."""
    return HALF_TYPES.get(accelerator.mixed_precision)


def batch_pipeline(cfg: RunConfig, data: DataBundle, device: torch.device, seed: int, half: torch.dtype | None, *,
                   loader_augments: bool = False, resized_crop: ResizedCrop | None = None) -> BatchPipeline:
    """The run's batch pipeline: the data's normalisation, the run's augmentation, and inputs in `half` (the half
    type the run computes in, None in fp32) when data.half_inputs is set. `visionlaunch evaluate` builds it here
    too, so that it feeds the model exactly what training fed it."""
    half_inputs = cfg.data.half_inputs and half is not None  # with auto resolved to fp32: float32 inputs
    return BatchPipeline(cfg.augment, data.mean, data.std, device, seed=seed, channels_last=cfg.train.channels_last,
                         dtype=half if half_inputs else torch.float32, loader_augments=loader_augments,
                         resized_crop=resized_crop)


def write_run_files(run_path: Path, cfg: RunConfig, data: DataBundle, model: torch.nn.Module, summary: str,
                    accelerator, precision: Precision, argv: list[str], resumed_from: Path | None) -> dict:
    """config.yaml, summary.txt and run.yaml (the run's identity, which a resumed run keeps and extends); returns
    the identity."""
    # config.yaml reruns the experiment from scratch
    saved = cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": "none"})})
    atomic_write_text(run_path / rf.CONFIG, saved.to_yaml())
    params = count_parameters(model)
    atomic_write_text(run_path / rf.SUMMARY, f"{cfg.model.name} on {data.in_shape}: {params:,} trainable "
                                             f"parameters\n\n{summary}\n")
    now, command = dt.datetime.now().isoformat(timespec="seconds"), shlex.join(argv)
    identity = {
        "name": run_path.name, "ident": cfg.resolved_ident(), "date": dt.date.today().isoformat(), "started": now,
        "command": command, "visionlaunch": __version__, "git_commit": _git_commit(), "host": platform.node(),
        "python": platform.python_version(), "torch": str(torch.__version__), "device": str(accelerator.device),
        "processes": accelerator.num_processes, "precision": precision.name, "precision_reason": precision.reason,
        "parameters": params,
        "data": data.note, "tracker_run_id": secrets.token_hex(4),
    }
    previous = rf.read_run_identity(run_path) if resumed_from is not None else {}
    if previous:  # a resumed run keeps its identity (date on the figures, W&B run) and lists its sessions
        identity.update({k: previous[k] for k in ("ident", "date", "started", "tracker_run_id") if k in previous})
        identity["resumed"] = [*previous.get("resumed", []), {"at": now, "from": str(resumed_from),
                                                              "command": command}]
    atomic_write_text(run_path / rf.IDENTITY, yaml.safe_dump(identity, sort_keys=False))
    return identity


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
