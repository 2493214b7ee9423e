"""Run an ablation's variants one after another, each `visionlaunch train` in its own process, so that a crash
(or an out-of-memory kill) of one cannot take down the rest. Each run's output goes to logs/<variant>.log and
its exit status to logs/<variant>.json; finished runs are skipped, interrupted ones resume (train.resume=auto)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from visionlaunch.atomic import atomic_write_text
from visionlaunch.errors import VisionlaunchError

from .plan import PLAN_FILE, Ablation, Variant
from .results import LOGS, is_complete, log_path, read_result, status_path, write_ablation_results

TAIL_LINES = 20


@dataclass
class AblationRun:
    """What one `run_ablation` call did."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # finished before this call
    failed: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)  # table.md, table.csv, curves.png


def train_command(variant: Variant, restart: bool = False) -> list[str]:
    return [sys.executable, "-m", "visionlaunch", "train", *variant.train_args(restart=restart)]


def check_existing_runs(ablation: Ablation) -> None:
    """A finished run of another config in a variant's folder would be skipped and then tabulated as if it
    belonged to this plan: stop before running anything instead."""
    stale = [(v, r.message) for v in ablation.variants if (r := read_result(v)).state == "stale"]
    if stale:
        listed = "; ".join(f"{v.run_dir}: {message}" for v, message in stale[:3])
        raise VisionlaunchError(
            f"{len(stale)} run folder(s) of ablation {ablation.name} hold finished runs of another config ({listed}). "
            "Nothing was run. Use --rerun to replace them, or --out DIR to write this plan elsewhere.")


def run_ablation(ablation: Ablation, *, rerun: bool = False, only: list[str] | None = None,
                 log: Callable[[str], None] | None = None) -> AblationRun:
    """Run every variant that has not finished (all of them with `rerun`; those named in `only`, see
    Ablation.select, when given), then write the table and figure from all run folders. Returns what ran; a
    failed variant is recorded and the others go on."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    selected = ablation.select(only)
    if not rerun:
        check_existing_runs(ablation)
    out = ablation.out_dir
    (out / LOGS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLAN_FILE, yaml.safe_dump(ablation.plan(), sort_keys=False, width=1 << 20))
    result = AblationRun()
    try:
        for i, variant in enumerate(selected, 1):
            head = f"[{i}/{len(selected)}] {variant.name} ({variant.label}, seed {variant.seed})"
            if not rerun and is_complete(variant):
                result.skipped.append(variant.name)
                log(f"{head}: finished before, skipped")
                continue
            log(f"{head}: running, log in {log_path(variant)}")
            code, seconds = _run_variant(variant, rerun)
            result.ran.append(variant.name)
            outcome = read_result(variant)
            if code == 0 and outcome.state == "ok":
                acc = outcome.final_test_acc
                log(f"{head}: " + (f"test accuracy {100 * acc:.2f}%" if acc is not None else "done")
                    + f" in {seconds:.0f} s")
            else:
                result.failed.append(variant.name)
                log(f"{head}: FAILED ({outcome.message or f'exit {code}'}); see {log_path(variant)}")
    except KeyboardInterrupt:  # the table still shows what finished
        with contextlib.suppress(VisionlaunchError):
            write_ablation_results(ablation)
        raise
    result.outputs = write_ablation_results(ablation)
    return result


def _run_variant(variant: Variant, restart: bool) -> tuple[int, float]:
    """Run one variant in a child process; write its exit record. Returns (exit status, seconds)."""
    status = status_path(variant)
    status.unlink(missing_ok=True)  # an old failure must not outlive the new attempt
    cmd = train_command(variant, restart)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log_path(variant), "w") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
    seconds = time.perf_counter() - start
    try:
        tail = log_path(variant).read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        tail = []
    record = {"variant": variant.name, "exit_code": code, "seconds": round(seconds, 3),
              "finished": dt.datetime.now().isoformat(timespec="seconds"), "command": shlex.join(cmd),
              "last_line": _last_line(tail), "tail": tail}
    atomic_write_text(status, json.dumps(record, indent=1) + "\n")
    return code, seconds


def _last_line(tail: list[str]) -> str:
    """The most telling line of a failed run's output: the error message, else the last non-empty line."""
    for line in reversed(tail):
        if line.startswith("visionlaunch: error:") or "Error" in line.split(":", 1)[0]:
            return line.strip()[:300]
    return next((line.strip()[:300] for line in reversed(tail) if line.strip()), "")


def dry_run_text(ablation: Ablation, selected: list[Variant]) -> str:
    """What `visionlaunch ablate --dry-run` prints: every selected run, its state and its command."""
    settings = ablation.settings()
    lines = [f"ablation {ablation.name}: {len(ablation.variants)} runs ({len(settings)} settings x "
             f"{len(ablation.seeds)} seed(s)) -> {ablation.out_dir}"]
    if len(selected) < len(ablation.variants):
        lines.append(f"selected: {len(selected)} of them")
    for variant in selected:
        state = read_result(variant).state
        note = "finished, would be skipped" if state == "ok" else state
        lines.append(f"  {variant.name}  [{variant.label}, seed {variant.seed}; {note}]")
        lines.append(f"    {shlex.join(['visionlaunch', *train_command(variant)[3:]])}")
    return "\n".join(lines)
