"""Every relative link and #anchor in README.md and docs/*.md leads somewhere: a file of the repository and, for an
anchor, a heading of that page (GitHub's anchor slugs). Links to the web are not followed."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the text without markup, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
    return out


def links(page: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for m in _LINK.finditer(_INLINE_CODE.sub("", line)):
            found.append((number, m.group(1)))
    return found


def test_slugs_follow_github():
    assert slug("Loader backends and FFCV") == "loader-backends-and-ffcv"
    assert slug("`mnist_fast`") == "mnist_fast"
    assert slug("Checkpoints, resume, preemption") == "checkpoints-resume-preemption"
    assert slug("Photos of mixed sizes (timm `resnet10t`)") == "photos-of-mixed-sizes-timm-resnet10t"
    assert slug("After training: predict, export, evaluate") == "after-training-predict-export-evaluate"


def test_the_pages_have_links_to_check():
    # Guard against a regex that silently finds nothing: the front page links to every docs page.
    targets = {t.split("#")[0] for _, t in links(REPO / "README.md")}
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in targets, f"README.md does not link to docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path):
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not followed
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest})")
        elif anchor:
            if dest.suffix != ".md":
                broken.append(f"{where} (an anchor into a file that is not Markdown)")
            elif anchor not in anchors(dest):
                broken.append(f"{where} (no heading with the anchor #{anchor} in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)
