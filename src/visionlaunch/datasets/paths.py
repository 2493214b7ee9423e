"""Where data and the decoded-tensor cache live by default."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The data root: the explicit argument, else $VISIONLAUNCH_DATA, else ./data (as an absolute path)."""
    if root is None or str(root) == "":
        root = os.environ.get("VISIONLAUNCH_DATA") or "data"
    return Path(os.path.abspath(Path(root).expanduser()))


def default_cache_dir() -> Path:
    """$VISIONLAUNCH_CACHE, else ~/.cache/visionlaunch."""
    env = os.environ.get("VISIONLAUNCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "visionlaunch"
