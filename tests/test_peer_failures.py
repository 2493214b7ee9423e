"""A real 2-rank gloo group on the CPU, launched as the README says: when one rank dies or hangs, the survivor
ends with one visionlaunch message (exit 1) instead of a page of backend traceback, within train.dist_timeout_s
for a hung peer."""

import contextlib
import os
import pathlib
import signal
import subprocess
import time

from tests.run_helpers import FAULT_TRAIN_PY, REPO, env, two_process_launcher
from visionlaunch.trainers.distributed import PeerLost, peer_lost

ARGS = ["--config", str(REPO / "configs" / "mnist_fcn.yaml"), "data.name=mnist_sample", "data.train_subset=1000",
        "data.val_size=100", "data.test_subset=100", "train.epochs=2", "train.progress=false",
        "report.figures=false", "train.batch_size=50", "model.args={hidden: [32]}", "output.name=d",
        "train.resume=auto"]
SURVIVOR = "visionlaunch: error: another process of this run died or stopped answering, so this one (rank 0 of 2)"


def _survivor_lines(stderr: str) -> list[str]:
    """What rank 0 wrote (torch's launcher prefixes the lines of a traceback it records with [rank0]:)."""
    return [line for line in stderr.splitlines() if line.startswith(("[rank0]:", "visionlaunch:"))]


def test_a_killed_rank_ends_the_survivor_with_one_message(tmp_path):
    # The launcher sends SIGTERM to the survivor soon after rank 1 dies; the survivor's teardown is slowed (as
    # destroying a group with a dead member can be), so a message said only after it would be lost.
    started = time.monotonic()
    proc = subprocess.run([*two_process_launcher(FAULT_TRAIN_PY), *ARGS, f"output.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=240, cwd=REPO,
                          env=env(VL_TEST_FAULT="action=signal,signal=SIGKILL,rank=1,step=5,teardown_sleep=5"))
    assert proc.returncode != 0
    assert time.monotonic() - started < 120
    lines = _survivor_lines(proc.stderr)
    assert any(line.startswith(SURVIVOR) for line in lines), proc.stderr[-4000:]
    assert not any("Traceback" in line or "gloo/transport" in line for line in lines), proc.stderr[-4000:]


def _descendants(root: int) -> list[int]:
    """Every live descendant of `root`, read from /proc (children before their parents are not guaranteed)."""
    parent = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def test_a_hung_rank_ends_the_survivor_after_the_timeout(tmp_path):
    proc = subprocess.Popen([*two_process_launcher(FAULT_TRAIN_PY), *ARGS, f"output.dir={tmp_path}",
                             "train.dist_timeout_s=10"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env(VL_TEST_FAULT="action=signal,signal=SIGSTOP,rank=1,step=5"),
                            start_new_session=True)
    seen, hung_at = [], None
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            if "run folder:" in line:
                hung_at = time.monotonic()  # training starts; rank 1 stops itself a few steps later
            if line.startswith("visionlaunch: error:"):
                break
            assert time.monotonic() < deadline, "\n".join(seen[-50:])
    finally:
        # The launcher's workers may sit in sessions of their own: kill every descendant, the stopped rank included,
        # so that no SIGSTOPped process outlives the test.
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert seen and seen[-1].startswith(SURVIVOR), "\n".join(seen[-50:])
    assert "Timed out" in seen[-1] and "train.dist_timeout_s=10" in seen[-1]
    assert hung_at is not None and time.monotonic() - hung_at < 90


def test_only_backend_failures_of_a_group_are_translated():
    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: Connection "
                        "reset by peer. This is typically caused by a remote worker hanging")
    lost = peer_lost(gloo, world=2, timeout_s=600)
    assert isinstance(lost, PeerLost) and lost.exit_code == 1
    assert "Read error [127.0.0.1]:1: Connection reset by peer" in str(lost) and "pair.cc" not in str(lost)
    assert peer_lost(gloo, world=1, timeout_s=600) is None  # one process: no peer to lose
    assert peer_lost(RuntimeError("shape mismatch"), world=2, timeout_s=600) is None  # a real bug keeps its traceback
    assert peer_lost(KeyError("step"), world=2, timeout_s=600) is None

