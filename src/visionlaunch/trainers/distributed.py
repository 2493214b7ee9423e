"""The processes of a run: the Accelerator (device, precision, process group), deterministic mode, the facts the
trainer relies on (the launch really started the processes it asked for; every rank takes the same decision, stop,
raise, which checkpoint, at the same step) and what a survivor says when a peer is lost.

`train.deterministic=true`: the same seed gives the same numbers on every run on the same machine: deterministic
algorithms only (an operation without one stops with an error naming it), no cuDNN benchmarking, and cuBLAS's fixed
workspace (CUBLAS_WORKSPACE_CONFIG, read when CUDA first initialises cuBLAS). The CPU kernels this project uses are
deterministic already; on GPUs the cost is slower convolutions.

Launching wrongly is silent in Accelerate: `accelerate launch --multi_gpu` or `torchrun` on a machine without GPUs
starts N unsynchronised single-process copies, and `accelerate launch --cpu --num_processes N` starts ONE process.
Both would train "successfully", so the trainer refuses to start and names the command that works.
"""

from __future__ import annotations

import contextlib
import os
import socket
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import InitProcessGroupKwargs, parse_flag_from_env

from visionlaunch.config import RunConfig
from visionlaunch.errors import VisionlaunchError, report
from visionlaunch.heap import keep_freed_memory
from visionlaunch.trainers.precision import Precision, resolve_precision

CPU_RECIPE = "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {n} train.py --config ..."
TORCHRUN_CPU_RECIPE = "ACCELERATE_USE_CPU=1 torchrun --nproc_per_node {n} train.py --config ..."


def set_deterministic(enabled: bool) -> None:
    """Switch deterministic mode on or off for this process (a later run in the same process may not want it)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled


def make_accelerator(cfg: RunConfig, precision: str | None = None, **kwargs) -> tuple[Accelerator, Precision]:
    """The Accelerator of a run, and the precision it computes in: train.precision, or `precision` (what a
    finished run trained in, for `evaluate` and `predict`), resolved for this process's device."""
    # Accelerate keeps its precision settings in a process-wide singleton; a second run in the same process (a
    # notebook, the tests) with another precision would be refused. The process group (PartialState) is kept.
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
    # The process group and device first (the Accelerator reuses them), so that `auto` is resolved for the device
    # this process really computes on.
    cpu = cfg.train.device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU")
    group = next((h.to_kwargs() for h in kwargs.get("kwargs_handlers", ()) if isinstance(h, InitProcessGroupKwargs)),
                 {})
    chosen = resolve_precision(precision or cfg.train.precision, PartialState(cpu, **group).device)
    return Accelerator(mixed_precision=chosen.mixed_precision, cpu=cfg.train.device == "cpu", **kwargs), chosen


def start_processes(cfg: RunConfig) -> tuple[Accelerator, Precision]:
    """The run's Accelerator and precision, once the launch and the process layout are known to fit the config."""
    set_deterministic(cfg.train.deterministic)  # before the Accelerator touches CUDA (cuBLAS workspace)
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.dist_timeout_s))
    acc, precision = make_accelerator(cfg, kwargs_handlers=[timeout],
                                      log_with="wandb" if "wandb" in cfg.tracker.names else None)
    check_world_size(acc)
    if acc.device.type == "cpu":  # a step's tensors reuse the last step's memory instead of faulting in new pages
        keep_freed_memory()
    if acc.num_processes > 1:  # auto is resolved per process: machines of two families could disagree
        from accelerate.utils import gather_object
        disagreement = precision_disagreement(
            gather_object([(acc.process_index, socket.gethostname(), precision.name, precision.reason)]))
        if disagreement:
            raise VisionlaunchError(disagreement)
    if precision.name == "fp16" and acc.device.type == "cpu":
        raise VisionlaunchError(
            "train.precision=fp16 needs a GPU: on the CPU Accelerate would silently train in fp32 (it has no fp16 "
            "autocast or loss scaling there). Use train.precision=auto (bf16 where the CPU computes it natively, "
            "else fp32), bf16 or fp32.")
    world, accum = acc.num_processes, cfg.train.grad_accum
    if cfg.train.batch_size % (world * accum):
        raise VisionlaunchError(
            f"train.batch_size={cfg.train.batch_size} is the global batch of one optimizer step and must divide "
            f"evenly into {world} process(es) x train.grad_accum={accum} micro-batches. Choose a multiple of "
            f"{world * accum}, or change train.grad_accum.")
    return acc, precision


def precision_disagreement(ranks: list[tuple[int, str, str, str]]) -> str | None:
    """The error when the ranks' precisions differ, from each rank's (index, host, precision, reason); None when they
    agree. One precision per run: DDP would average gradients computed in different formats without a word."""
    first = {}
    for rank, host, name, reason in sorted(ranks):
        first.setdefault(name, (rank, host, reason))
    if len(first) < 2:
        return None
    seen = "; ".join(f"rank {rank} on {host}: {reason}" for rank, host, reason in first.values())
    return (f"the processes of this run would compute in different precisions ({seen}): train.precision=auto is "
            "resolved on each machine, and these machines differ (CPU or GPU families). Set train.precision to one "
            f"of {', '.join(sorted(first))} for every process (fp32 is exact everywhere; bf16 is slow where it is "
            "emulated), or run on machines of one kind.")


def _launch_args_of(cmdline: list[str]) -> list[str] | None:
    """The arguments given to `accelerate launch` in a command line, or None when it is not that command."""
    for i, word in enumerate(cmdline[:3]):  # [python] accelerate launch ... | python -m accelerate.commands.launch
        rest = cmdline[i + 1:]
        if word == "-m" and rest[:1] == ["accelerate.commands.launch"]:
            return rest[1:]
        if os.path.basename(word) == "accelerate-launch":
            return rest
        if os.path.basename(word) == "accelerate" and rest[:1] == ["launch"]:
            return rest[1:]
    return None


def processes_requested_by_launcher(parent_cmdline: list[str] | None = None) -> int | None:
    """How many processes an `accelerate launch` parent asked for, read with Accelerate's own parser (and its
    config file when --num_processes is not given). None when the parent is not `accelerate launch`."""
    if parent_cmdline is None:
        try:
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
                parent_cmdline = [w.decode(errors="replace") for w in fh.read().split(b"\0") if w]
        except OSError:  # not Linux, or no /proc: nothing to compare with
            return None
    if (args := _launch_args_of(parent_cmdline)) is None:
        return None
    try:
        from accelerate.commands.launch import launch_command_parser
        parsed, _ = launch_command_parser().parse_known_args(args)
        if parsed.num_processes is not None:
            return int(parsed.num_processes)
        from accelerate.commands.config.config_args import default_config_file, load_config_from_file
        config_file = parsed.config_file or default_config_file
        if config_file and os.path.isfile(config_file):
            return int(getattr(load_config_from_file(config_file), "num_processes", 1) or 1)
    except (Exception, SystemExit):  # an Accelerate we cannot read: the check is a help, never a blocker
        return None
    return None


def check_world_size(accelerator: Accelerator) -> None:
    """Stop when the process group is not the one the launcher meant to start (see the module docstring)."""
    actual = accelerator.num_processes
    env_world = int(os.environ["WORLD_SIZE"]) if os.environ.get("WORLD_SIZE", "").isdigit() else None
    if env_world is not None and env_world != actual:
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise VisionlaunchError(
            f"the launcher started {env_world} processes (WORLD_SIZE={env_world}) but they did not join one "
            f"process group: each sees {actual} process(es), so they would train {env_world} unsynchronised copies. "
            + (f"This machine has no GPU that torch can use: for {env_world} CPU processes run "
               f"`{CPU_RECIPE.format(n=env_world)}` (or `{TORCHRUN_CPU_RECIPE.format(n=env_world)}`)."
               if cuda == 0 else
               f"torch sees {cuda} GPU(s): use `accelerate launch --multi_gpu --num_processes {env_world} train.py "
               "...` with no more processes than GPUs per machine, and do not force CPU.")
            + " On one machine without a launcher, run `python train.py ...` or `visionlaunch train ...`.")
    requested = processes_requested_by_launcher()
    if requested is not None and requested > 1 and actual == 1 and env_world is None:
        raise VisionlaunchError(
            f"`accelerate launch` was asked for {requested} processes but started only this one (with --cpu, or "
            f"without --multi_gpu, Accelerate runs a single process and ignores --num_processes). For {requested} "
            f"CPU processes run `{CPU_RECIPE.format(n=requested)}`; on GPUs run `accelerate launch --multi_gpu "
            f"--num_processes {requested} train.py ...`; for one process pass --num_processes 1.")


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (a collective: every rank must call it)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


# What the collective backends say when a peer is gone: gloo ("Connection reset by peer", "Connection closed by
# peer", "Timed out waiting ...ms for recv operation"), NCCL ("NCCL communicator was aborted", watchdog timeouts).
_PEER_FAILURE_MARKS = ("gloo", "Connection reset by peer", "Connection closed by peer", "Broken pipe",
                       "Timed out waiting", "timed out", "NCCL", "ProcessGroup", "Socket Timeout")


class PeerLost(VisionlaunchError):
    """Another process of the group died or hung, so this one cannot go on: a crash of the job (exit 1), not bad
    input; the message points at the process that failed first."""

    exit_code = 1


def peer_lost(exc: BaseException, world: int, timeout_s: int) -> PeerLost | None:
    """The message for a survivor when `exc` is a collective that failed because a peer is gone, else None."""
    if world <= 1 or isinstance(exc, VisionlaunchError):
        return None
    text = str(exc)
    if not (isinstance(exc, torch.distributed.DistError)
            or isinstance(exc, RuntimeError) and any(mark in text for mark in _PEER_FAILURE_MARKS)):
        return None
    detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    detail = detail.split("] ", 1)[-1].split(". ")[0][:200]  # without the backend's source position and advice
    return PeerLost(
        f"another process of this run died or stopped answering, so this one (rank {os.environ.get('RANK', '?')} of "
        f"{world}) stops too ({type(exc).__name__}: {detail}). The process that failed first says why in its own "
        "message (above, or in the job log): a crash, a kill, running out of memory, or a hang longer than "
        f"train.dist_timeout_s={timeout_s}. Fix that, then rerun the same command with train.resume=auto to continue "
        "from the newest complete checkpoint.")


@contextlib.contextmanager
def peer_loss_reported(timeout_s: int):
    """Inside: a collective that fails because a peer is gone raises PeerLost, its message printed at once. The
    launcher sends SIGTERM to the survivors soon after a peer dies, and destroying a process group with a dead
    member can take seconds: said after the teardown, the message could be lost with the process."""
    try:
        yield
    except Exception as exc:
        lost = peer_lost(exc, int(os.environ.get("WORLD_SIZE", "1")), timeout_s)
        if lost is None:
            raise
        report(lost)
        raise lost from None
