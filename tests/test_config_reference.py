"""docs/configuration.md is what `visionlaunch show-config --keys --markdown` writes from the config classes: every
key with its type, default and meaning. The committed page must not drift from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from visionlaunch.config_reference import REGENERATE, fields, markdown_reference

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"


def test_committed_reference_is_what_the_command_writes():
    # The command itself, as a user runs it (its own process, the installed entry point's module).
    written = subprocess.run([sys.executable, "-m", "visionlaunch", "show-config", "--keys", "--markdown"],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    assert written.returncode == 0, written.stderr
    assert written.stdout == markdown_reference()
    assert PAGE.read_text(encoding="utf-8") == written.stdout, (
        f"docs/configuration.md differs from the config classes: regenerate it with\n    {REGENERATE}\n"
        "(from the repository root) and commit it")


def test_every_key_is_listed_with_a_meaning():
    page = markdown_reference()
    for key, field in fields():
        assert f"| `{key}` |" in page, key
        assert field.description, (f"config key {key} has no description: give it Field(..., description=...) in "
                                   "src/visionlaunch/config.py (optim_config.py for optim: and schedule:), then run "
                                   f"{REGENERATE}")


def test_reference_shows_types_defaults_and_bounds():
    rows = {line.split(" | ")[0].strip("| `"): line for line in markdown_reference().splitlines()
            if line.startswith("| `")}
    assert rows["train.epochs"].startswith("| `train.epochs` | `int` (>= 1) | `10` | ")
    assert "one of `auto`, `fp32`, `bf16`, `fp16` | `auto` |" in rows["train.precision"]
    assert "| `str` or `null` | `null` |" in rows["data.root"]
    assert "`[SIGTERM, SIGUSR2, SIGINT]`" in rows["train.preempt_signals"]
    assert "&lt;output.name>" in rows["train.resume"]  # <output.name> would vanish as an HTML tag on GitHub


def test_markdown_needs_keys():
    out = subprocess.run([sys.executable, "-m", "visionlaunch", "show-config", "--markdown"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "--keys --markdown" in out.stderr and "Traceback" not in out.stderr
