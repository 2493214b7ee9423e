"""The C heap policies (visionlaunch.heap): a CPU training process keeps freed memory for the next step instead of
faulting in new pages every step, and a writer worker can hand its free pages back. Each case runs in a fresh
interpreter, since a mallopt setting lasts for the process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the heap settings are glibc's (Linux)")

# A training step in miniature: blocks of 4-24 MiB allocated, written and freed in a loop, as activations and
# gradients are (numpy's, whose small headers are not on the C heap, so that the freed blocks reach its top, as a
# step's tensors do once its last ones are freed); the minor page faults of the last 20 rounds.
STEPS = """
import json, resource, sys
import numpy as np
from visionlaunch.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():
    blocks = [np.ones(n << 18, dtype=np.float32) for n in (1, 3, 6, 2, 5)]  # 4-24 MiB
    return sum(float(b[-1]) for b in blocks)
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keeping_freed_memory_stops_the_page_faults_of_repeated_steps():
    default, kept = faults("default"), faults("keep")
    assert kept["kept"] is True
    pages = 20 * (1 + 3 + 6 + 2 + 5) * (1 << 20) // 4096  # every block's pages, every round
    assert default["faults"] > pages // 5, default  # glibc's default: trimmed, then faulted in again
    assert kept["faults"] < pages // 50, kept  # kept: the heap's pages are reused


def test_a_step_is_kept_but_a_larger_peak_is_given_back():
    code = """
import json, resource
import numpy as np
from visionlaunch.heap import keep_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
keep_freed_memory()
base = rss()
blocks = [np.ones(1 << 20, dtype=np.float32) for _ in range(128)]  # a one-off peak of 512 MiB
del blocks
print(json.dumps({"after_peak": rss() - base}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True
                                    ).stdout.strip().splitlines()[-1])
    assert out["after_peak"] < 160 << 20, out  # at most TRIM_THRESHOLD (128 MiB) of it stays


def test_release_free_memory_gives_free_pages_back():
    code = """
import json, resource
import numpy as np
from visionlaunch.heap import keep_freed_memory, release_free_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
keep_freed_memory()
blocks = [np.ones(1 << 20, dtype=np.float32) for _ in range(25)]  # 100 MiB in 4 MiB blocks: kept when freed
del blocks
held = rss()
release_free_memory()
print(json.dumps({"held": held, "after": rss()}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True
                                    ).stdout.strip().splitlines()[-1])
    assert out["held"] - out["after"] > 80 << 20, out
