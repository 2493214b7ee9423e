"""Progress that fits where it goes: tqdm bars on a terminal; off a terminal (a SLURM .out file, CI, `| tee`)
a plain line every PLAIN_EVERY_S seconds instead of the carriage-return frames a bar redraws many times a second,
which would fill a log file with megabytes of them."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

# Off a terminal, one line per this many seconds at most: a line twice a minute keeps a job log readable and
# still shows that a long epoch or data conversion is moving.
PLAIN_EVERY_S = 30.0


class PlainProgress:
    """The part of tqdm's interface that visionlaunch uses, writing `desc: n/total unit (p%), rate, elapsed |
    postfix` as a plain line at most every `every_s` seconds (never a carriage return)."""

    def __init__(self, iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, every_s: float | None = None, file=None, **_ignored):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self.disable = desc, unit.strip(), initial, disable
        self.every_s = PLAIN_EVERY_S if every_s is None else every_s
        self.file = file
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._n_last = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def _line(self, now: float) -> None:
        rate = (self.n - self._n_last) / max(now - self._last, 1e-9)
        done = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else \
            f"{self.n} {self.unit}"
        text = f"{self.desc}: {done}, {rate:,.1f} {self.unit}/s, {now - self._start:,.0f} s"
        print(text + (f" | {self.postfix}" if self.postfix else ""), file=self.file or sys.stderr, flush=True)
        self._last, self._n_last = now, self.n

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def close(self) -> None:
        pass

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal, PlainProgress off one (where the output goes: kwargs' file or
    stderr)."""
    stream = kwargs.get("file") or sys.stderr
    try:
        on_terminal = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        on_terminal = False
    return tqdm(iterable, **kwargs) if on_terminal else PlainProgress(iterable, **kwargs)
