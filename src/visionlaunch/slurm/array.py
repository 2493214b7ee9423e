"""`visionlaunch ablate FILE --slurm`: every run of the ablation that has not finished becomes one task of a job array
(task i = run i's own job.sh), and a job that depends on the whole array (`--dependency=afterany`) rebuilds the table
with `ablate FILE --table-only` once every task has ended, whether it finished, failed or was cancelled.

Everything is rendered and checked first; when sbatch refuses the array or the table job, what was written is removed
again and an array that was already queued is cancelled: nothing is left half-submitted.
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from visionlaunch.atomic import atomic_write_text
from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import JOB_DIR, JOB_SCRIPT
from visionlaunch.slurm.jobs import record_submission
from visionlaunch.slurm.render import Job, SlurmOptions, fill_template, job_name_for, render_script, sbatch_lines
from visionlaunch.slurm.submit import highest_missing, plan_job, require_sbatch, sbatch, write_script


def render_array(opts: SlurmOptions, scripts: list[Path], name: str, title: str, log_dir: Path) -> str:
    last = len(scripts) - 1
    lines = sbatch_lines(opts, job_name_for(name), log_dir / "%A_%a.out", first=(f"--array=0-{last}",))
    return fill_template("array.sh", {
        "count": str(len(scripts)), "title": title.replace("\n", " "), "date": f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}",
        "sbatch_lines": "\n".join(lines),
        "scripts_q": " ".join(shlex.quote(str(s)) for s in scripts), "last": str(last)})


def render_after(opts: SlurmOptions, command: list[str], name: str, title: str, log_dir: Path,
                 workdir: Path) -> str:
    # One small task on the same partition/account/qos: building a table needs no GPU and no requeue.
    after = SlurmOptions(nodes=1, cpus_per_task=1, time=opts.time, partition=opts.partition, account=opts.account,
                         qos=opts.qos, requeue=False, setup_lines=opts.setup_lines)
    lines = sbatch_lines(after, job_name_for(name), log_dir / "%x-%j.out")
    return fill_template("after.sh", {
        "title": title.replace("\n", " "), "date": f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}",
        "sbatch_lines": "\n".join(lines),
        "setup_lines": "\n".join(after.setup_lines) if after.setup_lines else "# (none)",
        "workdir_q": shlex.quote(str(workdir)), "command_q": " ".join(shlex.quote(a) for a in command)})


def submit_array(opts: SlurmOptions, jobs: list[Job], array_dir: Path, name: str, title: str,
                 after_command: list[str], *, dry_run: bool = False) -> None:
    """Submit `jobs` as one array (their scripts go into each run folder's slurm/, the array's into
    `array_dir`/slurm/), then `after_command` as a job that waits for the whole array."""
    slurm_dir = Path(array_dir) / JOB_DIR
    scripts = [job.run_dir / JOB_DIR / JOB_SCRIPT for job in jobs]
    texts = [render_script(opts, job) for job in jobs]  # every script checked before anything is written
    array_text = render_array(opts, scripts, name, title, slurm_dir)
    after_text = render_after(opts, after_command, f"{name}-after", f"after the array of {title}", slurm_dir,
                              jobs[0].workdir)
    if dry_run:
        sys.stdout.write(array_text + "\n# ---- then, with --dependency=afterany:<array job id>:\n" + after_text)
        return
    require_sbatch()
    made: list[Path] = []  # folders this call created: removed again if the submission fails
    array_id = None
    try:
        for folder in [*(script.parent for script in scripts), slurm_dir]:
            top = highest_missing(folder)
            if top is not None and top not in made:
                made.append(top)
        for script, text in zip(scripts, texts):
            write_script(script, text)
        write_script(slurm_dir / "array.sh", array_text)
        write_script(slurm_dir / "after.sh", after_text)
        array_id = sbatch(slurm_dir / "array.sh", jobs[0].workdir)
        after_id = sbatch(slurm_dir / "after.sh", jobs[0].workdir, [f"--dependency=afterany:{array_id}"])
    except BaseException:
        if array_id is not None:  # the array is queued but its follow-up was refused: take the array back
            subprocess.run(["scancel", array_id], capture_output=True, timeout=60)
        for folder in reversed(made):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    task_ids = [f"{array_id}_{i}" for i in range(len(jobs))]
    for task_id, job, script in zip(task_ids, jobs, scripts):
        record_submission(job.run_dir.parent, {"job_id": task_id, "run_dir": str(job.run_dir), "script": str(script),
                                               "log": str(slurm_dir / f"{task_id}.out"),
                                               "nodes": opts.nodes, "processes": opts.total_processes})
    record_submission(jobs[0].run_dir.parent, {"job_id": after_id, "run_dir": str(array_dir),
                                               "script": str(slurm_dir / "after.sh"), "log": str(slurm_dir)})
    sys.stdout.write(f"submitted job array {array_id}: {len(jobs)} task(s), {title}\n"
              f"  logs:    {slurm_dir}/{array_id}_<task>.out\n")
    for task_id, job in zip(task_ids, jobs):
        sys.stdout.write(f"  {task_id}  {job.run_dir}\n")
    sys.stdout.write(f"then job {after_id} (after every task has ended): {shlex.join(after_command)}\n")
    sys.stdout.write(f"status: visionlaunch jobs --runs {jobs[0].run_dir.parent}\n")


def submit_ablation(ablation, opts: SlurmOptions, *, python: str | None = None, dry_run: bool = False,
                    rerun: bool = False) -> None:
    from visionlaunch.ablation.plan import PLAN_FILE
    from visionlaunch.ablation.results import read_result, write_ablation_results
    from visionlaunch.ablation.runner import check_existing_runs

    if rerun:
        raise VisionlaunchError(
            "--rerun cannot be combined with --slurm: a requeued job would start its run over again instead of "
            "resuming it. Delete the run folders you want to redo (or use --out DIR for a fresh ablation folder).")
    check_existing_runs(ablation)
    python = python or sys.executable
    pending = [v for v in ablation.variants if read_result(v).state != "ok"]
    if not pending:
        paths = write_ablation_results(ablation)
        sys.stdout.write(f"every run of ablation {ablation.name} has finished: nothing submitted; table rebuilt: "
                  f"{', '.join(str(p) for p in paths)}\n")
        return
    out_dir = Path(ablation.out_dir).resolve()
    jobs = [plan_job(opts, v.train_args(), python=python, allow_existing=True) for v in pending]
    table = [python, "-m", "visionlaunch", "ablate", str(Path(ablation.source).resolve()), "--table-only", "--out",
             str(out_dir), *(["--", *ablation.extra] if ablation.extra else [])]
    submit_array(opts, jobs, out_dir, ablation.name, f"ablation {ablation.name}", table, dry_run=dry_run)
    if not dry_run:  # the same record of the plan as the sequential runner leaves
        atomic_write_text(out_dir / PLAN_FILE, yaml.safe_dump(ablation.plan(), sort_keys=False, width=1 << 20))
