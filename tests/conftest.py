"""Shared fixtures: where the real data lives for tests, and an isolated environment for every test."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests read real data from ../shared/data beside the checkout; the product itself never looks there.
SHARED_DATA = Path(os.environ.get("VISIONLAUNCH_TEST_DATA", REPO.parent / "shared" / "data"))


def require_shared_data() -> Path:
    """The read-only real-data folder (MNIST raw files, CIFAR-10 JPEG tarball).

    In CI it must exist (a missing folder fails the test); on a developer machine without it the test skips.
    Module-scoped fixtures call this directly; tests use the `shared_data` fixture.
    """
    if not (SHARED_DATA / "mnist" / "raw").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real test data not found at {SHARED_DATA}; CI must have ../shared/data")
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


def require_cifar100() -> Path:
    """The real CIFAR-100 copy (cifar-100-python/{train,test,meta}) in the real-data folder: as require_shared_data,
    a missing copy fails in CI and skips on a developer machine."""
    folder = SHARED_DATA / "cifar-100-python"
    if not all((folder / f).is_file() for f in ("train", "test", "meta")):
        if os.environ.get("CI"):
            pytest.fail(f"real CIFAR-100 not found at {folder}; CI must have ../shared/data/cifar-100-python")
        pytest.skip(f"real CIFAR-100 not found at {folder}")
    return SHARED_DATA


def require_ffcv() -> None:
    """The optional ffcv package: CI installs it (a missing one fails the test); a developer machine without it
    skips, saying how to install it."""
    from visionlaunch.errors import VisionlaunchError
    from visionlaunch.ffcv_builders import require_ffcv as import_ffcv
    try:
        import_ffcv("running the FFCV tests")  # the product's import: it also keeps FFCV from changing torch's threads
    except VisionlaunchError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install ffcv: {exc}")
        pytest.skip(f"FFCV TESTS SKIPPED: {exc}")


@pytest.fixture
def shared_data() -> Path:
    return require_shared_data()


def isolate_environment(mp: pytest.MonkeyPatch, root: Path) -> None:
    """No test touches the user's cache, data root or W&B account (module fixtures call this with their own
    MonkeyPatch context)."""
    mp.setenv("VISIONLAUNCH_CACHE", str(root / "cache"))
    mp.delenv("VISIONLAUNCH_DATA", raising=False)
    mp.setenv("WANDB_MODE", "disabled")
    mp.setenv("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    isolate_environment(monkeypatch, tmp_path)


@pytest.fixture
def no_hang():
    """A command that blocks (a FIFO opened for reading, a walk that never ends) fails the test after 60 s instead
    of hanging the suite."""
    import signal

    def expire(*_):
        raise TimeoutError("blocked for 60 s: the command did not end")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
