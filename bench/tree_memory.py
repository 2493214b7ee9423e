"""Peak memory of a whole process tree (a command, its workers and their children), sampled from /proc.

PSS (proportional set size: each shared page divided among the processes sharing it) sums to what the tree really
holds; RSS counts shared pages (the imported libraries, pages a fork shares) once per process, so its sum
overstates. PSS includes the pages of files the processes have mapped (libraries, a memory-mapped .beton): page
cache, which the kernel reclaims when memory runs short and whose share depends on what else read the file (a
file just written is all in the page cache). The anonymous and shared-memory part of PSS (Pss_Anon + Pss_Shmem,
Linux 5.x) is what the processes themselves hold. Both are read from /proc/<pid>/smaps_rollup every `interval` seconds; a peak between two samples is
missed, so the interval should be short against the phase measured. Linux only.
"""

from __future__ import annotations

import threading
from pathlib import Path

PROC = Path("/proc")


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from the parent ids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def tree_memory(root: int) -> tuple[int, int, int, int]:
    """(PSS bytes, RSS bytes, processes, anonymous + shared-memory PSS bytes) of the tree under `root` now."""
    pss = rss = count = held = 0
    for pid in descendants(root):
        try:
            text = (PROC / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue
        count += 1
        for line in text.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                held += int(line.split()[1]) * 1024
    return pss, rss, count, held


class PeakSampler:
    """Samples tree_memory(root) in a thread until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.peak_pss = self.peak_rss = self.peak_held = self.peak_processes = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            pss, rss, count, held = tree_memory(self.root)
            if count:
                self.samples += 1
                self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
                self.peak_held = max(self.peak_held, held)
                self.peak_processes = max(self.peak_processes, count)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

