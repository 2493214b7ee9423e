"""`train.deterministic=true`: the same seed gives the same numbers on every run on the same machine.

PyTorch then uses deterministic algorithms only (an operation without one stops with an error naming it), cuDNN
picks deterministic convolution algorithms and does not benchmark them, and cuBLAS gets the fixed workspace it needs
for reproducible results (CUBLAS_WORKSPACE_CONFIG, read when CUDA first initialises cuBLAS, so set here before any
CUDA work). The CPU kernels this project uses are deterministic already; on GPUs the cost is slower convolutions.
"""

from __future__ import annotations

import os

import torch


def set_deterministic(enabled: bool) -> None:
    """Switch deterministic mode on or off for this process (a later run in the same process may not want it)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False
