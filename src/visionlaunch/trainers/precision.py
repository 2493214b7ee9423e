"""The number format a run computes in: train.precision resolved, once, for the device the process runs on.

`auto` picks bf16 where the device computes it natively (a CPU with AVX-512 BF16 or AMX; a CUDA GPU of compute
capability 8.0 or newer), else fp32 on a CPU and fp16 with loss scaling on a GPU. Without native instructions a
CPU emulates bf16 by converting to fp32 and back around every operation: measured on an Intel Ice Lake Xeon (AVX-512
without BF16), bf16 autocast trained a ResNet-9 2.5x slower than fp32. An explicit value is used as given; bf16 on a
CPU that would emulate it gets a NOTE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from visionlaunch.config import canonical_precision
from visionlaunch.errors import VisionlaunchError

# The /proc/cpuinfo flags of x86 instructions that compute bf16 (dot products, matrix tiles), as the kernel names them.
CPU_BF16_FLAGS = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX"}
EMULATED = "emulated, usually slower than fp32"
HALF_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the autocast type of each mixed precision


@dataclass(frozen=True)
class Precision:
    name: str     # what the run computes in: fp32, bf16 or fp16
    reason: str   # one line: what was asked, what was chosen and why
    note: str | None = None  # a warning worth printing (an explicit bf16 that is emulated here)

    @property
    def mixed_precision(self) -> str:
        """The value of Accelerate's `mixed_precision`."""
        return "no" if self.name == "fp32" else self.name

    @property
    def half_dtype(self) -> torch.dtype | None:
        """The autocast type, None in fp32."""
        return HALF_TYPES.get(self.name)


def cpu_bf16_features() -> list[str]:
    """The instruction sets of this CPU that compute bf16 natively (empty: bf16 would be emulated). torch's own
    checks (cpuinfo, any OS) where this torch has them, else the flags of /proc/cpuinfo (Linux)."""
    checks = {"AVX-512 BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              "AMX": getattr(torch.cpu, "_is_amx_tile_supported", None)}
    if all(checks.values()):
        return [name for name, check in checks.items() if check()]
    return [CPU_BF16_FLAGS[f] for f in sorted(cpuinfo_flags() & CPU_BF16_FLAGS.keys())]


def cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
            for flag in line.split(":", 1)[-1].split()}


def cuda_bf16_native(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def _cuda_name(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """train.precision (any accepted spelling) as computed on `device`, with the reason."""
    requested = canonical_precision(requested)
    if device.type == "cpu":
        native = cpu_bf16_features()
        where = f"this CPU computes bf16 natively ({', '.join(native)})" if native else \
            "this CPU has no native bf16 (no AVX-512 BF16 or AMX)"
    elif device.type == "cuda":
        native = cuda_bf16_native(device)
        where = f"this GPU computes bf16 natively ({_cuda_name(device)})" if native else \
            f"this GPU has no native bf16 ({_cuda_name(device)}; bf16 needs compute capability 8.0)"
    else:
        native, where = False, f"auto uses a half type only on CPUs and CUDA GPUs, not on {device.type}"
    if requested == "auto":
        if native:
            return Precision("bf16", f"auto -> bf16: {where}")
        if device.type == "cuda":
            return Precision("fp16", f"auto -> fp16 with loss scaling: {where}")
        return Precision("fp32", f"auto -> fp32: {where}" + (", and emulated bf16 is usually slower than fp32"
                                                              if device.type == "cpu" else ""))
    if requested not in ("fp32", "bf16", "fp16"):
        raise VisionlaunchError(f"train.precision={requested!r} is not a precision: use auto, fp32, bf16 or fp16.")
    note = None
    if requested == "bf16" and not native and device.type == "cpu":
        note = f"NOTE: train.precision=bf16 but {where}: bf16 is {EMULATED} (train.precision=auto would choose fp32)."
    return Precision(requested, f"{requested}: set by train.precision", note)
