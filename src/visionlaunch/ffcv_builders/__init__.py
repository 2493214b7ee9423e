"""FFCV: write any dataset to `.beton` files and read them back through FFCV Loader pipelines.

    from visionlaunch.ffcv_builders import write_imageset, FfcvLoader
    write_imageset(train_set, "train.beton", split="train")           # validated, atomic, with a manifest
    loader = FfcvLoader("train.beton", 128, train=True, seed=0, device=torch.device("cpu"), flip=True)

FFCV is an optional extra (`pip install visionlaunch[ffcv]` plus the Debian packages of `INSTALL_HINT`):
`require_ffcv` is the one place that imports it, only when a beton is written or read.
"""

from __future__ import annotations

from multiprocessing import cpu_count

import torch

from visionlaunch.errors import VisionlaunchError

__all__ = ["INSTALL_HINT", "BetonManifest", "FfcvLoader", "check_beton", "require_ffcv", "source_digest",
           "validate_samples", "write_beton", "write_imageset"]

INSTALL_HINT = ("sudo apt-get install -y --no-install-recommends pkg-config libopencv-dev libturbojpeg0-dev && "
                "pip install 'visionlaunch[ffcv]'")


def _numba_threads_only(cls, n: int) -> None:
    """FFCV's Compiler.set_num_threads without its `torch.set_num_threads(n)` call."""
    import numba

    cls.num_threads = n if n >= 1 else cpu_count()
    numba.set_num_threads(cls.num_threads)


def require_ffcv(purpose: str = "the ffcv loader backend (data.loader=ffcv)") -> None:
    """Import ffcv (leaving torch's thread count as it was), or stop with the commands that install it."""
    threads = torch.get_num_threads()
    try:
        from ffcv.pipeline.compiler import Compiler
    except ImportError as exc:  # also an OSError-backed ImportError when the OpenCV/turbojpeg libraries are absent
        raise VisionlaunchError(
            f"{purpose} needs the optional package ffcv, which cannot be imported here ({exc}). Install it with: "
            f"{INSTALL_HINT} (the extension links the Debian OpenCV and turbojpeg libraries, so every machine "
            "that runs it needs the apt line), or choose data.loader=tensor (the default) or torch.") from None
    # FFCV sets torch's intra-op threads whenever it sets numba's: to 1 on import, then to the loader's worker
    # count at every epoch, from its reader thread. That silently changes how fast the model itself computes
    # (on a busy 2-core machine, 1 vs 2 threads changed batch operations by 7-25x), so numba's threads stay
    # FFCV's business and torch's stay the user's.
    Compiler.set_num_threads = classmethod(_numba_threads_only)
    torch.set_num_threads(threads)


# Below require_ffcv, which these modules import from here; none of them imports ffcv itself.
from visionlaunch.ffcv_builders.loader import FfcvLoader  # noqa: E402
from visionlaunch.ffcv_builders.manifest import BetonManifest, check_beton, source_digest  # noqa: E402
from visionlaunch.ffcv_builders.writer import validate_samples, write_beton, write_imageset  # noqa: E402
