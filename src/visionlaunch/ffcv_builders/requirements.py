"""FFCV is optional: one place that imports it and says how to install it when it is missing."""

from __future__ import annotations

import importlib

from visionlaunch.errors import VisionlaunchError

INSTALL_HINT = ("sudo apt-get install -y --no-install-recommends pkg-config libopencv-dev libturbojpeg0-dev && "
                "pip install 'visionlaunch[ffcv]'")


def require_ffcv(purpose: str = "the ffcv loader backend (data.loader=ffcv)"):
    """Import ffcv, or stop with the commands that install it."""
    try:
        return importlib.import_module("ffcv")
    except ImportError as exc:  # also an OSError-backed ImportError when the OpenCV/turbojpeg libraries are absent
        raise VisionlaunchError(
            f"{purpose} needs the optional package ffcv, which cannot be imported here ({exc}). Install it with: "
            f"{INSTALL_HINT} (the extension links the Debian OpenCV and turbojpeg libraries, so every machine "
            "that runs it needs the apt line), or choose data.loader=tensor (the default) or torch.") from None
