"""`visionlaunch submit`: the training command -> a checked batch script in the run folder -> sbatch -> a job id.

Everything that can be wrong is found before sbatch runs (config, process layout, batch size, an existing run
folder, no sbatch on PATH); when sbatch itself refuses the job (unknown partition, over a time limit, ...) its own
message is shown and whatever was written for the job is removed again, so nothing is left half-submitted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from visionlaunch.atomic import atomic_write_text
from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import CONFIG, JOB_DIR, JOB_SCRIPT, default_run_name, job_log
from visionlaunch.slurm.jobs import record_submission
from visionlaunch.slurm.render import Job, SlurmOptions, render_script

SBATCH_TIMEOUT_S = 120


def plan_job(opts: SlurmOptions, train_argv: list[str], *, python: str | None = None, script: str | None = None,
             cwd: Path | None = None, allow_existing: bool = False) -> Job:
    """Check the training arguments as `visionlaunch train` would, fix the run's name (so that a requeued job
    finds its folder) and train.resume=auto, and describe the job. Nothing is written. `allow_existing`: the run
    folder may exist (an unfinished run that the job continues)."""
    from visionlaunch.config import load_config

    opts.validate()
    if not train_argv:
        raise VisionlaunchError(
            "no training arguments: give them after `--`, exactly as for `visionlaunch train`, e.g. "
            "visionlaunch submit --nodes 2 -- --config configs/mnist_cnn.yaml optim.lr=0.05")
    p = argparse.ArgumentParser(prog="visionlaunch submit ... --", add_help=False)  # the arguments of train
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("overrides", nargs="*")
    try:
        parsed = p.parse_args(list(train_argv))
    except SystemExit:
        raise VisionlaunchError(
            f"cannot read the training arguments {' '.join(train_argv)!r}: they must be `--config FILE` followed "
            "by key=value overrides, as for `visionlaunch train`.") from None
    cwd = Path(cwd or Path.cwd()).resolve()
    cfg = load_config(parsed.config, parsed.overrides)  # a bad config stops here, not after waiting in the queue
    args = list(train_argv)

    name = cfg.output.name or default_run_name(Path(parsed.config).stem)
    if not cfg.output.name:
        args.append(f"output.name={name}")
    resume_given = any(o.split("=", 1)[0].strip() == "train.resume" for o in parsed.overrides if "=" in o)
    if cfg.train.resume == "none" and not resume_given:
        args.append("train.resume=auto")
    elif cfg.train.resume != "auto":
        raise VisionlaunchError(
            f"train.resume={cfg.train.resume}: a SLURM job always continues its own run folder (train.resume=auto "
            "with output.name), so that a requeued job resumes where it stopped. To continue an existing run, "
            "submit it again with `visionlaunch submit --resume runs/<name>`, or give its output.name.")

    total = opts.total_processes
    accum = cfg.train.grad_accum
    if cfg.train.batch_size % (total * accum):
        raise VisionlaunchError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly into {total} "
            f"process(es) x train.grad_accum={accum}: choose a multiple of {total * accum} or another process count.")

    run_dir = (cwd / Path(cfg.output.dir).expanduser() / name).resolve()
    if run_dir.exists() and not allow_existing:
        raise VisionlaunchError(
            f"the run folder {run_dir} already exists. To continue that run on the cluster, run `visionlaunch submit "
            f"--resume {run_dir}`; for a new run choose another output.name.")
    entry = [str(Path(script).resolve())] if script else ["-m", "visionlaunch", "train"]
    use_cpu = opts.gpus_per_node == 0 or cfg.train.device == "cpu"
    return Job(run_name=name, run_dir=run_dir, workdir=cwd, python=python or sys.executable, entry=entry,
               train_args=args, use_cpu=use_cpu)


def highest_missing(folder: Path) -> Path | None:
    """The outermost folder that creating `folder` would create (None when it exists)."""
    top = None
    while not folder.exists() and folder != folder.parent:
        top, folder = folder, folder.parent
    return top


def require_sbatch() -> str:
    path = shutil.which("sbatch")
    if path is None:
        raise VisionlaunchError(
            "sbatch is not on PATH, so no job can be submitted from here: run this on the cluster's login node (or "
            "`module load slurm` first). `visionlaunch submit --dry-run ...` prints the batch script without "
            "submitting it.")
    return path


def sbatch(script: Path, workdir: Path, extra: list[str] | None = None) -> str:
    """Submit `script`; the job id, or a VisionlaunchError carrying sbatch's own message."""
    cmd = [require_sbatch(), "--parsable", *(extra or []), str(script)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S, cwd=workdir)
    except subprocess.TimeoutExpired:
        raise VisionlaunchError(
            f"sbatch did not answer within {SBATCH_TIMEOUT_S} s (is slurmctld reachable? try `sinfo`). Check "
            "`squeue --me` before submitting again: the job may have been queued.") from None
    message = (proc.stderr.strip() or proc.stdout.strip()).replace("\n", " ")
    if proc.returncode != 0:
        raise VisionlaunchError(
            f"sbatch refused the job: {message or f'exit status {proc.returncode}'}. Nothing was submitted. Fix the "
            "SLURM options (see `sinfo` for partitions and their time limits) and submit again.")
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0] if proc.stdout.strip() else ""
    if not job_id.isdigit():
        raise VisionlaunchError(f"sbatch answered {proc.stdout.strip()!r} instead of a job id ({message}). Check "
                                "`squeue --me`: the job may or may not be queued.")
    return job_id


def write_script(path: Path, text: str) -> None:
    try:
        atomic_write_text(path, text)  # creates the folders on the way
    except OSError as exc:
        raise VisionlaunchError(f"cannot write the batch script {path}: {exc.strerror or exc}. Set output.dir to a "
                                "folder you can write to (on a cluster: a shared filesystem).") from None


def submit(opts: SlurmOptions, job: Job, *, dry_run: bool = False) -> str | None:
    """Render, write into runs/<name>/slurm/, sbatch, record; the job id. With dry_run: print the script, write
    nothing."""
    script_text = render_script(opts, job)
    if dry_run:
        sys.stdout.write(script_text)
        return None
    require_sbatch()
    slurm_dir = job.run_dir / JOB_DIR
    script = slurm_dir / JOB_SCRIPT
    created = highest_missing(slurm_dir)  # removed again if the job is refused
    try:
        write_script(script, script_text)
        job_id = sbatch(script, job.workdir)
    except BaseException:
        if created is not None:  # nothing half-submitted: what was made for the refused job goes again
            shutil.rmtree(created, ignore_errors=True)
        raise
    return _recorded(job_id, job.run_dir, script, opts.total_processes, opts.nodes)


def resubmit(run_dir: Path) -> str:
    """Submit a run's own job.sh again (after it was cancelled, failed, or ran out of requeues)."""
    run_dir = Path(run_dir).expanduser().resolve()
    script = run_dir / JOB_DIR / JOB_SCRIPT
    if not run_dir.is_dir():
        raise VisionlaunchError(
            f"--resume {run_dir}: there is no such run folder. Give the folder of a run that was submitted with "
            "`visionlaunch submit` (runs/<name>; `visionlaunch jobs` lists them), or submit a new run.")
    if not script.is_file():
        raise VisionlaunchError(
            f"--resume {run_dir}: the folder has no {JOB_DIR}/{JOB_SCRIPT}, so it was not submitted by "
            "`visionlaunch submit`. Submit it as a new job with the same output.name: `visionlaunch submit ... -- "
            f"--config {run_dir / CONFIG} output.dir={run_dir.parent} output.name={run_dir.name}`.")
    return _recorded(sbatch(script, run_dir), run_dir, script, None, None)


def _recorded(job_id: str, run_dir: Path, script: Path, processes: int | None, nodes: int | None) -> str:
    log = job_log(run_dir, job_id)
    try:
        record_submission(run_dir.parent, {"job_id": job_id, "run_dir": str(run_dir), "script": str(script),
                                           "log": str(log), "nodes": nodes, "processes": processes})
    except OSError as exc:  # the job is queued whatever happens here: say so, do not fail
        print(f"visionlaunch: warning: job {job_id} is queued but could not be recorded for `visionlaunch jobs` "
              f"({exc})", file=sys.stderr)
    sys.stdout.write(f"submitted job {job_id}\n  run folder: {run_dir}\n  script:     {script}\n  log:        {log}\n"
              f"  status:     visionlaunch jobs --runs {run_dir.parent}\n")
    return job_id
