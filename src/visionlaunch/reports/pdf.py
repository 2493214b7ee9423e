"""PDF export of a report page with headless Chromium (`--print-to-pdf`), the one tool that prints our HTML and CSS
as a browser shows it. Optional: nothing else in visionlaunch needs a browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from visionlaunch.atomic import atomic_write
from visionlaunch.errors import VisionlaunchError

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# No sandbox: Chromium refuses to start as root (containers, CI) with it, and the pages printed here are our own
# files whose Content-Security-Policy forbids scripts and fetches. The rest keeps Chromium off the network.
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars")


def find_chromium() -> str | None:
    """$VISIONLAUNCH_CHROMIUM if set, else the first Chromium or Chrome on PATH, else None."""
    override = os.environ.get("VISIONLAUNCH_CHROMIUM")
    if override:
        return override
    return next((path for path in map(shutil.which, _CANDIDATES) if path), None)


def export_pdf(html_path: Path, pdf_path: Path, *, timeout: float = 120.0) -> Path:
    """Print `html_path` to `pdf_path` (A4/Letter per the locale, backgrounds kept, no header or footer)."""
    browser = find_chromium()
    if browser is None:
        raise VisionlaunchError(
            "a PDF needs headless Chromium and none was found (looked for chromium, chromium-browser, google-chrome "
            "on PATH and $VISIONLAUNCH_CHROMIUM). Install it (Debian/Ubuntu: sudo apt-get install -y "
            "--no-install-recommends chromium) or leave out --pdf; the HTML report is complete without it.")
    pdf_path = Path(pdf_path)
    with tempfile.TemporaryDirectory(prefix="visionlaunch-chromium-") as profile, atomic_write(pdf_path) as tmp:
        cmd = [browser, *HEADLESS_FLAGS, f"--user-data-dir={profile}", "--no-pdf-header-footer",
               f"--print-to-pdf={tmp}", Path(html_path).resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VisionlaunchError(f"headless Chromium ({browser}) could not print {html_path} to PDF: {exc}. "
                                    "The HTML report is written; open it in a browser and print it instead.") from None
        if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            tail = " ".join(done.stderr.strip().splitlines()[-3:])
            raise VisionlaunchError(
                f"headless Chromium ({browser}) did not print {html_path} to PDF (exit {done.returncode}: {tail}). "
                "The HTML report is written; open it in a browser and print it instead.")
    return pdf_path
