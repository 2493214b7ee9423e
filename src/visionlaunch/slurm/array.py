"""Job arrays: several runs as one array job (task i = run i's own job.sh), and a job that runs after every task
has ended (`--dependency=afterany:<array>`), e.g. `visionlaunch ablate FILE --table-only` to build the table.

Everything is rendered and checked first; when sbatch refuses the array or the follow-up job, what was written
is removed again and an array that was already queued is cancelled: nothing is left half-submitted.
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import JOB_DIR, JOB_SCRIPT
from visionlaunch.slurm.jobs import record_submission
from visionlaunch.slurm.render import Job, SlurmOptions, fill_template, job_name_for, render_script, sbatch_lines
from visionlaunch.slurm.submit import highest_missing, require_sbatch, sbatch, write_script


def render_array(opts: SlurmOptions, scripts: list[Path], name: str, title: str, log_dir: Path,
                 max_parallel: int | None = None) -> str:
    last = len(scripts) - 1
    array = f"--array=0-{last}" + (f"%{max_parallel}" if max_parallel else "")
    lines = sbatch_lines(opts, job_name_for(name), log_dir / "%A_%a.out", first=(array,))
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


def submit_array(opts: SlurmOptions, jobs: list[Job], array_dir: Path, name: str, *, title: str | None = None,
                 after_command: list[str] | None = None, dry_run: bool = False, max_parallel: int | None = None,
                 out=None) -> None:
    """Submit `jobs` as one array (their scripts go into each run folder's slurm/, the array's into
    `array_dir`/slurm/), then `after_command` (if any) as a job that waits for the whole array."""
    out = out or sys.stdout
    if not jobs:
        raise VisionlaunchError("no runs to submit: the job array would be empty.")
    title = title or f"{len(jobs)} runs"
    slurm_dir = Path(array_dir) / JOB_DIR
    scripts = [job.run_dir / JOB_DIR / JOB_SCRIPT for job in jobs]
    texts = [render_script(opts, job) for job in jobs]  # every script checked before anything is written
    array_text = render_array(opts, scripts, name, title, slurm_dir, max_parallel)
    after_text = (render_after(opts, after_command, f"{name}-after", f"after the array of {title}", slurm_dir,
                               jobs[0].workdir) if after_command else None)
    if dry_run:
        out.write(array_text)
        if after_text:
            out.write("\n# ---- then, with --dependency=afterany:<array job id>:\n" + after_text)
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
        if after_text:
            write_script(slurm_dir / "after.sh", after_text)
        array_id = sbatch(slurm_dir / "array.sh", jobs[0].workdir)
        after_id = None
        if after_text:
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
    if after_id:
        record_submission(jobs[0].run_dir.parent, {"job_id": after_id, "run_dir": str(array_dir),
                                                   "script": str(slurm_dir / "after.sh"), "log": str(slurm_dir)})
    out.write(f"submitted job array {array_id}: {len(jobs)} task(s), {title}\n"
              f"  logs:    {slurm_dir}/{array_id}_<task>.out\n")
    for task_id, job in zip(task_ids, jobs):
        out.write(f"  {task_id}  {job.run_dir}\n")
    if after_id:
        out.write(f"then job {after_id} (after every task has ended): {shlex.join(after_command)}\n")
    out.write(f"status: visionlaunch jobs --runs {jobs[0].run_dir.parent}\n")

