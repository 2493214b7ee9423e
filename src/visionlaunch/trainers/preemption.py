"""Preemption: a signal (SIGTERM, SIGUSR2 and SIGINT = Ctrl-C by default; `train.preempt_signals`) asks the run
to stop cleanly.

The handler only sets a flag. The trainer looks at it after every optimizer step, agrees on it across ranks (a
rank that got the signal stops them all at the same step), writes a checkpoint and exits with
PREEMPTED_EXIT_CODE, so a scheduler can tell "stopped on request, resume me" from success (0), a bad input (2)
and a crash (1). A second identical signal restores the default action: a user who insists gets their shell back.
Once training is over (the final checkpoint written, figures and report being drawn) there is no step to finish:
a signal then stops the main process at once, saying that only the figures and the report are missing.
"""

from __future__ import annotations

import signal
import sys
import threading

# 75 = EX_TEMPFAIL in sysexits.h: "temporary failure, the user is invited to retry". The one place it is defined.
# The main process also leaves a marker in the run folder (visionlaunch.runfolder.write_preempted).
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Raised on every rank once the checkpoint of a preempted run is written; the CLI exits with `exit_code`."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, signal_name: str, step: int, checkpoint, *, finished: bool = False):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where, then = ((f"after training finished (step {step}), before the figures and the report were complete; "
                        f"the weights, metrics.jsonl and the final checkpoint {checkpoint} are", "draw them")
                       if finished else (f"after step {step}; checkpoint {checkpoint}", "continue from it"))
        super().__init__(f"stopped by {signal_name} {where}. Run the same command with train.resume=auto (same "
                         f"output.name) to {then}. Exit status {PREEMPTED_EXIT_CODE}.")


class PreemptionWatcher:
    """Installs the handlers for the duration of a `with` block and restores the previous ones afterwards."""

    def __init__(self, signal_names: list[str], log=None):
        self.signals = [getattr(signal, name) for name in signal_names]
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.received: str | None = None
        self._previous: dict = {}
        self._finishing = False
        self._stop_now = None  # after training, on the main process: makes the exception that stops it at once

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received == name:  # asked twice: stop waiting for the step boundary
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = name
        if self._finishing:
            if self._stop_now is not None:
                self.log(f"received {name} after training finished: stopping now, without the rest of the figures "
                         f"and the report (exit {PREEMPTED_EXIT_CODE})")
                raise self._stop_now(name)
            return  # another rank: it waits for the main process, which stops everyone
        self.log(f"received {name}: finishing the current step, then writing a checkpoint and exiting "
                 f"({PREEMPTED_EXIT_CODE})")

    def training_finished(self, stop_now=None) -> None:
        """No step is left to finish: a signal from now on raises `stop_now(signal_name)` at once where it is
        given (the main process), and is only recorded where it is not (the other ranks)."""
        self._finishing, self._stop_now = True, stop_now

    def __enter__(self) -> PreemptionWatcher:
        # Python only lets the main thread install handlers; elsewhere (a notebook worker) there is nothing to do.
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
