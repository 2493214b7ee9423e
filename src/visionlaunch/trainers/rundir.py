"""The run directory (the contract between training, reports, ablations and SLURM; README, "The run folder"): naming, and creation without leftovers."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path

import yaml

from visionlaunch.atomic import atomic_torch_save  # noqa: F401  (re-exported: the trainer's weights files)
from visionlaunch.errors import VisionlaunchError, describe_os_error


# A batch job's own files inside its run folder (`visionlaunch submit`): the script and the log being written.
# Starting or replacing the run keeps them.
JOB_FILES = "slurm"


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
    if run_dir.exists() and not overwrite:
        raise VisionlaunchError(
            f"the run folder {run_dir} already exists. Choose another name with output.name=NAME, or replace "
            "it with output.overwrite=true.")
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
