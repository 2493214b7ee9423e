"""`visionlaunch jobs`: the submissions recorded in <output.dir>/.slurm_jobs.jsonl, their SLURM state (from sacct
when the cluster keeps accounting, else from squeue, which forgets finished jobs after MinJobAge) and what their run
folders say.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from visionlaunch import runfolder as rf
from visionlaunch.atomic import atomic_write_text

RECORDS = ".slurm_jobs.jsonl"
QUERY_TIMEOUT_S = 30


def record_submission(runs_dir: Path, record: dict) -> None:
    """Append one submission (rewritten whole and atomically: never a half line)."""
    path = Path(runs_dir) / RECORDS
    previous = path.read_text() if path.is_file() else ""
    if previous and not previous.endswith("\n"):
        previous += "\n"
    record = {"submitted": dt.datetime.now().isoformat(timespec="seconds"), **record}
    atomic_write_text(path, previous + json.dumps(record) + "\n")


def read_records(runs_dir: Path) -> list[dict]:
    path = Path(runs_dir) / RECORDS
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError):  # a line cut short by a crash
            records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict) and "job_id" in r]


def _rows(cmd: list[str]) -> list[list[str]] | None:
    """The '|'-separated rows that sacct or squeue prints; None when the command is absent or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [line.split("|") for line in proc.stdout.splitlines()] if proc.returncode == 0 else None


def _task_ids(spec: str) -> set[str]:
    """The task ids of squeue's pending-array notation: '[2-7]', '[0,3-5%2]'."""
    ids: set[str] = set()
    for part in spec.strip("[]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            ids.update(str(i) for i in range(int(lo), int(hi or lo) + 1))
    return ids


def reported_as(squeue_id: str, job_id: str) -> bool:
    """Whether squeue's job id `squeue_id` ('123', '123_4' or the pending '123_[4-7]') is the recorded `job_id`
    ('123', or the array task '123_4'; a plain '123' also covers all of its tasks)."""
    base, _, task = job_id.partition("_")
    q_base, _, q_task = squeue_id.partition("_")
    if q_base != base:
        return False
    if not task:
        return True
    return q_task == task or (q_task.startswith("[") and task in _task_ids(q_task))


def sacct_states(job_ids: list[str]) -> dict[str, str] | None:
    """job id -> 'STATE (exit X:Y)' from accounting; None when sacct is absent or accounting is off."""
    if not job_ids:
        return {}
    rows = _rows(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode"])
    return None if rows is None else {row[0]: f"{row[1]} (exit {row[2]})" for row in rows if len(row) >= 3}


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """job id -> state for the jobs squeue still knows (pending, running, and recently finished); None when
    squeue is absent or fails."""
    rows = _rows(["squeue", "--me", "-h", "-t", "all", "-o", "%i|%T|%r"])
    if rows is None:
        return None
    return {row[0]: row[1] + (f" ({row[2]})" if row[2] not in ("None", "") else "") for row in rows
            if len(row) >= 3 and any(reported_as(row[0], j) for j in job_ids)}


def run_folder_state(run_dir: Path) -> str:
    """What the run folder says, whatever SLURM remembers."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return "run folder missing"
    if (run_dir / "table.md").is_file():  # the folder of an ablation: its follow-up job writes the table
        return "ablation table written"
    state = rf.folder_state(run_dir)
    if state is rf.FolderState.FINISHED:
        acc = rf.final_record(rf.read_metrics(run_dir / rf.METRICS)).get("test_acc")
        return "finished" + (f", test acc {100 * acc:.2f}%" if isinstance(acc, (int, float)) else "")
    checkpoints = rf.complete_checkpoints(run_dir / rf.CHECKPOINTS)
    last = f"checkpoint {checkpoints[-1].name}" if checkpoints else "no checkpoint"
    if state in (rf.FolderState.STARTED, rf.FolderState.PREEMPTED):
        return f"{state.value}, {last}"
    return "not started"


@dataclass
class JobStatus:
    job_id: str
    slurm_state: str
    run_state: str
    run_dir: str


def job_statuses(runs_dir: Path) -> tuple[list[JobStatus], str]:
    """One status per recorded submission (newest last) and a note on where the SLURM states came from."""
    records = read_records(runs_dir)
    ids = [r["job_id"] for r in records]
    states = sacct_states(ids)
    note = "SLURM states from sacct (accounting)."
    if states is None:
        states = squeue_states(ids)
        note = ("sacct is not available (no accounting on this cluster): SLURM states from squeue, which forgets "
                "finished jobs after a few minutes; 'unknown' means SLURM no longer reports the job, and the run "
                "folder's state tells what happened.")
        if states is None:
            states = {}
            note = "neither sacct nor squeue answered (not on a SLURM host?): only the run folders' states are known."
    out = []
    for r in records:
        jid = r["job_id"]
        found = [f"{k}: {v}" if k != jid else v for k, v in sorted(states.items()) if reported_as(k, jid)]
        out.append(JobStatus(jid, "; ".join(found) or "unknown", run_folder_state(Path(r["run_dir"])), r["run_dir"]))
    return out, note


def format_statuses(statuses: list[JobStatus], note: str) -> str:
    if not statuses:
        return "no jobs submitted from this runs folder yet (visionlaunch submit records them)\n"
    rows = [("JOB", "SLURM STATE", "RUN", "RUN FOLDER")]
    rows += [(s.job_id, s.slurm_state, s.run_state, s.run_dir) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)) for row in rows]
    return "\n".join(lines) + f"\n{note}\n"
