"""Shared fixtures: where the real data lives for tests, and an isolated environment for every test."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests read real data from ../shared/data beside the checkout; the product itself never looks there.
SHARED_DATA = Path(os.environ.get("VISIONLAUNCH_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The read-only real-data folder (MNIST raw files, CIFAR-10 JPEG tarball).

    In CI it must exist (a missing folder fails the test); on a developer machine without it the test skips.
    """
    if not (SHARED_DATA / "mnist" / "raw").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real test data not found at {SHARED_DATA}; CI must have ../shared/data")
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test touches the user's cache, data root or W&B account."""
    monkeypatch.setenv("VISIONLAUNCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VISIONLAUNCH_DATA", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MPLBACKEND", "Agg")
