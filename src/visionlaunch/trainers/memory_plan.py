"""Where the training data lives (data.residency), planned from its decoded size before anything is decoded.

In memory, every process of a node holds the decoded uint8 training and test splits (the tensor backend, or the
torch backend over in-memory tensors). Out of core, the training split stays on disk as an indexed source: the
torch backend's DataLoader workers decode one sample per item, in the local epoch order (order.py); the test split
stays in memory (the reports draw from it).

data.residency=auto keeps the data in memory when the node's copies fit the budget: MEMORY_SHARE of the memory this
process may use, the smaller of the machine's available memory (/proc/meminfo MemAvailable) and the room left under
the memory limit of this process's cgroup (named in /proc/self/cgroup) or of a group above it, when one is set (v2
memory.max, v1 memory.limit_in_bytes). Otherwise it reads the training split out of core, with the torch backend
(data.loader=torch), or with the ffcv backend when the config asks for it (data.loader=ffcv: the .beton file read
through the page cache, in the same local order); a loader set explicitly to tensor cannot read out of core, and the
run stops saying why. data.loader=ffcv reads an ImageFolder's training split out of core even when it would fit: it
trains from the .beton file anyway, which is then written from the files (the photos at their aspect ratio)
instead of from a decoded copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from visionlaunch.datasets.order import EpochOrder
from visionlaunch.datasets.source import ArraySource, decoded_bytes
from visionlaunch.errors import VisionlaunchError

# The decoded data may take at most this share of the memory available: the model, the optimizer, activations,
# DataLoader workers and the page cache need the rest.
MEMORY_SHARE = 0.5
# Out of core, a training epoch is shuffled in windows of this many blocks of this many consecutive samples.
OUT_OF_CORE_ORDER = EpochOrder(block=16, buffer=1024)
CGROUP = Path("/sys/fs/cgroup")
# At least what one DataLoader worker of the out-of-core torch backend adds: its own interpreter's pages and those of
# the parent it copies on write (100-130 MiB measured on a 6,000-photo folder under a memory cgroup).
WORKER_BYTES = 100 * 2**20


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2): no limit


def _own_groups(self_cgroup: Path) -> dict[str, str]:
    """This process's cgroup paths from /proc/self/cgroup: "v2" (the "0::" line) and "v1" (the memory controller's
    line). A SLURM job or a container puts the process in a group below the mount's root, whose limit is the one
    that counts."""
    groups = {}
    try:
        for line in self_cgroup.read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0" and not controllers:
                groups["v2"] = path
            elif "memory" in controllers.split(","):
                groups["v1"] = path
    except (OSError, ValueError):
        pass
    return groups


def _ancestry(path: str) -> list[str]:
    """"/a/b" -> ["a/b", "a", ""]: a group and every group above it (each limit applies)."""
    parts = [p for p in path.split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def memory_available(cgroup: Path = CGROUP, meminfo: Path = Path("/proc/meminfo"),
                     self_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """Bytes this process may still fill, and where that number comes from: the machine's available memory, or the
    room left under the tightest memory limit of this process's cgroup and the groups above it."""
    available, where = None, "unknown"
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available, where = int(line.split()[1]) * 1024, "available memory (MemAvailable)"
    except OSError:
        pass
    own = _own_groups(self_cgroup)
    for version, mount, limit_name, usage_name in (("v2", "", "memory.max", "memory.current"),
                                                   ("v1", "memory", "memory.limit_in_bytes", "memory.usage_in_bytes")):
        for group in _ancestry(own.get(version, "/")):
            folder = "/".join(p for p in (mount, group) if p)
            limit = _read_int(cgroup / folder / limit_name)
            if limit is not None and limit < 2**60:  # v1 writes a huge number for "no limit"
                room = max(limit - (_read_int(cgroup / folder / usage_name) or 0), 0)
                if available is None or room < available:
                    limit_file = f"{folder}/{limit_name}" if folder else limit_name
                    available = room
                    where = f"room under the cgroup memory limit ({limit / 2**30:.2f} GiB, {limit_file})"
    if available is None:
        raise VisionlaunchError("cannot tell how much memory this machine has (/proc/meminfo is unreadable and no "
                                "cgroup limit is set). Set data.residency=memory or data.residency=disk.")
    return available, where


@dataclass
class ResidencyPlan:
    out_of_core: bool
    loader: str  # the loader backend the run uses
    lines: list[str]  # what `train` says first


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def plan_residency(data_cfg, train, test_bytes: int, processes: int, loader_set: bool,
                   available: tuple[int, str] | None = None) -> ResidencyPlan:
    """In memory or out of core, for the training split `train` (an indexed source: its decoded size is read from
    its index) beside a test split of `test_bytes`, on a node running `processes` processes. `loader_set`: the
    config names data.loader explicitly (then it is never changed)."""
    need = (decoded_bytes(train) + test_bytes) * processes
    sizes = (f"train {len(train):,} images decoded {_gib(decoded_bytes(train))} + test {_gib(test_bytes)}, x "
             f"{processes} process{'es' if processes > 1 else ''} = {_gib(need)}")
    if data_cfg.residency == "memory":
        return ResidencyPlan(False, data_cfg.loader, [f"data plan: in memory (data.residency=memory; {sizes})"])
    if data_cfg.residency == "auto":
        available = room, where = available or memory_available()  # read once: the worker check uses it too
        budget = int(room * MEMORY_SHARE)
        rule = f"budget {_gib(budget)}: {MEMORY_SHARE:.0%} of the {_gib(room)} {where}"
        # data.loader=ffcv trains from the .beton file whatever the size: an ImageFolder's training split is then
        # written from its files (photos at their aspect ratio), never decoded in memory
        ffcv_files = (data_cfg.loader == "ffcv" and getattr(train, "streams", True)
                      and not isinstance(train, ArraySource))
        if need <= budget and not ffcv_files:
            return ResidencyPlan(False, data_cfg.loader, [f"data plan: in memory ({sizes} <= {rule})"])
        why = f"{sizes} > {rule}" if need > budget else \
            f"data.loader=ffcv reads an ImageFolder from its .beton file, never decoded in memory; {sizes} <= {rule}"
    else:
        why = "data.residency=disk"
    if not getattr(train, "streams", True):  # a compressed tar: read whole, in memory
        advice = ("a compressed tar can only be read from its start, so it is read into memory; decompress it (e.g. "
                  "`gunzip data.tar.gz` gives data.tar, which is read out of core) or extract it and point data.path "
                  "at the folder")
        if data_cfg.residency == "disk":
            raise VisionlaunchError(f"data.residency=disk cannot read {train.source}: {advice}, or set "
                                    "data.residency=auto.")
        return ResidencyPlan(False, data_cfg.loader, [f"data plan: in memory although {why}: {advice}"])
    if data_cfg.loader == "ffcv":  # the .beton files are on disk anyway: the training split is read from there
        return ResidencyPlan(True, "ffcv", [ffcv_plan_line(data_cfg, why, processes, test_bytes)])
    if data_cfg.loader != "torch" and loader_set:
        raise VisionlaunchError(
            f"the training data must be read out of core ({why}), but data.loader={data_cfg.loader} holds the whole "
            "split in memory. Use data.loader=torch (DataLoader workers decode each image when it is used) or "
            "data.loader=ffcv (its .beton file read through the page cache), a "
            "subset (data.train_subset), a smaller data.image_size, or data.residency=memory to try anyway.")
    workers = data_cfg.num_workers
    check_worker_room(workers, processes, test_bytes, available)
    lines = [f"data plan: training split out of core ({why}): each image decoded when used by "
             f"{workers or 'no'} DataLoader worker{'s' if workers != 1 else ''} per process (data.num_workers), "
             f"loader torch{'' if data_cfg.loader == 'torch' else ' instead of ' + data_cfg.loader}; epoch order: "
             f"{OUT_OF_CORE_ORDER.describe()}; test split in memory ({_gib(test_bytes)} per process)"]
    return ResidencyPlan(True, "torch", lines)


def check_worker_room(workers: int, processes: int, test_bytes: int, available: tuple[int, str] | None) -> None:
    """Stop with the numbers, before anything is decoded, when the DataLoader workers of the node's processes and
    their test splits cannot fit in the memory left (the kernel would kill the run at its first batches instead)."""
    try:
        room, where = available or memory_available()
    except VisionlaunchError:  # nothing known to check against
        return
    need = (workers * WORKER_BYTES + test_bytes) * processes
    if need <= room:
        return
    per_process = room // processes - test_bytes
    fits = max(per_process // WORKER_BYTES, 0)
    each = f"{processes} processes x " if processes > 1 else ""
    advice = (f"Lower data.num_workers to {fits} or fewer, or raise the memory limit" if fits else
              "Set data.num_workers=0, use a smaller test split (data.test_subset), or raise the memory limit")
    raise VisionlaunchError(
        f"not enough memory for the out-of-core loader: {each}({workers} DataLoader worker"
        f"{'s' if workers != 1 else ''} x at least {_gib(WORKER_BYTES)} each + the test split in memory "
        f"{_gib(test_bytes)}) = {_gib(need)}, but only {_gib(room)} is left ({where}); the kernel would kill the run "
        f"at its first batches. {advice}.")


def ffcv_plan_line(data_cfg, why: str, processes: int, test_bytes: int) -> str:
    return (f"data plan: training split out of core ({why}): read from its .beton file through the OS page cache "
            f"(FFCV os_cache, one copy shared by the node's {processes} process{'es' if processes > 1 else ''}), "
            f"decoded by {max(1, data_cfg.num_workers)} FFCV thread{'s' if data_cfg.num_workers > 1 else ''} per "
            f"process (data.num_workers), loader ffcv; epoch order: {OUT_OF_CORE_ORDER.describe()}; test split in "
            f"memory ({_gib(test_bytes)} per process)")


def node_processes(total: int) -> int:
    """Processes of this run on this node: each holds its own copy of in-memory data."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local and local.isdigit() else total
