"""Building blocks of the run report and the comparison page. A page is one file of plain HTML with inline CSS,
PNGs as data URIs, no scripts and system fonts only; its Content-Security-Policy forbids every fetch, so a report
opened offline, on a cluster or mailed to a teacher looks the same everywhere and never calls out."""

from __future__ import annotations

import base64
import datetime as dt
import html
import struct
from collections.abc import Iterable, Sequence

from visionlaunch import __version__

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --bg: #f6f8fa; --card: #ffffff; --accent: #0b5cad;
        --good: #1a7f37; --bad: #c62828; --warn-bg: #fff8e1; --warn-line: #e3b341; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header.hero { background: linear-gradient(135deg, #0b3d6e, #0b5cad); color: #fff; padding: 28px 0 22px; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; opacity: .8; }
h1 { margin: 4px 0 6px; font-size: 28px; font-weight: 650; word-break: break-word; }
.meta { opacity: .9; font-size: 14px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 12px; font-weight: 600;
         margin-left: 8px; vertical-align: middle; background: rgba(255,255,255,.18); color: #fff; }
.badge.bad { background: #fbd5d5; color: #8a1c1c; } .badge.good { background: #d3f5dc; color: #12572a; }
nav { background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 1; }
nav a { display: inline-block; padding: 10px 12px 9px 0; margin-right: 10px; color: var(--accent);
        text-decoration: none; font-size: 14px; }
main { padding: 18px 0 40px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px;
          margin: 16px 0; }
h2 { font-size: 19px; margin: 0 0 12px; font-weight: 650; }
h3 { font-size: 15px; margin: 16px 0 8px; }
p.lead { color: var(--muted); margin: -6px 0 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(132px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: #fbfcfd; }
.card .k { color: var(--muted); font-size: 12.5px; }
.card .v { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; margin-top: 2px; }
.card .s { color: var(--muted); font-size: 12.5px; margin-top: 2px; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; align-items: start; }
figure { margin: 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px;
             background: #fff; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.native { grid-column: 1 / -1; overflow-x: auto; } .native figure img { max-width: none; } .full { grid-column: 1 / -1; }
.scroll { overflow: auto; max-height: 560px; }
.scroll.wide table { width: auto; min-width: 100%; }
.scroll.wide th, .scroll.wide td:first-child { white-space: nowrap; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.hl td { background: #eaf5ea; font-weight: 600; }
table.kv th { width: 170px; background: none; position: static; color: var(--muted); font-weight: 500; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 13px; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 12px; overflow: auto;
      line-height: 1.35; margin: 8px 0 0; }
td code { word-break: break-all; }
details summary { cursor: pointer; color: var(--accent); font-weight: 500; }
.notes { background: var(--warn-bg); border-color: var(--warn-line); }
.notes ul, .summary ul { margin: 0; padding-left: 20px; } .notes li, .summary li { margin: 4px 0; }
.good { color: var(--good); } .bad { color: var(--bad); } .muted { color: var(--muted); }
footer { color: var(--muted); font-size: 12.5px; text-align: center; padding: 8px 0 28px; }
@media print { nav { display: none; } body { background: #fff; } section { break-inside: avoid-page; }
               .scroll { overflow: visible; max-height: none; }
               header.hero { -webkit-print-color-adjust: exact; print-color-adjust: exact; } }
"""


class Html(str):
    """Markup that is already safe: table cells and page parts of this type are inserted as they are."""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def cell(value) -> str:
    return value if isinstance(value, Html) else esc(value)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, so the page can reserve the space before the image decodes."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def figure(data: bytes, alt: str, caption: str | Html = "") -> Html:
    """A PNG embedded as a data URI, with its size (if the header gives it) and an optional caption."""
    size = png_size(data)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{cell(caption)}</figcaption>" if caption else ""
    return Html(f'<figure><img src="{src}" alt="{esc(alt)}"{dims}>{cap}</figure>')


def table(headers: Sequence, rows: Iterable[Sequence], *, numeric: Iterable[int] = (),
          highlight: Iterable[int] = ()) -> Html:
    """A table whose cells are escaped unless they are Html. `numeric` columns align right; `highlight` rows stand
    out (e.g. the best epoch)."""
    numeric, highlight = set(numeric), set(highlight)

    def row_html(cells: Sequence, tag: str) -> str:
        return "".join(f'<{tag}{" class=num" if i in numeric else ""}>{cell(c)}</{tag}>' for i, c in enumerate(cells))

    body = "".join(f'<tr{" class=hl" if i in highlight else ""}>{row_html(r, "td")}</tr>' for i, r in enumerate(rows))
    return Html(f"<table><thead><tr>{row_html(headers, 'th')}</tr></thead><tbody>{body}</tbody></table>")


def key_values(pairs: Iterable[tuple[str, object]]) -> Html:
    return Html("<table class=kv><tbody>" + "".join(f"<tr><th>{esc(k)}</th><td>{cell(v)}</td></tr>" for k, v in pairs)
                + "</tbody></table>")


def section(anchor: str, title: str, body: str, lead: str = "", cls: str = "") -> Html:
    lead_html = f'<p class="lead">{cell(lead)}</p>' if lead else ""
    return Html(f'<section id="{esc(anchor)}"{f" class={cls}" if cls else ""}><h2>{esc(title)}</h2>{lead_html}'
                f"{body}</section>")


def notes(items: list[str], lead: str) -> Html | str:
    """The "Missing or incomplete" section; nothing when nothing is missing."""
    return section("missing", "Missing or incomplete", bullets(items), lead=lead, cls="notes") if items else ""


def card(label: str, value: str, sub: str = "") -> Html:
    sub_html = f'<div class="s">{cell(sub)}</div>' if sub else ""
    return Html(f'<div class="card"><div class="k">{esc(label)}</div><div class="v">{cell(value)}</div>'
                f"{sub_html}</div>")


def bullets(items: Iterable) -> Html:
    return Html("<ul>" + "".join(f"<li>{cell(item)}</li>" for item in items) + "</ul>")


def details(summary: str, body: str, *, expand: bool = False) -> Html:
    return Html(f"<details{' open' if expand else ''}><summary>{esc(summary)}</summary>{body}</details>")


def pre(text: str) -> Html:
    return Html(f"<pre>{esc(text)}</pre>")


def document(title: str, hero: str, nav: Sequence[tuple[str, str]], sections: Iterable[str]) -> str:
    """The whole page: head with CSP and styles, the coloured header, an anchor bar (the `nav` (anchor, label) pairs
    whose section is there), the sections that are not empty and a footer."""
    body = "".join(sections)
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in nav if f'id="{anchor}"' in body)
    written = dt.datetime.now().isoformat(sep=" ", timespec="seconds")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<header class="hero"><div class="wrap">{hero}</div></header>'
        f'<nav><div class="wrap">{links}</div></nav>'
        f'<main><div class="wrap">{body}</div></main>'
        f"<footer>written by visionlaunch {esc(__version__)} on {esc(written)} · one self-contained file: "
        "no scripts, no network</footer></body></html>\n")


# ---------------------------------------------------------------------------------------------------- numbers


def pct(fraction: float | None, digits: int = 2) -> str:
    return "—" if fraction is None else f"{100 * fraction:.{digits}f}%"


def num(value: float | None, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
