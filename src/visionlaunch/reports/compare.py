"""The comparison page of several runs (`visionlaunch compare`): one self-contained HTML file with the config keys
that differ and each run's results, overlaid per-epoch curves, and a summary of what changed most against the
baseline, the first run given."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from visionlaunch.atomic import atomic_write_text, writes_directly
from visionlaunch.config import canonical_precision, flatten
from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import CONFIG, IDENTITY, METRICS, REPORT, enclosing_run_folder
from visionlaunch.trajectory import canonical_settings, shapes_trajectory

from . import page
from .analysis import Headline, RunFolder, headline, read_run
from .figures import Stamp, plot_comparison
from .page import Html, esc

COMPARISON_FILE = "compare.html"
# Where a run was written says nothing about how it was trained, and output.name always differs.
IGNORED_KEYS = frozenset({"output.name", "output.dir", "output.overwrite"})
# The process count is not a config key (it is how the run was launched) but it can change what a run learns
# (BatchNorm statistics and random draws are per process): shown beside the config keys, from run.yaml.
PROCESSES_KEY = "processes"
_ABSENT = object()  # a key one run's config has and another's lacks (different versions)
_NOTES_SHOWN = (IDENTITY, CONFIG, METRICS)  # figures do not matter to a comparison


@dataclass(frozen=True)
class ComparedRun:
    label: str
    folder: RunFolder
    settings: dict  # flattened config.yaml, e.g. {"optim.lr": 0.05}; empty without a readable config
    head: Headline

    @property
    def has_config(self) -> bool:
        return bool(self.settings)


def write_comparison(run_dirs: list[Path], out: Path | None = None, *, pdf: bool = False) -> Path:
    """Write the comparison page of `run_dirs` to `out` (default: compare.html beside the runs, in their common
    parent folder) and return its path.
    The overlaid curves are also kept as a PNG beside it (<out stem>-curves.png); with `pdf`, also <out>.pdf."""
    runs = load_runs(run_dirs)
    given = out is not None
    if not given:
        out = Path(os.path.commonpath([Path(d).resolve().parent for d in run_dirs])) / COMPARISON_FILE
    out = Path(out)
    inside = enclosing_run_folder(out)
    if inside is not None:  # it and its -curves.png could replace that run's own files (metrics.jsonl, ...)
        raise VisionlaunchError(
            f"{'--out ' if given else 'the comparison page '}{out} lies inside the run folder {inside}, and a "
            "comparison never writes into a run's folder (it could replace that run's own files). Nothing was "
            f"written. Write it outside, e.g. --out {inside.parent / COMPARISON_FILE}.")
    if out.is_dir():
        raise VisionlaunchError(f"--out {out} is a folder. Give a file name, e.g. --out {out / COMPARISON_FILE}.")
    ident = next((str(r.folder.identity["ident"]) for r in runs if r.folder.identity.get("ident")), "")
    stamp = Stamp.today(ident=ident, run_name=f"comparison of {len(runs)} runs")
    records = [(r.label, r.folder.records) for r in runs]
    if writes_directly(out):  # a device or a pipe: nothing is placed beside it
        with tempfile.TemporaryDirectory(prefix="visionlaunch-compare-") as scratch:
            curves = plot_comparison(records, Path(scratch) / "curves.png", stamp).read_bytes()
    else:
        curves = plot_comparison(records, out.with_name(f"{out.stem}-curves.png"), stamp).read_bytes()
    atomic_write_text(out, render_comparison(runs, curves, out))
    if pdf:
        from .pdf import export_pdf

        export_pdf(out, out.with_suffix(".pdf"))
    return out


def load_runs(run_dirs: list[Path]) -> list[ComparedRun]:
    paths = [Path(d) for d in run_dirs]
    if len(paths) < 2:
        raise VisionlaunchError(f"a comparison needs at least two run folders, got {len(paths)}. Pass them all, e.g. "
                                "`visionlaunch compare runs/a runs/b runs/c`.")
    resolved = [p.resolve() for p in paths]
    twice = sorted({str(p) for p in paths if resolved.count(p.resolve()) > 1})
    if twice:
        raise VisionlaunchError(f"{', '.join(twice)} given more than once. Pass each run folder once.")
    return [ComparedRun(label, f, _settings(f), headline(f.records, f.epochs_planned))
            for label, f in zip(_labels(resolved), map(read_run, paths))]


def _labels(resolved: list[Path]) -> list[str]:
    """Folder names; paths below the common parent where two runs share a name (runs/x/a, runs/y/a)."""
    names = [p.name for p in resolved]
    if len(set(names)) == len(names):
        return names
    root = os.path.commonpath(resolved)
    return [os.path.relpath(p, root) for p in resolved]


def _settings(folder: RunFolder) -> dict:
    settings = {k: v for k, v in canonical_settings(flatten(folder.config)).items() if k not in IGNORED_KEYS}
    if settings and folder.identity.get(PROCESSES_KEY) is not None:
        settings[PROCESSES_KEY] = folder.identity[PROCESSES_KEY]
    if settings and folder.identity.get("precision"):  # what train.precision computed in (auto resolves per machine)
        settings["train.precision"] = canonical_precision(folder.identity["precision"])
    return settings


# ---------------------------------------------------------------------------------------------------- analysis


def differing_keys(runs: list[ComparedRun]) -> list[str]:
    """Config keys with more than one value among the runs that record them, in config order. A key that only some
    runs record but with one value wherever recorded is a version difference, not a varied setting: left out."""
    with_config = [r for r in runs if r.has_config]
    keys = dict.fromkeys(k for r in with_config for k in r.settings)
    return [k for k in keys if len({_canon(r.settings[k]) for r in with_config if k in r.settings}) > 1]


def has_effect(key: str) -> bool:
    """Whether a difference in `key` can explain a difference in results: keys that shape the training trajectory
    (as for resuming), never paths, logging or checkpointing (shown in the tables when they differ, never credited)."""
    return key == PROCESSES_KEY or shapes_trajectory(key)


def _canon(value) -> str:
    """A hashable, order-stable form for comparing values (lists and dicts included)."""
    return "<absent>" if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)


def fmt(value) -> str:
    if value is _ABSENT:
        return "(absent)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str).replace('"', "")
    return str(value)


def changes(base: ComparedRun, other: ComparedRun, keys: list[str], limit: int = 3) -> str:
    """'optim.lr 0.05 -> 0.1, model.args.channels [8, 16] -> [16, 32]' for the keys where `other` differs."""
    if not base.has_config or not other.has_config:
        return "an unknown way (a config.yaml is missing)"
    diffs = [f"{k} {fmt(base.settings.get(k, _ABSENT))} -> {fmt(other.settings.get(k, _ABSENT))}" for k in keys
             if has_effect(k) and _canon(base.settings.get(k, _ABSENT)) != _canon(other.settings.get(k, _ABSENT))]
    if not diffs:
        return "nothing that changes training (the difference is run-to-run noise)"
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def effects(runs: list[ComparedRun], keys: list[str]) -> list[tuple[str, float, list[tuple[str, float, int]]]]:
    """Per differing key: (key, spread in points, [(value, mean test accuracy in %, runs)]), largest spread first.
    For a one-factor-at-a-time ablation the spread is that factor's effect; keys that vary together share it."""
    out = []
    for key in filter(has_effect, keys):
        groups: dict[str, list[float]] = {}
        for r in runs:
            if r.has_config and r.head.test_acc is not None:
                groups.setdefault(fmt(r.settings.get(key, _ABSENT)), []).append(100 * r.head.test_acc)
        if len(groups) < 2:
            continue
        means = [(value, sum(accs) / len(accs), len(accs)) for value, accs in groups.items()]
        spread = max(m for _, m, _ in means) - min(m for _, m, _ in means)
        out.append((key, spread, means))
    return sorted(out, key=lambda e: -e[1])


def summarise(runs: list[ComparedRun], keys: list[str]) -> list[str]:
    """Plain sentences: baseline, largest gain and drop against it, the best and fastest run, what is missing."""
    scored = [r for r in runs if r.head.test_acc is not None]
    lines = []
    unscored = [r.label for r in runs if r.head.test_acc is None]
    if not scored:
        return ["No run has a test accuracy yet (unfinished runs or no test split): nothing to rank."]
    base = scored[0]
    why = "the first run given" if base is runs[0] else f"the first run with a test accuracy; {runs[0].label} has none"
    lines.append(f"Baseline: {base.label} ({why}), test accuracy {page.pct(base.head.test_acc)}.")
    deltas = [(100 * (r.head.test_acc - base.head.test_acc), r) for r in scored if r is not base]
    for word, extreme, sign in (("gain", max, 1), ("drop", min, -1)):
        delta, run = extreme(deltas, key=lambda d: d[0], default=(0, None))
        if sign * delta > 0:
            lines.append(f"Largest {word}: {run.label} ({delta:+.2f} points test accuracy) differs in "
                         f"{changes(base, run, keys)}.")
    if deltas and all(d == 0 for d, _ in deltas):
        lines.append("Every run reaches exactly the baseline's test accuracy.")
    best = max(scored, key=lambda r: r.head.test_acc)
    lines.append(f"Best test accuracy: {best.label}, {page.pct(best.head.test_acc)}.")
    top = effects(runs, keys)
    if top and top[0][1] > 0:
        key, spread, means = top[0]
        values = ", ".join(f"{value}: {mean:.2f}%" for value, mean, _ in means)
        lines.append(f"Setting that changed test accuracy most: {key} ({values}; spread {spread:.2f} points).")
    timed = [r for r in runs if r.head.wall_s]
    if len(timed) >= 2:
        fast, slow = min(timed, key=lambda r: r.head.wall_s), max(timed, key=lambda r: r.head.wall_s)
        lines.append(f"Fastest: {fast.label} ({page.duration(fast.head.wall_s)}); slowest: {slow.label} "
                     f"({page.duration(slow.head.wall_s)}).")
    if unscored:
        lines.append(f"No test accuracy for {', '.join(unscored)}: unfinished, or without a test split.")
    return lines


# ---------------------------------------------------------------------------------------------------- page


def _run_link(r: ComparedRun, out: Path) -> Html | str:
    report = r.folder.path / REPORT
    if not report.is_file():
        return r.label
    href = Path(os.path.relpath(report.resolve(), out.resolve().parent)).as_posix()
    return Html(f'<a href="{esc(href)}">{esc(r.label)}</a>')


def _results(runs: list[ComparedRun], keys: list[str], out: Path) -> Html:
    base = next((r for r in runs if r.head.test_acc is not None), None)
    headers = ["run", "status", *keys, "test acc", "vs baseline", "best val acc", "test acc at best val",
               "wall time", "images/s", "parameters"]
    rows = []
    for r in runs:
        h = r.head
        if base is None or h.test_acc is None:
            delta = "—"
        else:
            delta = "baseline" if r is base else f"{100 * (h.test_acc - base.head.test_acc):+.2f} pts"
        best_val = page.pct(h.best_val_acc) + (f" (epoch {h.best_epoch})" if h.best_epoch is not None else "")
        params = r.folder.identity.get("parameters")
        rows.append([_run_link(r, out), r.head.status,
                     *[fmt(r.settings.get(k, _ABSENT)) if r.has_config else "no config.yaml" for k in keys],
                     page.pct(h.test_acc), delta, best_val, page.pct(h.test_acc_at_best_val),
                     page.duration(h.wall_s), page.num(h.images_per_s, ",.0f"),
                     f"{params:,}" if isinstance(params, int) else "—"])
    scored = [i for i, r in enumerate(runs) if r.head.test_acc is not None]
    best = [max(scored, key=lambda i: runs[i].head.test_acc)] if scored else []
    first_result = 2 + len(keys)
    table = page.table(headers, rows, numeric=range(first_result, len(headers)), highlight=best)
    lead = ("Config keys that differ between the runs, then their results. Accuracies are final test accuracy; "
            "the highlighted row is the best. ")
    if not keys:
        lead += "The configs are identical apart from where the runs were written."
    return page.section("results", "Runs and results", _scrolling(table), lead=lead)


def _scrolling(table: Html) -> Html:
    """A table that scrolls sideways when wider than the page (many differing keys) rather than squeeze its columns."""
    return Html(f'<div class="scroll wide">{table}</div>')


def _effects(runs: list[ComparedRun], keys: list[str]) -> Html | str:
    rows = [(Html(f"<code>{esc(key)}</code>"), "; ".join(f"{value}: {mean:.2f}%" + (f" ({n} runs)" if n > 1 else "")
                                                        for value, mean, n in means), f"{spread:.2f}")
            for key, spread, means in effects(runs, keys)]
    if not rows:
        return ""
    table = page.table(("setting", "mean test accuracy per value", "spread (points)"), rows, numeric=(2,))
    return page.section("effects", "Effect of each setting", _scrolling(table),
                        lead="Runs grouped by the value of each differing key; largest spread first. Keys that "
                             "change together in these runs share their effect.")


def _shared(runs: list[ComparedRun], keys: list[str]) -> Html | str:
    ref = next((r for r in runs if r.has_config), None)
    if ref is None:
        return ""
    same = [(Html(f"<code>{esc(k)}</code>"), fmt(v)) for k, v in ref.settings.items() if k not in keys]
    body = page.details(f"{len(same)} keys with the same value in every run",
                        _scrolling(page.table(("key", "value"), same)))
    return page.section("shared", "Shared settings", body)


def render_comparison(runs: list[ComparedRun], curves_png: bytes, out: Path) -> str:
    keys = differing_keys(runs)
    summary = page.section("summary", "What changed most", page.bullets(summarise(runs, keys)), cls="summary")
    curves = page.section("curves", "Curves", page.figure(
        curves_png, "test accuracy, train loss and test loss per epoch for every run",
        "Per epoch, one colour per run: test accuracy, train loss and test loss."))
    notes = [f"{r.label}: {note}" for r in runs for note in r.folder.missing if note.startswith(_NOTES_SHOWN)]
    sections = [page.notes(notes, "The comparison uses everything else the run folders hold."), summary,
                _results(runs, keys, out), curves, _effects(runs, keys), _shared(runs, keys)]
    nav = (("summary", "Summary"), ("results", "Runs"), ("curves", "Curves"), ("effects", "Effects"),
           ("shared", "Shared settings"))
    parent = os.path.commonpath([str(r.folder.path.resolve()) for r in runs])
    hero = (f'<div class="eyebrow">visionlaunch comparison</div><h1>{len(runs)} runs compared</h1>'
            f'<div class="meta">{esc(", ".join(r.label for r in runs))} · in {esc(parent)}</div>')
    return page.document(f"{len(runs)} runs compared · visionlaunch", hero, nav, sections)
