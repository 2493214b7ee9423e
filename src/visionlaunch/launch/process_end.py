"""How a visionlaunch process ends: `end_process(code)` is the one exit of `train.py`, `python -m visionlaunch` and
the `visionlaunch` command; `lost_reader_exit` is how it ends when what read its output has gone."""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
from typing import NoReturn

# The status a shell reports for a program that SIGPIPE ended (`yes | head -1`): 128 + SIGPIPE.
LOST_READER_EXIT = 128 + 13


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end has closed: `visionlaunch models | head -1` after head
    has read its line. Python ignores SIGPIPE, so such a write raises BrokenPipeError instead of ending the process."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file (tests): not a pipe
        return False
    if not hasattr(select, "poll"):  # no poll() (Windows): a broken pipe on stdout is the likely cause
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def lost_reader_exit() -> int:
    """The quiet end of a command whose output pipe closed early, as every Unix tool ends: no message (nobody reads
    it), status LOST_READER_EXIT. stdout is pointed at /dev/null, so that the interpreter's last flush of what is
    still buffered does not fail again with "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return LOST_READER_EXIT


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
