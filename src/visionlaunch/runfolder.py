"""The run folder `runs/<name>/`, the contract between training, reports, ablations and SLURM
(docs/getting-started.md, "The run folder"). This module alone names its files; it reads and writes metrics.jsonl
and its final record, run.yaml and the preemption marker, lists checkpoints, says what state a folder is in
(`folder_state`), and creates a run folder, replacing only a previous run's. Its lock, runs/.<name>.lock, sits
beside it (trainers/runlock.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from visionlaunch.atomic import atomic_write_text
from visionlaunch.errors import VisionlaunchError, describe_os_error
from visionlaunch.yamlfiles import read_yaml

CONFIG = "config.yaml"            # the resolved config, enough to rerun
IDENTITY = "run.yaml"             # who ran it, when, where, on which data
SUMMARY = "summary.txt"           # the model's layer table
METRICS = "metrics.jsonl"         # one JSON record per logged step or epoch, then one `kind: final` record
WEIGHTS = "weights"               # <which>.pt, which = last, best, ema_last, ema_best
CHECKPOINTS = "checkpoints"       # step-<global step>/, complete once CHECKPOINT_DONE is in it
FIGURES = "figures"               # <stem>.png, stems in FIGURE_STEMS
PREDICTIONS = "predictions.npz"   # test labels and predictions, for the report's tables
REPORT = "report.html"
PREEMPTED = "preempted.json"      # left by a run stopped by a preemption signal with a complete checkpoint
JOB_DIR = "slurm"                 # the batch job's script and logs: starting or replacing the run keeps them
JOB_SCRIPT = "job.sh"
TENSORBOARD = "tensorboard"       # the trackers' files
METRICS_CSV = "metrics.csv"
CHECKPOINT_DONE = "visionlaunch.json"  # written last into a checkpoint folder

FIGURE_STEMS = {  # file stem in figures/ -> what it shows
    "loss": "loss curves",
    "accuracy": "accuracy curves",
    "tsne": "t-SNE of the features",
    "predictions": "prediction grid",
    "confusion": "confusion matrix",
}
# The files that only a run folder holds: a folder with one of them is a run (started, finished or preempted).
RUN_MARKERS = (IDENTITY, METRICS)
# Everything a run writes at the top of its folder; a folder with none of them holds no run (not even a crashed one).
RUN_FILES = (*RUN_MARKERS, CONFIG, SUMMARY, WEIGHTS, CHECKPOINTS)
# What training writes at the top of a run folder: another command's output file (predict --out, export --out)
# may go into a run folder, but never onto one of these.
RUN_OWN = (*RUN_FILES, FIGURES, PREDICTIONS, REPORT, "report.pdf", PREEMPTED, JOB_DIR, "wandb")
_STEP = "step-"
_CHECKPOINT_NAME = re.compile(rf"^{_STEP}(\d{{8,}})$")
TORN_CHECKPOINTS = f".tmp-{_STEP}*"  # left by a process killed while writing a checkpoint


def weights_file(run_dir: Path, which: str) -> Path:
    return Path(run_dir) / WEIGHTS / f"{which}.pt"


def figure_file(figures_dir: Path, stem: str) -> Path:
    """The PNG of the figure `stem` (a key of FIGURE_STEMS) in a run's figures/ or in a scratch folder."""
    return Path(figures_dir) / f"{stem}.png"


def job_log(run_dir: Path, job_id: str) -> Path:
    return Path(run_dir) / JOB_DIR / f"{job_id}.out"


def lock_path(run_dir: Path) -> Path:
    """`runs/.<name>.lock`: beside the folder, so that it exists before the folder does and survives overwrite."""
    run_dir = Path(run_dir)
    name = f".{run_dir.name}.lock"
    if len(name.encode()) > 255:  # a run name near the file-name limit: a fixed-length name instead
        name = f".{hashlib.sha1(run_dir.name.encode()).hexdigest()}.lock"
    return run_dir.parent / name


# ---------------------------------------------------------------------------------------------------- checkpoints


def checkpoint_name(step: int) -> str:
    return f"{_STEP}{step:08d}"


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root` (a run's checkpoints/), oldest first; torn ones are never listed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and checkpoint_step(p) is not None and (p / CHECKPOINT_DONE).is_file()]
    return sorted(found, key=checkpoint_step)


# ---------------------------------------------------------------------------------------------------- metrics.jsonl
# Written line by line and flushed, so a crashed run keeps everything up to its last line; readers skip a torn one.


class MetricsWriter:
    def __init__(self, path: Path | None):
        self.path = path
        self._fh = open(path, "a", buffering=1) if path is not None else None

    def write(self, record: dict) -> None:
        if self._fh is not None:
            try:
                self._fh.write(json.dumps(record) + "\n")
            except OSError as exc:  # a full disk: write() names no file, the message must
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def close(self) -> None:
        if self._fh is not None:
            # Lines are flushed as written: only one whose write failed (and was reported) can still be buffered.
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def parse_records(text: str) -> tuple[list[dict], int]:
    """The well-formed records of metrics.jsonl text and how many non-blank lines were not (a torn last line from
    a killed run, or damage): those are skipped, never fatal."""
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return parse_records(Path(path).read_text(errors="replace"))[0]


def final_record(records: list[dict]) -> dict | None:
    """The last `kind: final` record, or None for a run that has not finished."""
    finals = [r for r in records if r.get("kind") == "final"]
    return finals[-1] if finals else None


def metrics_size(run_dir: Path) -> int:
    path = Path(run_dir) / METRICS
    return path.stat().st_size if path.is_file() else 0


def truncate_metrics(run_dir: Path, size: int) -> None:
    """Keep the first `size` bytes (what a checkpoint had seen): a resumed run replays the records after it."""
    path = Path(run_dir) / METRICS
    if path.is_file():
        atomic_write_text(path, path.read_bytes()[:size].decode())


# ---------------------------------------------------------------------------------------------------- run.yaml, marker


def read_run_identity(run_dir: Path) -> dict:
    """run.yaml of a run folder (who ran it, when, where from), {} when absent; an unreadable or damaged one is a
    VisionlaunchError naming it."""
    path = Path(run_dir) / IDENTITY
    if not path.exists():
        return {}
    fix = ("Restore it from a copy of the run, or delete it (the run's date and identifier are then taken from "
           "today and the config).")
    try:
        tree = read_yaml(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise VisionlaunchError(f"cannot read {describe_os_error(exc)}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise VisionlaunchError(f"{path} is damaged: it is not valid UTF-8 YAML ({reason}). {fix}") from None
    if tree is not None and not isinstance(tree, dict):
        raise VisionlaunchError(f"{path} is damaged: it holds a {type(tree).__name__}, not a mapping of keys. {fix}")
    return tree or {}


def write_preempted(run_dir: Path, signal_name: str, step: int, checkpoint) -> None:
    """Record that this run stopped on request with a complete checkpoint. Launchers hide the workers' exit status
    (`accelerate launch` reports 1 when they exit 75), so a batch script looks for this file instead."""
    atomic_write_text(Path(run_dir) / PREEMPTED, json.dumps({
        "signal": signal_name, "step": step, "checkpoint": str(checkpoint),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "at": dt.datetime.now().isoformat(timespec="seconds")}) + "\n")


def clear_preempted(run_dir: Path) -> None:
    (Path(run_dir) / PREEMPTED).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- state


class FolderState(enum.Enum):
    ABSENT = "absent"           # no folder at all
    EMPTY = "empty"             # nothing of a run: an empty folder, or one killed before it wrote run.yaml
    JOB_ONLY = "job only"       # only its batch job's files: submitted, not started
    STARTED = "started"         # a run without its final record: running, or killed
    PREEMPTED = "preempted"     # stopped by a preemption signal with a complete checkpoint
    FINISHED = "finished"       # its final record is written
    OTHER = "not a run folder"  # holds files of something else: output.overwrite never deletes it


def folder_state(path: Path) -> FolderState:
    path = Path(path)
    if not path.is_dir():
        return FolderState.OTHER if path.exists() or path.is_symlink() else FolderState.ABSENT
    if is_run_folder(path):
        if final_record(read_metrics(path / METRICS)) is not None:
            return FolderState.FINISHED
        return FolderState.PREEMPTED if (path / PREEMPTED).is_file() else FolderState.STARTED
    if (path / JOB_DIR).is_dir() and all(p.name == JOB_DIR for p in path.iterdir()):
        return FolderState.JOB_ONLY
    return FolderState.EMPTY if _run_skeleton(path) else FolderState.OTHER


def is_run_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def holds_run_files(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def _run_skeleton(path: Path) -> bool:
    """What a run killed before it wrote run.yaml leaves: empty figures/, weights/, checkpoints/, maybe its
    config.yaml and summary.txt and its batch job's files, nothing else."""
    if path.is_symlink():
        return False
    for child in path.iterdir():
        if child.is_symlink():
            return False
        if child.name in (FIGURES, WEIGHTS, CHECKPOINTS) and child.is_dir() and not any(child.iterdir()):
            continue
        if child.name in (CONFIG, SUMMARY) and child.is_file() or child.name == JOB_DIR:
            continue
        return False
    return True


def _as_written_and_resolved(path: Path) -> tuple[Path, Path]:
    path = Path(path).expanduser()
    return Path(os.path.abspath(path)), path.resolve()


def enclosing_run_folder(path: Path) -> Path | None:
    """The run folder that `path` (a file or folder, existing or not) lies in, at any depth, else None. Both the
    path as written and the one its links resolve to count."""
    return next((run for candidate in _as_written_and_resolved(path) for run in candidate.parents
                 if is_run_folder(run)), None)


def check_not_run_file(out: Path) -> None:
    """Refuse an output path that would replace a run's own file (metrics.jsonl, weights/..., figures/...)."""
    for candidate in _as_written_and_resolved(out):
        run = next((folder for folder in candidate.parents if is_run_folder(folder)), None)
        if run is not None and candidate.relative_to(run).parts[0] in RUN_OWN:
            raise VisionlaunchError(
                f"--out {Path(out).expanduser()} would replace {candidate.relative_to(run)} of the run folder "
                f"{run}, one of that run's own files. Nothing was written. Choose another file name (e.g. "
                f"{run / 'out'} or a path outside the run folder).")


# ---------------------------------------------------------------------------------------------------- creation


def default_run_name(preset: str | None) -> str:
    return f"{preset or 'run'}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def check_output_dir(out_dir: Path, name: str, overwrite: bool) -> Path:
    """Fail before any work if the run folder cannot be written or already exists."""
    run_dir = out_dir / name
    inside = enclosing_run_folder(run_dir)
    if inside is not None:  # a run among another run's files (its weights/, figures/, ...)
        raise VisionlaunchError(
            f"output.dir={out_dir} lies inside the run folder {inside}; a run folder holds only its own run's "
            f"files. Put the new run beside it, e.g. output.dir={inside.parent}.")
    if run_dir.exists() and not overwrite:
        raise VisionlaunchError(
            f"the run folder {run_dir} already exists. Choose another name with output.name=NAME, or replace "
            "it with output.overwrite=true.")
    if folder_state(run_dir) is FolderState.OTHER:  # a folder of other runs, a home directory, a file
        what = "is not a folder" if not run_dir.is_dir() else \
            f"is not a run folder (it has no {' or '.join(RUN_MARKERS)})"
        raise VisionlaunchError(
            f"output.overwrite=true would delete {run_dir}, which {what}; overwrite only ever replaces a previous "
            "run. Nothing was deleted. Choose another output.name, or move that folder away yourself.")
    probe_parent = next((p for p in (out_dir, *out_dir.parents) if p.exists()), out_dir)  # the folder to create it in
    # Try a real write: permission bits alone say nothing for root or on read-only mounts.
    try:
        if not probe_parent.is_dir():
            raise NotADirectoryError(f"{probe_parent} is a file")
        with tempfile.TemporaryFile(dir=probe_parent):
            pass
    except OSError as exc:
        raise VisionlaunchError(
            f"cannot write the run folder {run_dir}: {probe_parent} is not a writable folder ({exc}). Set "
            "output.dir to a folder you can write to (e.g. output.dir=$HOME/runs).") from None
    return run_dir


class RunDirectory:
    """Created only once everything else has been validated; removed again if set-up fails after that, so
    bad input never leaves a half-made run folder."""

    def __init__(self, path: Path, overwrite: bool):
        self.path = Path(path)
        self.owned = True  # made by this process: set-up failures remove it
        if self.path.exists() and overwrite:
            if folder_state(self.path) is FolderState.OTHER:  # checked before (check_output_dir)
                raise VisionlaunchError(f"refusing to replace {self.path}: it is not a run folder.")
            self._remove_except_job_files()
        try:
            (self.path / FIGURES).mkdir(parents=True)
            (self.path / WEIGHTS).mkdir()
        except OSError as exc:
            raise VisionlaunchError(
                f"cannot create the run folder {self.path}: {exc.strerror}. Set output.dir to a writable folder."
            ) from None

    @classmethod
    def existing(cls, path: Path) -> RunDirectory:
        """The folder of a run being resumed: kept whatever happens (discard does nothing)."""
        self = cls.__new__(cls)
        self.path, self.owned = Path(path), False
        for sub in (FIGURES, WEIGHTS, CHECKPOINTS):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        return self

    def discard(self) -> None:
        if not self.owned:
            return
        if (self.path / JOB_DIR).is_dir():  # the batch job's script and log stay (the log says what failed)
            with contextlib.suppress(OSError):
                self._remove_except_job_files()
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    def _remove_except_job_files(self) -> None:
        for child in self.path.iterdir():
            if child.name == JOB_DIR and child.is_dir():
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
