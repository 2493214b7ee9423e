"""The run directory (the contract between training, reports, ablations and SLURM; README, "The run folder"): naming, and creation without leftovers."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from visionlaunch.atomic import atomic_torch_save  # noqa: F401  (re-exported: the trainer's weights files)
from visionlaunch.errors import VisionlaunchError, describe_os_error


# A batch job's own files inside its run folder (`visionlaunch submit`): the script and the log being written.
# Starting or replacing the run keeps them.
JOB_FILES = "slurm"


# The files that only a run folder holds: a folder with one of them is a run (started, finished or preempted).
RUN_MARKERS = ("run.yaml", "metrics.jsonl")


def is_run_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


# Everything a run writes at the top of its folder; a folder with none of them holds no run (not even a crashed one).
RUN_FILES = (*RUN_MARKERS, "config.yaml", "summary.txt", "weights", "checkpoints")


def holds_run_files(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


# What training writes at the top of a run folder: another command's output file (predict --out, export --out)
# may go into a run folder, but never onto one of these.
RUN_OWN = (*RUN_FILES, "figures", "predictions.npz", "report.html", "report.pdf", "preempted.json", JOB_FILES,
           "wandb")


def check_not_run_file(out: Path, option: str = "--out") -> None:
    """Refuse an output path that would replace a run's own file (metrics.jsonl, weights/..., figures/...)."""
    out = Path(out).expanduser()
    for candidate in (Path(os.path.abspath(out)), out.resolve()):
        run = next((folder for folder in candidate.parents if is_run_folder(folder)), None)
        if run is not None and candidate.relative_to(run).parts[0] in RUN_OWN:
            raise VisionlaunchError(
                f"{option} {out} would replace {candidate.relative_to(run)} of the run folder {run}, one of that "
                f"run's own files. Nothing was written. Choose another file name (e.g. {run / 'out'} or a path "
                "outside the run folder).")


def enclosing_run_folder(path: Path) -> Path | None:
    """The run folder that `path` (a file or folder, existing or not) lies in, at any depth, else None. Both the
    path as written and the one its links resolve to count."""
    path = Path(path).expanduser()
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        for folder in candidate.parents:
            if is_run_folder(folder):
                return folder
    return None


def run_skeleton(path: Path) -> bool:
    """What a run killed before it wrote run.yaml leaves: empty figures/, weights/, checkpoints/, maybe its
    config.yaml and summary.txt and its batch job's files, nothing else."""
    if not path.is_dir() or path.is_symlink():
        return False
    for child in path.iterdir():
        if child.is_symlink():
            return False
        if child.name in ("figures", "weights", "checkpoints") and child.is_dir() and not any(child.iterdir()):
            continue
        if child.name in ("config.yaml", "summary.txt") and child.is_file() or child.name == JOB_FILES:
            continue
        return False
    return True


def replaceable(path: Path) -> bool:
    """What output.overwrite may empty: a run folder (also one killed before its run.yaml), a folder holding only
    its batch job, or an empty folder. Anything else (a folder of other runs, a home directory, a file) is never
    deleted."""
    path = Path(path)
    return is_run_folder(path) or only_job_files(path) or run_skeleton(path)


def only_job_files(path: Path) -> bool:
    """A run folder that holds nothing but its batch job's files: submitted, not started."""
    path = Path(path)
    return path.is_dir() and (path / JOB_FILES).is_dir() and all(p.name == JOB_FILES for p in path.iterdir())


def _remove_except_job_files(path: Path) -> None:
    for child in path.iterdir():
        if child.name == JOB_FILES and child.is_dir():
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def read_run_identity(run_dir: Path) -> dict:
    """run.yaml of a run folder (who ran it, when, where from), {} when absent; an unreadable or damaged one is a
    VisionlaunchError naming it."""
    path = Path(run_dir) / "run.yaml"
    if not path.exists():
        return {}
    fix = ("Restore it from a copy of the run, or delete it (the run's date and identifier are then taken from "
           "today and the config).")
    try:
        tree = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise VisionlaunchError(f"cannot read {describe_os_error(exc)}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise VisionlaunchError(f"{path} is damaged: it is not valid UTF-8 YAML ({reason}). {fix}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise VisionlaunchError(f"{path} is damaged: it holds a {type(tree).__name__}, not a mapping of keys. {fix}")
    return tree


def default_run_name(preset: str | None, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    return f"{preset or 'run'}-{now:%Y%m%d-%H%M%S}"


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
    if (run_dir.exists() or run_dir.is_symlink()) and not replaceable(run_dir):
        what = "is not a folder" if not run_dir.is_dir() else \
            f"is not a run folder (it has no {' or '.join(RUN_MARKERS)})"
        raise VisionlaunchError(
            f"output.overwrite=true would delete {run_dir}, which {what}; overwrite only ever replaces a previous "
            "run. Nothing was deleted. Choose another output.name, or move that folder away yourself.")
    probe_parent = out_dir
    while not probe_parent.exists() and probe_parent != probe_parent.parent:
        probe_parent = probe_parent.parent
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
            if not replaceable(self.path):  # checked before (check_output_dir); never delete anything else
                raise VisionlaunchError(f"refusing to replace {self.path}: it is not a run folder.")
            _remove_except_job_files(self.path)
        try:
            (self.path / "figures").mkdir(parents=True)
            (self.path / "weights").mkdir()
        except OSError as exc:
            raise VisionlaunchError(
                f"cannot create the run folder {self.path}: {exc.strerror}. Set output.dir to a writable folder."
            ) from None

    @classmethod
    def existing(cls, path: Path) -> RunDirectory:
        """The folder of a run being resumed: kept whatever happens (discard does nothing)."""
        self = cls.__new__(cls)
        self.path, self.owned = Path(path), False
        for sub in ("figures", "weights", "checkpoints"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        return self

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def weights(self) -> Path:
        return self.path / "weights"

    def discard(self) -> None:
        if not self.owned:
            return
        if (self.path / JOB_FILES).is_dir():  # the batch job's script and log stay (the log says what failed)
            try:
                _remove_except_job_files(self.path)
            except OSError:
                pass
        else:
            shutil.rmtree(self.path, ignore_errors=True)
