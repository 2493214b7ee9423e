"""The batch script: SLURM options (validated) + the job (what to train, where) -> the text of job.sh.

The template (job.sh beside this module) is plain bash with {{placeholders}}. Every value that comes from the
user and lands in shell code is quoted with shlex.quote, so spaces, quotes, `$()` and backticks in training
arguments reach the trainer literally; values on #SBATCH lines are read by sbatch (not by a shell) and must be
single words. The rendered text is checked with `bash -n` before anything is written or submitted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex
import subprocess
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import PREEMPTED, job_log
from visionlaunch.trainers.preemption import PREEMPTED_EXIT_CODE

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


@dataclass
class SlurmOptions:
    """What `visionlaunch submit` asks SLURM for (None: the cluster's default)."""

    nodes: int = 1
    gpus_per_node: int = 0            # 0: a CPU partition (gloo; ACCELERATE_USE_CPU=1)
    processes: int | None = None      # total training processes; default nodes x (gpus_per_node or 1)
    cpus_per_task: int | None = None  # CPUs for each node's task (the launcher and its processes)
    mem: str | None = None            # per node, e.g. 16G
    time: str | None = None           # e.g. 02:00:00 or 1-12:00:00
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str | None = None
    signal_seconds: int = 120         # USR2 this long before the time limit
    requeue: bool = True
    max_requeues: int = 5
    sbatch_lines: list[str] = field(default_factory=list)  # extra "#SBATCH ..." lines, e.g. --mail-type=END
    setup_lines: list[str] = field(default_factory=list)   # shell lines run first: module load, source venv

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SlurmOptions:
        """The options given to `submit` or `ablate --slurm` (add_slurm_arguments names them after the fields)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @property
    def total_processes(self) -> int:
        return self.processes if self.processes is not None else self.nodes * max(self.gpus_per_node, 1)

    @property
    def procs_per_node(self) -> int:
        return self.total_processes // self.nodes

    def validate(self) -> None:
        """Everything that can be wrong before sbatch sees it; one clear error each."""
        if self.nodes < 1:
            raise VisionlaunchError(f"--nodes {self.nodes}: a job needs at least one node.")
        total = self.total_processes
        for flag, value, least in (("--gpus-per-node", self.gpus_per_node, 0), ("--processes", total, 1),
                                   ("--cpus-per-task", self.cpus_per_task, 1),
                                   ("--signal-seconds", self.signal_seconds, 1),
                                   ("--max-requeues", self.max_requeues, 0)):
            if value is not None and value < least:
                raise VisionlaunchError(f"{flag} {value} must be at least {least}.")
        if total % self.nodes:
            raise VisionlaunchError(
                f"--processes {total} does not divide evenly over --nodes {self.nodes}: every node runs the same "
                f"number of processes (one launcher per node). Use a multiple of {self.nodes} processes (e.g. "
                f"{self.nodes * max(1, total // self.nodes)}), or another node count.")
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise VisionlaunchError(
                f"--processes {total} over {self.nodes} node(s) is {self.procs_per_node} processes per node, but "
                f"--gpus-per-node is {self.gpus_per_node}: one process per GPU at most. Ask for more GPUs or nodes, "
                "or fewer processes.")
        if self.time is not None and not _TIME.match(self.time):
            raise VisionlaunchError(
                f"--time {self.time!r} is not a SLURM time: use minutes (90), HH:MM:SS (02:00:00) or D-HH:MM:SS "
                "(1-12:00:00).")
        if self.mem is not None and not _MEM.match(self.mem):
            raise VisionlaunchError(f"--mem {self.mem!r} is not a SLURM memory size: use e.g. 16G, 16000M or 0 "
                                    "(all of the node's memory).")
        for name in ("partition", "account", "qos", "constraint", "job_name"):
            value = getattr(self, name)
            if value is not None:
                sbatch_word(f"--{name.replace('_', '-')}", value)
        for line in [*self.sbatch_lines, *self.setup_lines]:
            if "\n" in line or "\r" in line:
                raise VisionlaunchError(f"{line!r} contains a line break: give one --sbatch/--setup per line.")
        for line in self.sbatch_lines:
            if not line.strip().startswith("-"):
                raise VisionlaunchError(
                    f"--sbatch {line!r} is not an sbatch option: give it as it would follow '#SBATCH', e.g. "
                    "--sbatch=--mail-type=END.")


def sbatch_word(name: str, value: str) -> str:
    """A value for an #SBATCH line: sbatch splits those lines itself, so it must be one plain word."""
    if not value or any(c.isspace() or c in "\"'#\\" for c in value):
        raise VisionlaunchError(
            f"{name} {value!r} cannot go on an #SBATCH line: it must be one word without spaces, quotes, '#' or "
            "backslashes (sbatch reads those lines itself). Rename it (for paths: choose output.dir/output.name "
            "without spaces).")
    return value


@dataclass
class Job:
    """What the script runs, and where."""

    run_name: str
    run_dir: Path        # absolute
    workdir: Path        # absolute; the training arguments are relative to it
    python: str          # the interpreter on the compute nodes
    entry: list[str]     # what accelerate launch runs: ["-m", "visionlaunch", "train"] or [script.py]
    train_args: list[str]
    use_cpu: bool


def job_name_for(name: str) -> str:
    return "vl-" + re.sub(r"[^\w.+-]", "_", name)  # a run's name, made one word


def sbatch_lines(opts: SlurmOptions, job_name: str, log_pattern: Path, first: tuple[str, ...] = ()) -> list[str]:
    """The #SBATCH lines: `first` (e.g. --array), then resources, log, preemption signal, requeue, extras."""
    lines = [*first, f"--job-name={sbatch_word('--job-name', opts.job_name or job_name)}",
             f"--nodes={opts.nodes}", "--ntasks-per-node=1"]
    for name in ("cpus_per_task", "gpus_per_node", "mem", "time", "partition", "account", "qos", "constraint"):
        if getattr(opts, name):  # None, or 0 GPUs: the cluster's default
            lines.append(f"--{name.replace('_', '-')}={getattr(opts, name)}")
    lines += [f"--output={sbatch_word('the log path', str(log_pattern))}",
              "--open-mode=append",  # a requeued job appends to the same log
              f"--signal=B:USR2@{opts.signal_seconds}", "--requeue" if opts.requeue else "--no-requeue",
              *(line.strip() for line in opts.sbatch_lines)]
    return [f"#SBATCH {line}" for line in lines]


def render_script(opts: SlurmOptions, job: Job, now: dt.datetime | None = None) -> str:
    """The batch script's text (validated options in, a script that passes `bash -n` out)."""
    opts.validate()
    values = {
        "run_name": job.run_name.replace("\n", " "),
        "date": f"{now or dt.datetime.now():%Y-%m-%d %H:%M:%S}",
        "signal_seconds": str(opts.signal_seconds),
        "max_requeues": str(opts.max_requeues if opts.requeue else 0),
        "sbatch_lines": "\n".join(sbatch_lines(opts, job_name_for(job.run_name), job_log(job.run_dir, "%j"))),
        "setup_lines": "\n".join(opts.setup_lines) if opts.setup_lines else "# (none)",
        "run_dir_q": shlex.quote(str(job.run_dir)),
        "workdir_q": shlex.quote(str(job.workdir)),
        "python_q": shlex.quote(job.python),
        "entry_q": " ".join(shlex.quote(a) for a in job.entry),
        "train_args_q": " ".join(shlex.quote(a) for a in job.train_args),
        "procs_per_node": str(opts.procs_per_node),
        "use_cpu": "1" if job.use_cpu else "0",
        "preempted_exit_code": str(PREEMPTED_EXIT_CODE),
        "preempted_marker": PREEMPTED,
    }
    return fill_template("job.sh", values)


def fill_template(name: str, values: dict[str, str]) -> str:
    """A template of this package with its {{placeholders}} replaced, checked with `bash -n`."""
    template = resources.files("visionlaunch.slurm").joinpath(name).read_text()
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    assert not missing, f"template placeholders without a value: {missing}"
    # One pass over the template, so a value that itself contains "{{x}}" is never substituted again.
    script = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    # `bash -n`: the script parses (a --setup line with an unclosed quote would otherwise fail on the cluster).
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise VisionlaunchError(
            f"the batch script does not parse (bash -n: {proc.stderr.strip()}). Check the --setup lines: each must "
            "be a complete shell command.")
    return script


def add_slurm_arguments(p: argparse.ArgumentParser, job_options: bool = True) -> None:
    """The command-line options of SlurmOptions (and --python); `job_options`: those of one training job."""
    g = p.add_argument_group("SLURM resources")
    g.add_argument("--nodes", "-N", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0, help="0 (default): CPU nodes, DDP over gloo")
    g.add_argument("--processes", type=int, help="training processes in all; default nodes x (GPUs per node or 1)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs for each node's launcher and its processes")
    g.add_argument("--mem", help="memory per node, e.g. 32G")
    g.add_argument("--time", help="time limit, e.g. 04:00:00")
    g.add_argument("--partition", "-p")
    g.add_argument("--account", "-A")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--job-name", help="default vl-<run name>")
    g.add_argument("--sbatch", action="append", default=[], metavar="OPTION", dest="sbatch_lines",
                   help="an extra #SBATCH line, e.g. --sbatch=--mail-type=END (repeatable)")
    g.add_argument("--setup", action="append", default=[], metavar="LINE", dest="setup_lines",
                   help="a shell line run before training, e.g. 'module load cuda' or 'source .venv/bin/activate'")
    g = p.add_argument_group("SLURM preemption")
    g.add_argument("--signal-seconds", type=int, default=120, help="USR2 this long before the time limit (120)")
    g.add_argument("--no-requeue", action="store_false", dest="requeue", help="do not requeue a preempted job")
    g.add_argument("--max-requeues", type=int, default=5, help="requeues of one job at most (5)")
    g.add_argument("--python", help="the Python on the compute nodes; default this one")
    if not job_options:
        return
    g = p.add_argument_group("job")
    g.add_argument("--script", help="run this front door (like train.py) instead of `python -m visionlaunch train`")
    g.add_argument("--dry-run", action="store_true", help="print the batch script; submit nothing")
    g.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="submit a run's own job (runs/<name>/slurm/job.sh) again; no training arguments")
