"""The C heap (glibc's malloc) under the two kinds of work that fight it: giving its free pages back, and keeping them.

PyTorch's CPU tensors, PIL's and OpenCV's buffers all come from malloc. By default glibc serves a large block
(above a threshold that starts at 128 KiB and follows the largest block freed, up to 32 MiB) with its own mmap and
unmaps it when it is freed, and it shrinks the heap when more than twice that threshold is free at its top. A CPU
training step allocates and frees the same activations and gradients every step; each time they come back from the
kernel they are new pages, zeroed on first touch: thousands of page faults a step (4,000-12,000 for `mnist_cnn`,
several ms of a 70 ms step, and more in one process than another for the same work). `keep_freed_memory` stops
that: freed blocks stay in the process for the next step. A writer worker, the other way round, decodes photos of
every size and would fragment its heap ever wider; `release_free_memory` hands every free page back.

Both do nothing where the C library is not glibc (macOS, musl): there the allocator has its own policy.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems
# The heap is shrunk only when more than this is free at its top: a step's churn stays, while a one-off peak (the
# index being built, an evaluation's large batches) does not stay held by the process for the rest of the run.
TRIM_THRESHOLD = 128 << 20


@functools.cache
def _libc():
    return ctypes.CDLL(None)


def keep_freed_memory() -> bool:
    """Make malloc keep freed memory for reuse: blocks up to 32 MiB from the heap (not one mmap each), and up to
    TRIM_THRESHOLD of free memory kept at the heap's top. Returns whether the C library took both settings (glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = _libc()
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return False


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing). A writer worker
    decodes photos of every size: glibc serves their buffers from a heap whose free space, fragmented by the sizes,
    would otherwise grow with every sample written (~0.3 KiB a sample, 130 MiB a worker over 1M photos). Called
    every chunk of samples it costs well under a millisecond."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)
