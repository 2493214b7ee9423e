"""`visionlaunch ablate FILE --slurm`: every run of the ablation that has not finished becomes one task of a job
array, and a job that depends on the whole array (afterany) rebuilds the table with `ablate FILE --table-only`
once every task has ended, whether it finished, failed or was cancelled."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from visionlaunch.atomic import atomic_write_text
from visionlaunch.errors import VisionlaunchError
from visionlaunch.slurm.array import ArraySubmission, submit_array
from visionlaunch.slurm.render import SlurmOptions
from visionlaunch.slurm.submit import plan_job


def table_command(python: str, ablation_file: Path, out_dir: Path, extra: list[str]) -> list[str]:
    return [python, "-m", "visionlaunch", "ablate", str(Path(ablation_file).resolve()), "--table-only", "--out",
            str(out_dir), *(["--", *extra] if extra else [])]


def submit_ablation(ablation, opts: SlurmOptions, *, python: str | None = None, dry_run: bool = False,
                    rerun: bool = False, out=None) -> ArraySubmission | None:
    from visionlaunch.ablation.plan import PLAN_FILE
    from visionlaunch.ablation.results import read_result, write_ablation_results
    from visionlaunch.ablation.runner import check_existing_runs

    out = out or sys.stdout
    if rerun:
        raise VisionlaunchError(
            "--rerun cannot be combined with --slurm: a requeued job would start its run over again instead of "
            "resuming it. Delete the run folders you want to redo (or use --out DIR for a fresh ablation folder).")
    check_existing_runs(ablation)
    python = python or sys.executable
    pending = [v for v in ablation.variants if read_result(v).state != "ok"]
    if not pending:
        paths = write_ablation_results(ablation)
        out.write(f"every run of ablation {ablation.name} has finished: nothing submitted; table rebuilt: "
                  f"{', '.join(str(p) for p in paths)}\n")
        return None
    out_dir = Path(ablation.out_dir).resolve()
    jobs = [plan_job(opts, v.train_args(), python=python, allow_existing=True) for v in pending]
    submitted = submit_array(opts, jobs, out_dir, ablation.name, title=f"ablation {ablation.name}",
                             after_command=table_command(python, ablation.source, out_dir, ablation.extra),
                             dry_run=dry_run, out=out)
    if not dry_run:  # the same record of the plan as the sequential runner leaves
        atomic_write_text(out_dir / PLAN_FILE, yaml.safe_dump(ablation.plan(), sort_keys=False, width=1 << 20))
    return submitted
