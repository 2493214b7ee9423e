"""Test-only front door: train.py with one injected fault, so that tests can fail a real run at a chosen step.

$VL_TEST_FAULT is comma-separated key=value pairs:
  action=signal,signal=SIGTERM,rank=R,step=K   rank R sends itself the signal during training micro-batch K
  action=raise,rank=R,step=K                   rank R raises RuntimeError at training micro-batch K (its message
                                               gives the time.time() of the failure)
  action=kill_in_checkpoint,save=K             SIGKILL right after Accelerate wrote the K-th checkpoint's model and
                                               optimizer files, before the rest (a torn checkpoint folder)
  sleep=S                                      (with any action, or alone) sleep S seconds per training micro-batch
  teardown_sleep=S                             (with any action) sleep S seconds before destroying the process
                                               group: a slow teardown, as after a peer's death
  abort_in_interpreter_teardown=1              abort (SIGABRT) if the interpreter is torn down at exit, as the gloo
                                               threads that DistributedDataParallel leaves behind sometimes did
The numerics are untouched: a run with a fault that does not fire equals a plain run.
"""

import os
import signal
import sys
import time

import torch

from visionlaunch.launch.cli import end_process, main
from visionlaunch.trainers import losses


class _AbortInInterpreterTeardown:
    def __del__(self):  # a module global: only the interpreter's teardown at exit deletes it
        os.abort()


def _install(spec: dict) -> None:
    rank = int(os.environ.get("RANK", "0"))
    target, at, sleep = int(spec.get("rank", 0)), int(spec.get("step", 0)), float(spec.get("sleep", 0))
    action = spec.get("action")
    calls = {"loss": 0, "save": 0}
    forward = losses.CrossEntropyLoss.forward

    def faulty_forward(self, logits, targets):
        if torch.is_grad_enabled():  # a training micro-batch (evaluation runs under no_grad)
            calls["loss"] += 1
            if sleep:
                time.sleep(sleep)
            if rank == target and calls["loss"] == at:
                if action == "signal":
                    os.kill(os.getpid(), getattr(signal, spec.get("signal", "SIGTERM")))
                elif action == "raise":
                    raise RuntimeError(f"injected failure on rank {rank} at micro-batch {at} at time {time.time():.3f}")
        return forward(self, logits, targets)

    losses.CrossEntropyLoss.forward = faulty_forward

    if action == "kill_in_checkpoint":
        from accelerate import Accelerator
        save_state = Accelerator.save_state

        def dying_save_state(self, *args, **kwargs):
            out = save_state(self, *args, **kwargs)
            calls["save"] += 1
            if calls["save"] == int(spec["save"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        Accelerator.save_state = dying_save_state

    if "teardown_sleep" in spec:
        from accelerate.state import PartialState
        destroy = PartialState.destroy_process_group

        def slow_destroy(self, *args, **kwargs):
            time.sleep(float(spec["teardown_sleep"]))
            return destroy(self, *args, **kwargs)

        PartialState.destroy_process_group = slow_destroy


if __name__ == "__main__":
    fault = os.environ.get("VL_TEST_FAULT", "")
    spec = dict(pair.split("=", 1) for pair in fault.split(",") if "=" in pair)
    _install(spec)
    if spec.get("abort_in_interpreter_teardown") == "1":
        _teardown_fault = _AbortInInterpreterTeardown()
    end_process(main(["train", *sys.argv[1:]]))
