"""Preemption signals: the run finishes the step it is in, writes a checkpoint and the command exits with 75;
which signals count is configurable; the handlers are gone once training is over; a second signal does not wait.
(The end-to-end case, a signal sent from outside to a running process and resumed exactly, is in
test_checkpoint.py; the multi-process case, where one rank gets the signal, in test_distributed.py.)"""

import signal
import subprocess
import sys

import pytest

from tests.run_helpers import records, signal_at_training_step, train_args
from visionlaunch.launch.cli import main
from visionlaunch.trainers.checkpoint import complete_checkpoints
from visionlaunch.trainers.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatcher


_signal_at_micro_batch = signal_at_training_step


@pytest.mark.parametrize("signame, overrides", [
    ("SIGUSR2", []),                                        # in the default list, with SIGTERM
    ("SIGUSR1", ["train.preempt_signals=[SIGUSR1]"]),       # configured
])
def test_a_preemption_signal_checkpoints_after_the_step_and_exits_75(tmp_path, shared_data, capsys, monkeypatch,
                                                                     signame, overrides):
    signum = getattr(signal, signame)
    before = signal.getsignal(signum)
    _signal_at_micro_batch(monkeypatch, signum, at=14)  # during optimizer step 7 (2 micro-batches per step)
    code = main(["train", *train_args(shared_data, tmp_path, "pre", "train.batch_size=50", "train.grad_accum=2",
                                      "model.args={hidden: [16]}", *overrides)])
    assert code == PREEMPTED_EXIT_CODE == 75
    assert f"stopped by {signame} after step 7" in capsys.readouterr().err
    run_dir = tmp_path / "pre"
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step-00000007"]
    assert [r["step"] for r in records(run_dir, "step")] == list(range(1, 8))  # the step was finished, no more
    assert signal.getsignal(signum) == before  # handlers restored once the run is over


def test_signals_not_configured_keep_their_default_action():
    # SIGUSR1 is not in the default list: it must not be swallowed by the watcher.
    code = ("import os, signal; from visionlaunch.trainers.preemption import PreemptionWatcher\n"
            "with PreemptionWatcher(['SIGTERM', 'SIGUSR2']):\n"
            "    os.kill(os.getpid(), signal.SIGUSR1)\n"
            "print('survived')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGUSR1 and "survived" not in proc.stdout


def test_a_second_signal_does_not_wait_for_the_step():
    code = ("import os, signal; from visionlaunch.trainers.preemption import PreemptionWatcher\n"
            "with PreemptionWatcher(['SIGTERM']) as w:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    print('first', w.requested, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    print('still here', flush=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "first True" in proc.stdout and "still here" not in proc.stdout
    assert proc.returncode == -signal.SIGTERM


def test_the_exit_code_is_defined_once():
    assert Preempted("SIGTERM", 3, "x").exit_code == PREEMPTED_EXIT_CODE
    watcher = PreemptionWatcher(["SIGUSR2"])
    assert watcher.signals == [signal.SIGUSR2] and not watcher.requested
