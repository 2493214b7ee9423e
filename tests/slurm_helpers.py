"""Helpers for the tests that use a real SLURM cluster (.ci/slurm_cluster.sh starts one on this machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


def require_cluster() -> None:
    """A SLURM cluster that answers. Skips (loudly, with the reason) on a developer machine without sbatch; in CI
    (CI=true) a missing or dead cluster fails the test instead."""
    reason = None
    if shutil.which("sbatch") is None:
        reason = ("SLURM tests SKIPPED: sbatch is not on PATH. Start the local test cluster with "
                  "`.ci/slurm_cluster.sh start` (installs slurm + munge) to run them.")
    else:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0 or "idle" not in proc.stdout and "mix" not in proc.stdout and "alloc" not in proc.stdout:
            reason = (f"SLURM tests SKIPPED: sbatch exists but the cluster does not answer (sinfo: "
                      f"{(proc.stderr or proc.stdout).strip()[:200]}). Run `.ci/slurm_cluster.sh start`.")
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason.replace("SKIPPED", "FAILED (CI must run them)"))
        pytest.skip(reason)


def job_info(job_id: str) -> dict:
    """`scontrol show job` as a dict (it knows finished jobs for MinJobAge seconds)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30)
    info = {}
    for token in proc.stdout.split():
        if "=" in token:
            key, value = token.split("=", 1)
            info.setdefault(key, value)
    return info


def wait_for_job(job_id: str, timeout: float, until=None) -> dict:
    """Poll until the job has ended (or `until(info)` is true); fail with its state after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    info = {}
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if until is not None and until(info):
            return info
        if until is None and info.get("JobState") in TERMINAL:
            return info
        time.sleep(1)
    pytest.fail(f"job {job_id} did not get there within {timeout} s: {info}")


def cancel(job_ids) -> None:
    ids = [str(j) for j in job_ids if j]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
