"""Open an HTML page in headless Chromium and report what a reader would see: whether every image loaded, any
console message, every network request the page made, and a screenshot.

How, without a DevTools client: a copy of the page gets a small probe script as the first thing in <head> (before
the page's Content-Security-Policy, which would block it); on `load` it writes each image's naturalWidth into the
DOM, which `--dump-dom` prints. Chromium's own log (`--enable-logging=stderr`) carries console messages, and its
NetLog (`--log-net-log`) every request, from which the browser's own background traffic is told apart. All host
names resolve to nothing, so a page that tried to fetch anything would show broken images as well.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionlaunch.reports.pdf import HEADLESS_FLAGS, find_chromium

_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => __errors.push(String(e.message || (e.target && e.target.src) || e)), true);
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({w: i.naturalWidth, h: i.naturalHeight, complete: i.complete}));
  const pre = document.createElement("pre");
  pre.id = "__probe";
  pre.textContent = JSON.stringify({images, errors: __errors});
  document.body.appendChild(pre);
});
</script>"""
_PROBE_OUT = re.compile(r'<pre id="__probe">(.*?)</pre>', re.S)
_OFFLINE = '--host-resolver-rules=MAP * ~NOTFOUND'


def chromium_or_skip() -> str:
    """The browser; a loud skip on a developer machine without one, a failure in CI (which installs it)."""
    browser = find_chromium()
    if browser is None:
        message = ("headless Chromium not found: the report is NOT checked in a browser. Install it with "
                   "`sudo apt-get install -y --no-install-recommends chromium`.")
        if os.environ.get("CI"):
            pytest.fail(message + " CI must install it.")
        pytest.skip(message)
    return browser


@dataclass
class PageCheck:
    images: list[dict]      # per <img>, in page order: natural width/height and whether loading completed
    errors: list[str]       # error events the page raised (scripts, failed resources)
    console: list[str]      # console messages Chromium logged for the page
    requests: list[str]     # URLs the page requested from the network
    pixels: np.ndarray      # the screenshot, RGB


def _page_requests(netlog: Path) -> list[str]:
    """URLs of requests made on behalf of a page loaded from file://; Chromium's own traffic (updates, accounts)
    carries no initiator origin and no file:// isolation key."""
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if params.get("initiator") != "not an origin" or "file://" in str(params.get("network_isolation_key")):
            urls.append(params["url"])
    return urls


def _run(browser: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [browser, *HEADLESS_FLAGS, f"--user-data-dir={profile}", _OFFLINE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def open_in_chromium(page: Path, work: Path, *, size: tuple[int, int] = (1280, 2000)) -> PageCheck:
    browser = chromium_or_skip()
    work.mkdir(parents=True, exist_ok=True)
    text = page.read_text()
    probed = work / f"probed-{page.name}"
    probed.write_text(text.replace("<head>", "<head>" + _PROBE, 1))
    netlog = work / "netlog.json"
    done = _run(browser, ["--enable-logging=stderr", f"--log-net-log={netlog}", "--dump-dom", probed.as_uri()],
                work / "profile-dom")
    found = _PROBE_OUT.search(done.stdout)
    assert found, f"the probe did not run (page never loaded?); Chromium said: {done.stderr[-2000:]}"
    probe = json.loads(html.unescape(found.group(1)))
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]

    shot = work / "screenshot.png"
    _run(browser, [f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()],
         work / "profile-shot")
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    return PageCheck(probe["images"], probe["errors"], console, _page_requests(netlog), pixels)


def assert_renders_offline(check: PageCheck, n_images: int) -> None:
    """The page as a reader sees it: every image decoded, a quiet console, no network, a non-blank screen."""
    assert len(check.images) == n_images, check.images
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in check.images), check.images
    assert check.errors == [] and check.console == [], (check.errors, check.console)
    assert check.requests == [], check.requests
    assert_not_blank(check.pixels)


def assert_not_blank(pixels: np.ndarray) -> None:
    """More than a background: at least 5% of the pixels differ from the most common colour, in several colours."""
    flat = pixels.reshape(-1, 3)
    colours, counts = np.unique(flat[:: max(1, len(flat) // 200_000)], axis=0, return_counts=True)
    assert 1 - counts.max() / counts.sum() > 0.05, "the screenshot is (almost) one colour"
    assert len(colours) > 50, f"the screenshot has only {len(colours)} colours"


def assert_self_contained(text: str) -> None:
    """Static half of the network check: no script, no stylesheet link, no remote or relative resource."""
    assert "<script" not in text.lower()
    assert not re.search(r"<link\b", text, re.I)
    assert not re.search(r"\bsrc\s*=\s*[\"'](?!data:)", text, re.I), "an image or frame not embedded as data:"
    assert not re.search(r"url\(\s*[\"']?(?!data:)", text, re.I), "a CSS url() that would be fetched"
    assert not re.search(r"@import", text, re.I), "a CSS import"
    assert not re.search(r"\bhref\s*=\s*[\"']?\s*(?:[a-z][a-z0-9+.-]*:|//)", text, re.I), "a link to another site"
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
