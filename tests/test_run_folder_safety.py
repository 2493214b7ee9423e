"""Nothing outside a run folder is ever deleted or overwritten, and one folder is trained by one process at a time.

Each bad case asserts: exit status 2, one paragraph naming the culprit, no traceback, and nothing destroyed or
left behind. The runs that must start use the embedded MNIST sample (no data needed) and a few steps.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.run_helpers import FAULT_TRAIN_PY, REPO, env
from visionlaunch.launch.cli import main
from visionlaunch.trainers.runlock import RunLock, lock_path

TINY = ["--config", str(REPO / "configs" / "mnist_fcn.yaml"), "data.name=mnist_sample", "data.train_subset=300",
        "data.test_subset=100", "data.val_size=50", "train.epochs=1", "train.progress=false",
        "report.figures=false", "model.args={hidden: [16]}"]


def _train(out_dir: Path, *overrides: str) -> int:
    return main(["train", *TINY, f"output.dir={out_dir}", *overrides])


def _snapshot(root: Path) -> dict:
    """Every file and folder under root with its contents, to show that nothing changed."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _make_run(folder: Path) -> Path:
    """A finished-looking run folder (what overwrite may replace)."""
    (folder / "weights").mkdir(parents=True)
    (folder / "run.yaml").write_text("name: x\n")
    (folder / "metrics.jsonl").write_text('{"kind": "final", "test_acc": 0.5}\n')
    return folder


def _one_paragraph_error(err: str, *culprits: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("visionlaunch: error:")]
    assert len(errors) == 1, err
    for culprit in culprits:
        assert culprit in err, (culprit, err)


@pytest.fixture
def world(tmp_path):
    """runs/ with two finished runs, and a user's own file beside runs/."""
    runs = tmp_path / "work" / "runs"
    _make_run(runs / "old1")
    _make_run(runs / "old2")
    (tmp_path / "work" / "thesis.tex").write_text("years of work")
    return tmp_path / "work", runs


@pytest.mark.parametrize("name, parsed", [(".", "."), ("..", ".."), ("ABSOLUTE", None), ("old1/../..", None),
                                          ("a/b", None), ("' old1'", " old1")])
def test_a_run_name_is_one_folder_name(world, capsys, name, parsed):
    work, runs = world
    if name == "ABSOLUTE":
        name = str(work)
    before = _snapshot(work)
    assert _train(runs, f"output.name={name}", "output.overwrite=true") == 2
    _one_paragraph_error(capsys.readouterr().err, "output.name", repr(parsed or name))
    assert _snapshot(work) == before


@pytest.mark.parametrize("victim", ["folder", "file", "link", "nested-run", "weights-of-my-own"])
def test_overwrite_replaces_only_a_run_folder(world, capsys, victim):
    work, runs = world
    target = runs / "mine"
    if victim == "folder":  # a folder of the user's own files
        (target / "data").mkdir(parents=True)
        (target / "data" / "notes.txt").write_text("keep")
    elif victim == "file":
        target.write_text("keep")
    elif victim == "link":  # a link to the folder above runs/: overwrite must not empty it
        target.symlink_to(work, target_is_directory=True)
    elif victim == "nested-run":  # a folder of runs is not itself a run
        _make_run(target / "inner")
    else:  # looks like a run's weights/ folder, but holds files of the user's own
        (target / "weights").mkdir(parents=True)
        (target / "weights" / "model.pt").write_bytes(b"mine")
    before = _snapshot(work)
    assert _train(runs, "output.name=mine", "output.overwrite=true") == 2
    _one_paragraph_error(capsys.readouterr().err, str(target), "output.overwrite")
    assert _snapshot(work) == before


def test_overwrite_replaces_a_previous_run(world, capsys):
    work, runs = world
    old = _make_run(runs / "again")
    (old / "stale.txt").write_text("from the old run")
    (old / "slurm").mkdir()
    (old / "slurm" / "job.sh").write_text("#!/bin/sh\n")  # the batch job's files stay
    assert _train(runs, "output.name=again", "output.overwrite=true") == 0
    assert not (old / "stale.txt").exists() and (old / "slurm" / "job.sh").is_file()
    assert yaml.safe_load((old / "run.yaml").read_text())["name"] == "again"
    assert (runs / "old1" / "run.yaml").is_file() and not lock_path(old).exists()


@pytest.mark.parametrize("sub", ["", "weights", "figures/new"])
def test_a_run_is_never_put_inside_another_run(world, capsys, sub):
    work, runs = world
    before = _snapshot(work)
    assert _train(runs / "old1" / sub, "output.name=weights" if not sub else "output.name=x",
                  "output.overwrite=true") == 2
    _one_paragraph_error(capsys.readouterr().err, "inside the run folder", str(runs / "old1"))
    assert _snapshot(work) == before


@pytest.mark.parametrize("how", ["output.overwrite=true", "train.resume=auto"])
def test_a_run_killed_before_its_run_yaml_is_started_again(world, how):
    work, runs = world
    skeleton = runs / "early"
    for sub in ("figures", "weights"):
        (skeleton / sub).mkdir(parents=True)
    (skeleton / "config.yaml").write_text("data: {}\n")
    assert _train(runs, "output.name=early", how) == 0
    assert (skeleton / "run.yaml").is_file() and (skeleton / "metrics.jsonl").is_file()


@pytest.mark.parametrize("out", ["runs/run/metrics.jsonl", "runs/run/weights/last.pt", "runs/run/figures/loss.png",
                                 "runs/run/report.html", "runs/run/new.html", "link/metrics.jsonl"])
def test_compare_never_writes_into_a_run_folder(tmp_path, capsys, out):
    runs = tmp_path / "runs"
    a, b = _make_run(runs / "run"), _make_run(runs / "b")
    (a / "figures").mkdir()
    (a / "figures" / "loss.png").write_bytes(b"png")
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    before = _snapshot(runs)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / out)]) == 2
    _one_paragraph_error(capsys.readouterr().err, str(tmp_path / out), "inside the run folder")
    assert _snapshot(runs) == before
    # Beside the runs is fine.
    assert main(["compare", str(a), str(b), "--out", str(runs / "cmp.html")]) == 0
    assert (runs / "cmp.html").is_file()


def test_report_writes_only_into_a_run_folder(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "report.html").write_text("my own page")
    assert main(["report", str(home)]) == 2
    _one_paragraph_error(capsys.readouterr().err, str(home), "not a run folder")
    assert (home / "report.html").read_text() == "my own page"


def _hold_lock_in_another_process(run_dir: Path) -> subprocess.Popen:
    code = ("import sys, time; from visionlaunch.trainers.runlock import RunLock\n"
            f"lock = RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_run_folder_refuses_a_second_process_and_a_killed_holder_leaves_no_stuck_lock(world, capsys):
    work, runs = world
    run = runs / "busy"
    holder = _hold_lock_in_another_process(run)
    try:
        before = _snapshot(work)
        for extra in (["train.resume=auto"], ["output.overwrite=true"]):
            assert _train(runs, "output.name=busy", *extra) == 2
            _one_paragraph_error(capsys.readouterr().err, str(run), "in use by another training process",
                                 f"pid {holder.pid}")
        assert _snapshot(work) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the dead holder's lock: the same command now trains.
    assert _train(runs, "output.name=busy", "train.resume=auto") == 0
    assert (run / "metrics.jsonl").is_file() and not lock_path(run).exists()


def test_the_same_resume_auto_command_twice_trains_once(tmp_path, capsys):
    """A real training process (slowed down) holds its folder; the second start of the same command stops."""
    runs = tmp_path / "runs"
    args = [*TINY, f"output.dir={runs}", "output.name=twice", "train.resume=auto", "train.log_every=1"]
    first = subprocess.Popen([sys.executable, str(FAULT_TRAIN_PY), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env(VL_TEST_FAULT="sleep=0.3"), cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (runs / "twice" / "metrics.jsonl").is_file():  # training has begun
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        assert main(["train", *args]) == 2
        _one_paragraph_error(capsys.readouterr().err, "in use by another training process", f"pid {first.pid}")
        _, err = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    steps = [r for r in map(yaml.safe_load, (runs / "twice" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))  # one run's records, none lost or doubled


def test_lock_file_protocol(tmp_path):
    run = tmp_path / "new" / "runs" / "x"
    with RunLock(run) as lock:
        assert lock.held and lock_path(run).is_file()
        assert f"pid {os.getpid()}" in lock_path(run).read_text()
    # Released: the file and the folders made for it are gone, as nothing else was written there.
    assert not (tmp_path / "new").exists()


def test_an_ablation_folder_inside_a_run_folder_is_refused(world, capsys):
    work, runs = world
    before = _snapshot(work)
    ablation = REPO / "configs" / "ablations" / "smoke.yaml"
    assert main(["ablate", str(ablation), "--dry-run", "--out", str(runs / "old1" / "abl")]) == 2
    _one_paragraph_error(capsys.readouterr().err, str(runs / "old1"), "inside the run folder")
    assert _snapshot(work) == before


def test_a_file_system_without_locks_trains_unguarded_with_a_note(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    notes = []
    lock = RunLock(tmp_path / "runs" / "x").acquire(log=notes.append)
    assert not lock.held and len(notes) == 1 and "no file locks" in notes[0]
    assert not (tmp_path / "runs").exists()  # nothing left behind


@pytest.mark.parametrize("command, out", [
    (["predict", "RUN", "IMAGES"], "metrics.jsonl"),
    (["predict", "RUN", "IMAGES"], "weights/last.pt"),
    (["export", "RUN", "--format", "torchscript"], "run.yaml"),
    (["export", "RUN", "--format", "torchscript"], "figures/loss.png"),
])
def test_predict_and_export_never_replace_a_runs_own_files(tmp_path, capsys, command, out):
    run = _make_run(tmp_path / "runs" / "r")
    (run / "weights" / "last.pt").write_bytes(b"weights")
    (tmp_path / "images").mkdir()
    before = _snapshot(tmp_path)
    args = [str(run) if a == "RUN" else str(tmp_path / "images") if a == "IMAGES" else a for a in command]
    assert main([*args, "--out", str(run / out)]) == 2
    _one_paragraph_error(capsys.readouterr().err, str(run / out), "one of that run's own files")
    assert _snapshot(tmp_path) == before
