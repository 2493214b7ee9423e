"""Several processes on the CPU (a real gloo group, launched as the README says): they follow the single-process
trajectory step by step, a preempted 2-process run resumes exactly, a rank that fails ends the whole job
quickly, and the launches that Accelerate gets silently wrong stop with the command that works.

The equivalence runs use a model without BatchNorm and without dropout or augmentation: BatchNorm normalises
each rank's micro-batch with its own statistics, and random draws come from one stream per rank, so with those
the runs are equally valid but not equal.
"""

import random
import re
import signal
import sys
import time

import pytest
import torch

from tests.run_helpers import (DETERMINISTIC, FAULT_TRAIN_PY, TRAIN_PY, assert_same_records,
                               max_weight_difference, records, require_mnist, run, train_args, two_process_launcher)
from visionlaunch.launch.cli import main
from visionlaunch.trainers.distributed import processes_requested_by_launcher


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """One process (global batch 48) and two processes with 2-step accumulation (micro-batches of 12)."""
    data = require_mnist()
    out = tmp_path_factory.mktemp("runs")
    cache = str(tmp_path_factory.mktemp("cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAUNCH_CACHE", cache)
        mp.setenv("WANDB_MODE", "disabled")
        assert main(["train", *train_args(data, out, "one", *DETERMINISTIC)]) == 0
    proc = run([*two_process_launcher(), *train_args(data, out, "two", *DETERMINISTIC, "train.grad_accum=2",
                                                     "train.checkpoint_every=10")],
               VISIONLAUNCH_CACHE=cache, WANDB_MODE="disabled")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"data": data, "out": out, "cache": cache, "one": out / "one", "two": out / "two"}


def test_two_processes_follow_one_process_step_by_step(refs):
    one, two = refs["one"], refs["two"]
    steps1, steps2 = records(one, "step"), records(two, "step")
    assert len(steps1) == len(steps2) == 2 * (1700 // 48)  # every step logged once: only rank 0 writes
    for a, b in zip(steps1, steps2):
        assert a["step"] == b["step"]
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)  # the global batch's loss, averaged over ranks
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12, abs=0)  # OneCycle counts optimizer steps
    assert max_weight_difference(one, two) < 1e-5

    # Evaluation covers every sample exactly once across ranks (no padding, no duplicates).
    epochs1, epochs2 = records(one, "epoch"), records(two, "epoch")
    assert [(r["split"], r["n"]) for r in epochs2] == [(s, n) for _ in range(2)
                                                       for s, n in (("train", 1680), ("val", 300), ("test", 500))]
    for a, b in zip(epochs1, epochs2):
        assert a["acc"] == b["acc"] and abs(a["loss"] - b["loss"]) < 1e-5, (a, b)

    # Every rank saved its own random state into the one checkpoint folder.
    latest = sorted((two / "checkpoints").glob("step-*"))[-1]
    assert {p.name for p in latest.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert {p.name for p in latest.glob("rank_state_*.pt")} == {"rank_state_0.pt", "rank_state_1.pt"}
    assert "processes: 2" in (two / "run.yaml").read_text()


def test_preempted_two_process_run_resumes_exactly(refs):
    micro = random.randint(10, 130)  # of 140 micro-batches: a random step in either epoch
    args = train_args(refs["data"], refs["out"], "cut", *DETERMINISTIC, "train.grad_accum=2",
                      "train.checkpoint_every=10", "train.resume=auto")
    started = time.monotonic()
    proc = run([*two_process_launcher(FAULT_TRAIN_PY), *args], VISIONLAUNCH_CACHE=refs["cache"],
               WANDB_MODE="disabled", VL_TEST_FAULT=f"action=signal,signal=SIGTERM,rank=1,step={micro}")
    # Rank 1 got the signal; both ranks stopped after the same step and exited 75 (torchrun itself reports 1).
    step = (micro + 1) // 2
    assert proc.returncode != 0, f"micro-batch {micro}: {proc.stderr[-3000:]}"
    assert f"stopped by SIGTERM after step {step}" in proc.stderr, proc.stderr[-3000:]
    assert f"stopped by a signal sent to another process after step {step}" in proc.stderr
    assert (refs["out"] / "cut" / "checkpoints" / f"step-{step:08d}" / "visionlaunch.json").is_file()
    assert time.monotonic() - started < 120

    proc = run([*two_process_launcher(), *args], VISIONLAUNCH_CACHE=refs["cache"], WANDB_MODE="disabled")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resuming from {refs['out'] / 'cut' / 'checkpoints' / f'step-{step:08d}'}" in proc.stderr
    assert max_weight_difference(refs["two"], refs["out"] / "cut") <= 1e-6, f"signal at micro-batch {micro}"
    assert_same_records(records(refs["two"]), records(refs["out"] / "cut"), tol=1e-6)


def test_a_finished_run_ends_its_processes_without_the_interpreter_teardown(refs, tmp_path):
    """DistributedDataParallel keeps the gloo group's threads alive after destroy_process_group, and a process that
    then tore the interpreter down sometimes aborted after a finished run (the job was reported failed). The fault
    aborts in that teardown: it fires in a single process, and a 2-process run that finishes never reaches it."""
    fault = "abort_in_interpreter_teardown=1"
    alone = run([sys.executable, str(FAULT_TRAIN_PY), "--config", str(tmp_path / "missing.yaml")], VL_TEST_FAULT=fault)
    assert alone.returncode == -signal.SIGABRT, alone.stderr[-2000:]  # exit 2 (no config), then the teardown
    proc = run([*two_process_launcher(FAULT_TRAIN_PY), *train_args(refs["data"], refs["out"], "teardown",
                                                                   *DETERMINISTIC, "train.epochs=1")],
               VISIONLAUNCH_CACHE=refs["cache"], WANDB_MODE="disabled", VL_TEST_FAULT=fault)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done in" in proc.stderr and (refs["out"] / "teardown" / "weights" / "last.pt").is_file()


def test_a_rank_that_raises_ends_the_whole_job_quickly(refs):
    proc = run([*two_process_launcher(FAULT_TRAIN_PY),
                *train_args(refs["data"], refs["out"], "crash", *DETERMINISTIC)], timeout=90,
               VISIONLAUNCH_CACHE=refs["cache"], WANDB_MODE="disabled", VL_TEST_FAULT="action=raise,rank=1,step=5")
    ended = time.time()
    assert proc.returncode != 0
    failed_at = re.search(r"injected failure on rank 1 at micro-batch 5 at time ([0-9.]+)", proc.stderr)
    assert failed_at, proc.stderr[-3000:]
    # Measured from the failure, not from the launch: start-up time depends on the machine's load. The survivor
    # must not wait for train.dist_timeout_s (600 s) in its next collective.
    assert ended - float(failed_at.group(1)) < 30


@pytest.mark.skipif(torch.cuda.is_available(), reason="these launches are only wrong on a machine without GPUs")
@pytest.mark.parametrize("launch, use_cpu", [
    (["--cpu", "--num_processes", "2"], "1"),          # Accelerate starts ONE process
    (["--multi_gpu", "--num_processes", "2"], None),   # two unsynchronised copies
], ids=["cpu-flag-one-process", "multi-gpu-without-gpus"])
def test_silently_wrong_launches_stop_with_the_command_that_works(tmp_path, shared_data, launch, use_cpu):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", str(TRAIN_PY), *train_args(shared_data, tmp_path, "wrong")]
    proc = run(cmd, timeout=120, ACCELERATE_USE_CPU=use_cpu)
    assert proc.returncode != 0
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py" in proc.stderr
    assert "visionlaunch: error:" in proc.stderr and not (tmp_path / "wrong").exists()


def test_launcher_command_lines_are_read_with_accelerates_parser():
    py = "/venv/bin/python3"
    assert processes_requested_by_launcher([py, "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "4",
                                            "train.py", "--config", "x.yaml"]) == 4
    assert processes_requested_by_launcher([py, "-m", "accelerate.commands.launch", "--num_processes=3",
                                            "train.py"]) == 3
    # Not Accelerate: nothing to compare (a script's own --num_processes argument is not the launcher's).
    assert processes_requested_by_launcher([py, "train.py", "--num_processes", "3"]) is None
    assert processes_requested_by_launcher(["/bin/bash"]) is None
