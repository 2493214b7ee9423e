"""How a visionlaunch process ends: `end_process(code)` is the one exit of `train.py`, `python -m visionlaunch` and
the `visionlaunch` command."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import NoReturn


def end_process(code: int) -> NoReturn:
    """sys.exit(code), except in one process of a multi-process launch (WORLD_SIZE > 1) that used torch.distributed:
    that one runs the exit handlers (logging, multiprocessing, W&B), flushes its output and ends with os._exit,
    without the interpreter's teardown. DistributedDataParallel keeps the gloo process group and its threads alive
    after destroy_process_group (torch 2.14), and a process that tore the interpreter down around them sometimes
    aborted ("terminate called without an active exception", SIGABRT) after its run had finished: the launcher and
    the scheduler then reported a finished run as failed. The trainer has closed every file of the run by now."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1 and "torch.distributed" in sys.modules:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can be said
                stream.flush()
        os._exit(code)
    sys.exit(code)
