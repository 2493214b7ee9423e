"""The run report: `write_report(run_dir)` turns a run folder into one self-contained report.html, its sections
(`render_report`) each drawn from what exists, so that an unfinished or older run still gets a page."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from visionlaunch.atomic import atomic_write_text
from visionlaunch.config import canonical_precision
from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import CONFIG, REPORT, RUN_FILES, holds_run_files

from . import page
from .analysis import (SPLITS, Headline, RunFolder, epoch_elapsed, epoch_rows, find_restarts, headline, number,
                       read_run, row_value)
from .class_figures import count_correct, most_confused_pairs
from .figures import MAX_LEGEND_CLASSES, Stamp, plot_curves
from .page import Html, esc

WIDE_FIGURE_PX = 1400  # wider figures get the page's full width at their own size

_IDENTITY = ("ident", "date", "started", "command", "git_commit", "host", "device", "processes", "precision",
             "parameters", "data", "visionlaunch", "python", "torch")  # run.yaml keys, in the order a reader wants
_LABELS = {"ident": "identifier", "command": "command line", "git_commit": "git commit"}  # the others: the key


def write_report(run_dir: Path, *, pdf: bool = False) -> Path:
    """Write run_dir/report.html from the run folder alone and return its path; with `pdf`, also report.pdf
    (headless Chromium). Bad or missing files inside the folder never stop it: the page says what is missing."""
    run = read_run(run_dir)
    if not holds_run_files(run.path):  # report.html would land in (and replace a file of) some other folder
        raise VisionlaunchError(
            f"{run.path} is not a run folder: it holds none of a run's files ({', '.join(RUN_FILES)}), so "
            f"there is nothing to report and {REPORT} is not written there. Pass the folder that "
            "`visionlaunch train` printed (runs/<name>).")
    out = run.path / REPORT
    atomic_write_text(out, render_report(run))
    if pdf:
        from .pdf import export_pdf

        # The printed copy opens the collapsed config and summary, which a PDF reader cannot click open.
        with tempfile.TemporaryDirectory(prefix="visionlaunch-report-") as tmp:
            printable = Path(tmp) / REPORT
            printable.write_text(render_report(run, expand=True))
            export_pdf(printable, out.with_suffix(".pdf"))
    return out


def render_report(run: RunFolder, *, expand: bool = False) -> str:
    head = headline(run.records, run.epochs_planned)
    figures = dict(run.figures)
    missing = list(run.missing)
    try:
        _draw_missing_curves(run, figures, missing)
    except Exception as exc:  # noqa: BLE001 - same reason as _guarded
        missing.append(f"the curves could not be drawn from metrics.jsonl ({type(exc).__name__}: {exc}).")
    notes = page.notes(missing, "The report shows everything else the run folder holds.")
    sections = [notes] + [_guarded(anchor, build, *args) for anchor, build, *args in (
        ("results", _results, run, head), ("curves", _curves, figures), ("samples", _samples, run, figures),
        ("confusion", _confusion, run, figures), ("epochs", _epochs, run, head), ("resumed", _restarts, run),
        ("run", _identity, run), ("model", _model, run, expand), ("config", _config, run, expand))]
    nav = (("results", "Results"), ("curves", "Curves"), ("samples", "Predictions"), ("confusion", "Confusion"),
           ("epochs", "Per epoch"), ("resumed", "Resumed"), ("run", "Run"), ("model", "Model"), ("config", "Config"))
    return page.document(f"{run.name} · visionlaunch report", _hero(run, head), nav, sections)


def _guarded(anchor: str, build, *args) -> str:
    """A section that fails on input nobody foresaw becomes a visible note, not a lost report: the report is
    written at the end of every training run and must never be the thing that fails it."""
    try:
        return build(*args) or ""
    except Exception as exc:  # noqa: BLE001 - shown on the page with its type and message
        return page.section(anchor, f"Section '{anchor}' could not be drawn", Html(
            f"<p>{esc(type(exc).__name__)}: {esc(exc)}</p><p class=\"muted\">Please report this with the run folder."
            "</p>"), cls="notes")


# ---------------------------------------------------------------------------------------------------- header


def _hero(run: RunFolder, head: Headline) -> str:
    ident = run.identity
    badge = f'<span class="badge {"good" if head.finished else "bad"}">{head.status}</span>'
    facts = [ident.get("ident"), ident.get("date"), ident.get("host"), ident.get("device")]
    if ident.get("git_commit"):
        facts.append(f"git {ident['git_commit']}")
    meta = " · ".join(esc(f) for f in facts if f) or esc(str(run.path))
    return (f'<div class="eyebrow">visionlaunch run report</div><h1>{esc(run.name)}{badge}</h1>'
            f'<div class="meta">{meta}</div>')


# ---------------------------------------------------------------------------------------------------- results


def _results(run: RunFolder, head: Headline) -> str:
    if not head.epochs_done and not head.finished:
        return page.section("results", "Results", Html('<p class="muted">No epoch finished, so there are no results '
                                                      "yet.</p>"))
    epochs = f"{head.epochs_done}" + (f" of {head.epochs_planned}" if head.epochs_planned else "")
    best = f"epoch {head.best_epoch}" if head.best_epoch is not None else "no validation split"
    params = run.identity.get("parameters")
    cards = [
        page.card("Test accuracy", page.pct(head.test_acc), f"top-5 {page.pct(head.test_acc5)}"),
        page.card("Best validation accuracy", page.pct(head.best_val_acc), best),
        page.card("Test accuracy at best val", page.pct(head.test_acc_at_best_val), "the model kept in best.pt"),
        page.card("Test loss", page.num(head.test_loss)),
        page.card("Wall time", page.duration(head.wall_s), f"{epochs} epochs"),
        page.card("Training speed", page.num(head.images_per_s, ",.0f"), "images/s (mean over epochs)"),
    ]
    if isinstance(params, int):
        precision = _precision(run.identity.get("precision"))
        cards.append(page.card("Parameters", f"{params:,}", f"{precision} training" if precision else ""))
    lead = "" if head.finished else "Unfinished run: numbers are from its last logged epoch."
    lead = " ".join(filter(None, (lead, _early_stop_note(run))))
    return page.section("results", "Results", Html(f'<div class="cards">{"".join(cards)}</div>'), lead=lead)


def _early_stop_note(run: RunFolder) -> str:
    stop = (run.final or {}).get("early_stop")
    if not isinstance(stop, dict):
        return ""
    watched = f"{stop.get('metric')} with patience {stop.get('patience')}"
    best = number(stop.get("best"))
    best_text = f"best {best:.4f} at epoch {stop.get('best_epoch')}" if best is not None else "no best value"
    if stop.get("stopped_epoch") is None:
        return f"Early stopping ({watched}) did not trigger; {best_text}."
    return (f"Stopped early after epoch {stop['stopped_epoch']}: {stop.get('metric')} had not improved for "
            f"{stop.get('patience')} epochs ({best_text}).")


def _precision(value) -> str:
    """The precision in its one spelling: runs written before fp32 was its name recorded "no"."""
    return str(canonical_precision(value) or "")


def _draw_missing_curves(run: RunFolder, figures: dict[str, bytes], missing: list[str]) -> None:
    """Curves need only metrics.jsonl: when their PNGs are missing (figures off, crash before drawing), draw them."""
    if ("loss" in figures and "accuracy" in figures) or not epoch_rows(run.records):
        return
    ident = str(run.identity.get("ident") or "")
    try:
        stamp = Stamp(ident=ident or "unknown", date=str(run.identity.get("date")), run_name=run.name)
    except ValueError:  # no or malformed date in run.yaml: stamp with today's
        stamp = Stamp.today(ident=ident, run_name=run.name)
    with tempfile.TemporaryDirectory(prefix="visionlaunch-curves-") as tmp:
        drawn = plot_curves(run.records, Path(tmp), stamp)
        for path in drawn:
            figures.setdefault(path.stem, path.read_bytes())
    missing.append(f"{' and '.join(p.name for p in drawn)} were drawn by the report from metrics.jsonl.")


def _figures_section(key: str, title: str, parts: list) -> str:
    """A section of side-by-side figures (and tables); nothing at all when the run has none of them."""
    if not parts:
        return ""
    return page.section(key, title, Html(f'<div class="figs">{"".join(parts)}</div>'))


def _curves(figures: dict[str, bytes]) -> str:
    parts = [page.figure(figures[stem], alt, caption) for stem, alt, caption in (
        ("loss", "loss per epoch", "Loss per epoch for each split."),
        ("accuracy", "top-1 accuracy per epoch", "Top-1 accuracy per epoch; the star marks the best epoch."),
    ) if stem in figures]
    return _figures_section("curves", "Loss and accuracy", parts)


def _samples(run: RunFolder, figures: dict[str, bytes]) -> str:
    parts = []
    # With many classes (CIFAR-100) each figure gets the full width: a half-width t-SNE legend of 20 superclasses
    # would be too small to read.
    many = run.predictions is not None and len(run.predictions.classes) > MAX_LEGEND_CLASSES
    if "predictions" in figures:
        caption = "Random test images with true and predicted class: green when right, red when wrong."
        pred = run.predictions
        if pred is not None and pred.grid is not None and len(pred.grid):  # the grid's images, when stored
            right = count_correct(pred.labels[pred.grid], pred.preds[pred.grid])
            caption = f"{right}/{len(pred.grid)} correct. {caption}"
        parts.append(_full(page.figure(figures["predictions"], "grid of test predictions", caption), many))
    if "tsne" in figures:
        grouped = many and run.predictions.superclasses is not None
        coloured = "the true class's superclass" if grouped else "true class"
        parts.append(_full(page.figure(figures["tsne"], "t-SNE of test features",
                                       f"t-SNE of the chosen layer's features on test images, coloured by {coloured}."),
                           many))
    return _figures_section("samples", "Predictions and features", parts)


def _full(part: str, full: bool) -> Html:
    return Html(f'<div class="full">{part}</div>') if full else Html(part)


def _confusion(run: RunFolder, figures: dict[str, bytes]) -> str:
    parts = []
    if "confusion" in figures:
        fig = page.figure(figures["confusion"], "confusion matrix",
                          "Rows: true class; columns: predicted class; each row sums to 1.")
        size = page.png_size(figures["confusion"])
        # A 100-class matrix names every class in small type: shown at its own size (scrolling sideways on a
        # narrow window), since shrinking it to a column would make the names unreadable.
        parts.append(Html(f'<div class="native">{fig}</div>') if size and size[0] > WIDE_FIGURE_PX else fig)
    pred = run.predictions
    if pred is not None and len(pred.labels):
        many = len(pred.classes) > MAX_LEGEND_CLASSES
        pairs = most_confused_pairs(pred.labels, pred.preds, pred.classes, k=15 if many else 8)
        per_true = {c: int((pred.labels == i).sum()) for i, c in enumerate(pred.classes)}
        groups = pred.superclass_of
        headers = ("true class", "predicted as", "images", "of the true class")
        rows = [(true, predicted, count, page.pct(count / per_true[true], 1)) for true, predicted, count in pairs]
        note = ""
        if groups is not None:
            headers += ("superclasses",)
            group = {c: pred.superclasses[g].replace("_", " ") for c, g in zip(pred.classes, groups)}
            rows = [(true, predicted, *rest, f"both {group[true]}" if group[true] == group[predicted]
                     else f"{group[true]} → {group[predicted]}") for true, predicted, *rest in rows]
            wrong = pred.labels != pred.preds
            if wrong.any():
                same = float(np.mean(groups[pred.labels[wrong]] == groups[pred.preds[wrong]]))
                note = (f" {page.pct(same, 0)} of the {int(wrong.sum()):,} errors stay inside the true class's "
                        f"superclass ({page.pct(float(np.mean(groups[pred.labels] == groups[pred.preds])))} "
                        "superclass accuracy).")
        table = page.table(headers, rows, numeric=(2, 3)) \
            if rows else Html('<p class="muted">No test image was misclassified.</p>')
        block = Html(f"<div><h3>Most confused class pairs</h3>{table}<p class=\"muted\">From predictions.npz: "
                     f"{len(pred.labels):,} test images, accuracy {page.pct(pred.accuracy)}.{esc(note)}</p></div>")
        parts.append(_full(block, many))
    return _figures_section("confusion", "Confusion", parts)


# ---------------------------------------------------------------------------------------------------- per epoch


def _epochs(run: RunFolder, head: Headline) -> str:
    rows = epoch_rows(run.records)
    if not rows:
        return ""
    splits = [s for s in SPLITS if any(s in r for r in rows)]
    headers = ["epoch"] + [f"{s} {m}" for s in splits for m in ("loss", "acc")] + \
        ["lr", "train time", "images/s", "epoch time", "elapsed"]
    table_rows, previous = [], 0.0
    for r in rows:
        cells = [r["epoch"]]
        for s in splits:
            cells += [page.num(row_value(r, s, "loss")), page.pct(row_value(r, s, "acc"))]
        elapsed = epoch_elapsed(r)
        lr = number(next((r[s].get("lr") for s in splits if s in r), None))
        cells += [page.num(lr, ".3g"), page.duration(row_value(r, "train", "seconds")),
                  page.num(row_value(r, "train", "images_per_s"), ",.0f"),
                  page.duration(None if elapsed is None else elapsed - previous), page.duration(elapsed)]
        previous = elapsed if elapsed is not None else previous
        table_rows.append(cells)
    highlight = [i for i, r in enumerate(rows) if r["epoch"] == head.best_epoch]
    body = page.table(headers, table_rows, numeric=range(1, len(headers)), highlight=highlight)
    if len(rows) > 20:
        body = Html(f'<div class="scroll">{body}</div>')
    lead = ("Train figures are running averages over the epoch (augmented images); val and test are measured after "
            "it. Train time counts the training steps only; epoch time adds evaluation and saving.")
    if head.best_epoch is not None:
        lead += " The highlighted row is the best validation epoch."
    return page.section("epochs", "Per epoch: metrics and timing", body, lead=lead)


def _restarts(run: RunFolder) -> str:
    restarts = find_restarts(run.records)
    if not restarts:
        return ""
    items = []
    for r in restarts:
        where = f"after epoch {r.last_epoch}" if r.last_epoch else "before the first epoch finished"
        step = f" (last logged step {r.last_step})" if r.last_step is not None else ""
        resumed = ", ".join(x for x in (f"epoch {r.resumed_epoch}" if r.resumed_epoch is not None else "",
                                         f"step {r.resumed_step}" if r.resumed_step is not None else "") if x)
        items.append(f"Interrupted {where}{step}; resumed at {resumed or 'an unlogged position'} "
                     f"(metrics.jsonl record {r.line + 1}).")
    lead = "Logging went back in time here: the run was stopped and resumed. Tables and curves use the records " \
           "of the resumed run where epochs were logged twice."
    return page.section("resumed", "Resumed run", page.bullets(items), lead=lead)


# ---------------------------------------------------------------------------------------------------- identity


def _identity(run: RunFolder) -> str:
    ident = run.identity
    if not ident:
        return page.section("run", "Run", Html(f'<p class="muted">No run.yaml: folder <code>{esc(run.path)}</code>.'
                                               "</p>"))
    pairs = [("name", run.name), ("folder", Html(f"<code>{esc(run.path)}</code>"))]
    for key in _IDENTITY:
        if ident.get(key) not in (None, ""):
            value = ident[key]
            if key == "command":
                value = Html(f"<code>{esc(value)}</code>")
            elif key == "parameters" and isinstance(value, int):
                value = f"{value:,}"
            elif key == "precision":  # with the reason (auto and what it chose), where run.yaml has one
                reason = ident.get("precision_reason")
                value = _precision(value) + (f" ({reason})" if reason else "")
            pairs.append((_LABELS.get(key, key), value))
    pairs += [(key, value) for key, value in ident.items() if key not in {*_IDENTITY, "name", "precision_reason"}]  # of newer versions
    return page.section("run", "Run", page.key_values(pairs))


def _model(run: RunFolder, expand: bool) -> str:
    if run.summary is None:
        return ""
    first = run.summary.strip().splitlines()[0] if run.summary.strip() else "model summary"
    return page.section("model", "Model", page.details(first, page.pre(run.summary), expand=expand))


def _config(run: RunFolder, expand: bool) -> str:
    if run.config_text is None:
        return ""
    rerun = f"visionlaunch train --config {run.path / CONFIG} output.name={run.name}-again"
    body = page.details("config.yaml (the resolved configuration)", page.pre(run.config_text), expand=expand)
    return page.section("config", "Configuration", body, lead=Html(f"Rerun it with <code>{esc(rerun)}</code>"))
