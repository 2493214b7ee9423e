"""Logs that fit in a file: off a terminal (a pipe, a SLURM .out file) a run writes plain lines, no carriage-return
frames, and no model table unless --verbose; on a terminal the progress bars stay."""

import io
import os
import subprocess
import sys
import time

from tqdm import tqdm

from tests.run_helpers import REPO, TRAIN_PY, env
from visionlaunch.progress import PlainProgress, progress_bar

ARGS = ["--config", str(REPO / "configs" / "mnist_fcn.yaml"), "data.name=mnist_sample", "data.train_subset=2000",
        "data.test_subset=200", "data.val_size=200", "train.epochs=2", "train.batch_size=20",
        "report.figures=false", "model.args={hidden: [16]}"]  # progress bars on (the default)


def _train_into_a_pipe(tmp_path, *extra):
    proc = subprocess.run([sys.executable, str(TRAIN_PY), *ARGS, f"output.dir={tmp_path}", "output.name=p", *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout.decode()


def test_a_run_into_a_pipe_writes_plain_bounded_lines(tmp_path):
    started = time.monotonic()
    log = _train_into_a_pipe(tmp_path)
    seconds = time.monotonic() - started
    assert "\r" not in log and "\x1b[" not in log  # no bar frames, no cursor movement
    lines = log.splitlines()
    assert [line[:11] for line in lines if " | train loss " in line] == ["epoch   1/2", "epoch   2/2"]
    progress = [line for line in lines if line.startswith(("epoch 1/2: ", "epoch 2/2: "))]
    assert all(" step (" in line and "step/s" in line for line in progress)  # plain lines, only on a slow epoch
    # Fixed lines (versions, data, model, run folder, report, done) + the epoch lines + at most a progress line per
    # 30 s of the run: 90 steps an epoch would have been hundreds of frames.
    assert len(lines) <= 12 + seconds / 30, log
    assert "Layer (type" not in log and "trainable parameters" in log  # the table is in summary.txt only
    assert "Layer (type" in (tmp_path / "p" / "summary.txt").read_text()


def test_verbose_prints_the_model_table(tmp_path, capsys):
    from visionlaunch.launch.cli import main

    assert main(["train", *ARGS, f"output.dir={tmp_path}", "train.epochs=1", "data.train_subset=300", "--verbose"]) == 0
    assert "Layer (type" in capsys.readouterr().err


def test_plain_progress_prints_a_line_per_interval():
    out = io.StringIO()
    bar = PlainProgress(total=40, desc="epoch 1/3", unit="step", every_s=0.05, file=out)
    for _ in range(40):
        time.sleep(0.01)
        bar.update()
        bar.set_postfix(loss="0.1234")
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 10, lines  # about 0.4 s in 0.05 s intervals, never one per step
    assert "\r" not in out.getvalue()
    assert lines[-1].startswith("epoch 1/3: ") and "/40 step (" in lines[-1] and "step/s" in lines[-1]
    assert lines[-1].endswith("| loss=0.1234")
    silent = io.StringIO()
    disabled = PlainProgress(total=5, every_s=0, disable=True, file=silent)
    for _ in range(5):
        disabled.update()
    assert silent.getvalue() == "" and disabled.n == 5


def test_a_terminal_keeps_the_bar():
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as tty, os.fdopen(leader, "rb", buffering=0):
        bar = progress_bar(total=3, file=tty)
        assert isinstance(bar, tqdm)
        bar.close()
    assert isinstance(progress_bar(total=3, file=io.StringIO()), PlainProgress)
