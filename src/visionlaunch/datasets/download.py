"""Downloading the canonical files through torchvision, with an error that says what to do offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from visionlaunch.datasets.imageset import DatasetNotFound


def download_with_torchvision(fetch: Callable[[], object], what: str, root: Path, target: Path) -> None:
    """Run `fetch` (a torchvision dataset constructor with download=True); turn any failure into advice.

    A failed download leaves the files absent, so it is a DatasetNotFound: a caller may still fall back.
    """
    try:
        fetch()
    except Exception as exc:  # network, HTTP, DNS and checksum failures all surface here as different types
        # torchvision's messages span lines (one per mirror tried); keep the paragraph to one line.
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise DatasetNotFound(
            f"Downloading {what} into {root} failed ({type(exc).__name__}: {detail}). This machine probably has no "
            f"network access, or the server refused. Fetch the files on a machine with network access and put "
            f"them in {target}, or point data.root (or $VISIONLAUNCH_DATA) at a folder that already holds them."
        ) from exc
