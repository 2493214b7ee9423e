"""A run folder as reports see it, and what they say about it. `read_run` reads a folder tolerantly, so that a
crashed, unfinished or older run still gets a report: what is missing or unreadable becomes a sentence in
`RunFolder.missing`. Pure functions of the metrics.jsonl records give per-epoch rows, the headline results and
where a resumed run restarted."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from visionlaunch import runfolder as rf
from visionlaunch.config import RunConfig, flatten
from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import final_record, parse_records
from visionlaunch.yamlfiles import read_yaml

from .predictions import Predictions, load_predictions

SPLITS = ("train", "val", "test")


def number(value) -> float | None:
    """A finite float, or None for anything else (strings, bools, NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def epoch_rows(records: list[dict]) -> list[dict]:
    """One row per epoch, {"epoch": e, "train": rec, "val": rec, "test": rec} (splits that were logged), sorted.
    A resumed run logs some epochs twice: the later record wins, as it belongs to the run that went on."""
    rows: dict[int, dict] = {}
    for rec in records:
        epoch = number(rec.get("epoch")) if isinstance(rec, dict) else None
        if epoch is None or rec.get("kind") != "epoch" or rec.get("split") not in SPLITS:
            continue
        rows.setdefault(int(epoch), {"epoch": int(epoch)})[rec["split"]] = rec
    return [rows[e] for e in sorted(rows)]


@dataclass(frozen=True)
class Headline:
    """The results a reader looks for first. Fractions for accuracies; None where the run did not record one."""

    finished: bool
    epochs_done: int
    epochs_planned: int | None
    test_acc: float | None = None
    test_acc5: float | None = None
    test_loss: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    test_acc_at_best_val: float | None = None
    wall_s: float | None = None
    images_per_s: float | None = None  # mean training throughput over the epochs

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        of = f" of {self.epochs_planned}" if self.epochs_planned else ""
        return f"unfinished: {self.epochs_done}{of} epochs" if self.epochs_done else "no finished epoch"


def row_value(row: dict, split: str, key: str) -> float | None:
    """The finite number `key` of an epoch row's `split` record, else None."""
    return number(row.get(split, {}).get(key))


def epoch_elapsed(row: dict) -> float | None:
    """Seconds since the start of the run when the epoch's last record was written."""
    times = [t for t in (row_value(row, split, "time") for split in SPLITS) if t is not None]
    return max(times) if times else None


def headline(records: list[dict], epochs_planned: int | None = None) -> Headline:
    """From the final record when there is one; otherwise from the epoch records of an unfinished run."""
    rows = epoch_rows(records)
    final = final_record(records) or {}
    last = rows[-1] if rows else {}
    val = [(r["epoch"], row_value(r, "val", "acc")) for r in rows if row_value(r, "val", "acc") is not None]
    best_epoch, best_val = max(val, key=lambda ev: ev[1]) if val else (None, None)  # first best on ties
    best_row = next((r for r in rows if r["epoch"] == best_epoch), {})
    rates = [x for x in (row_value(r, "train", "images_per_s") for r in rows) if x is not None]
    elapsed = [t for t in map(epoch_elapsed, rows) if t is not None]

    def pick(final_key: str, fallback):
        value = number(final.get(final_key))
        return value if value is not None else fallback

    best_epoch_final = number(final.get("best_epoch"))
    return Headline(
        finished=bool(final),
        epochs_done=rows[-1]["epoch"] if rows else 0,
        epochs_planned=int(number(final.get("epochs")) or 0) or epochs_planned,
        test_acc=pick("test_acc", row_value(last, "test", "acc")),
        test_acc5=pick("test_acc5", row_value(last, "test", "acc5")),
        test_loss=pick("test_loss", row_value(last, "test", "loss")),
        best_val_acc=pick("best_val_acc", best_val),
        best_epoch=int(best_epoch_final) if best_epoch_final is not None else best_epoch,
        test_acc_at_best_val=pick("test_acc_at_best_val", row_value(best_row, "test", "acc")),
        wall_s=pick("time", elapsed[-1] if elapsed else None),
        images_per_s=sum(rates) / len(rates) if rates else None,
    )


@dataclass(frozen=True)
class Restart:
    """A point in metrics.jsonl where logging went back in time: the run was interrupted and resumed there."""

    line: int                   # index of the first record after the restart
    last_epoch: int             # last epoch fully logged (train record) before the interruption; 0 if none
    last_step: int | None       # last step logged before the interruption
    resumed_epoch: int | None   # epoch of the first record after it
    resumed_step: int | None    # step of the first record after it


def find_restarts(records: list[dict]) -> list[Restart]:
    """Restarts show as a step record whose step was already logged (steps only grow within one process), any
    record whose step goes backwards, or an epoch record for a (split, epoch) already logged.

    Elapsed `time` is not used: a resumed run may restore it or start it again, so it proves nothing.
    """
    restarts: list[Restart] = []
    last_step: float | None = None       # latest step of any record
    last_logged: float | None = None     # latest step of a `kind: step` record
    seen: set[tuple[str, int]] = set()
    last_epoch = 0
    for i, rec in enumerate(records):
        step, epoch = number(rec.get("step")), number(rec.get("epoch"))
        is_step = rec.get("kind") == "step"
        key = (rec.get("split"), int(epoch)) if rec.get("kind") == "epoch" and epoch is not None else None
        went_back = step is not None and ((last_step is not None and step < last_step)
                                          or (is_step and last_logged is not None and step <= last_logged))
        if went_back or (key is not None and key in seen):
            restarts.append(Restart(line=i, last_epoch=last_epoch, last_step=_int(last_step),
                                    resumed_epoch=_int(epoch), resumed_step=_int(step)))
            seen = {k for k in seen if epoch is None or k[1] < epoch}  # epochs from here on are logged anew
            last_logged = None
        if step is not None:
            last_step = step
            if is_step:
                last_logged = step
        if key is not None:
            seen.add(key)
            if key[0] == "train":
                last_epoch = key[1]
    return restarts


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


# ---------------------------------------------------------------------------------------------------- run folder


_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


@dataclass
class RunFolder:
    path: Path
    identity: dict = field(default_factory=dict)   # run.yaml
    config: dict = field(default_factory=dict)     # config.yaml as plain YAML: not validated, so old keys still read
    config_text: str | None = None
    summary: str | None = None                     # summary.txt
    records: list[dict] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)  # stem -> complete PNG bytes
    predictions: Predictions | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        name = self.identity.get("name")
        return str(name) if name else self.path.name

    @property
    def final(self) -> dict | None:
        return final_record(self.records)

    @property
    def epochs_planned(self) -> int | None:
        train = self.config.get("train")
        epochs = train.get("epochs") if isinstance(train, dict) else None
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def read_run(run_dir: Path) -> RunFolder:
    """Everything a report can use from `run_dir`; raises VisionlaunchError only if the folder does not exist."""
    path = Path(run_dir)
    if not path.is_dir():
        what = "is a file, not a run folder" if path.exists() else "does not exist"
        raise VisionlaunchError(
            f"{path} {what}. Pass the run folder that `visionlaunch train` printed (runs/<name>), which holds "
            "config.yaml, run.yaml and metrics.jsonl.")
    run = RunFolder(path=path)
    run.identity = _read_mapping(run, rf.IDENTITY, "the run's identity (who, when, where, command line)")[1]
    run.config_text, run.config = _read_mapping(run, rf.CONFIG, "the resolved configuration")
    if run.config_text is not None:
        run.missing.extend(config_key_notes(run.config))
    run.summary = _read_text(run, rf.SUMMARY, "the model summary")
    _read_metrics(run)
    report = run.config.get("report")
    if isinstance(report, dict) and report.get("figures") is False and not list(path.glob(f"{rf.FIGURES}/*.png")):
        # One sentence instead of six: the run was asked not to draw, so nothing is missing by accident.
        run.missing.append("report.figures=false: the run drew no figures (t-SNE, prediction grid, confusion matrix) "
                           "and stored no predictions.")
    else:
        _read_figures(run)
        _read_predictions(run)
    return run


# ---------------------------------------------------------------------------------------------------- reading


def _read_text(run: RunFolder, name: str, what: str) -> str | None:
    try:
        return (run.path / name).read_text(errors="replace")
    except FileNotFoundError:
        run.missing.append(f"{name} is missing: no {what}.")
    except OSError as exc:
        run.missing.append(f"{name} is unreadable ({exc.strerror}): no {what}.")
    return None


def _read_mapping(run: RunFolder, name: str, what: str) -> tuple[str | None, dict]:
    """The file's text and the mapping it holds ({} when it holds none: the text is still shown)."""
    text = _read_text(run, name, what)
    try:
        tree = read_yaml(text) if text is not None else {}
    except yaml.YAMLError as exc:
        run.missing.append(f"{name} is not valid YAML ({str(exc).splitlines()[0]}); it is shown as text only.")
        return text, {}
    if not isinstance(tree, dict):
        run.missing.append(f"{name} does not hold a mapping of keys; it is shown as text only.")
        return text, {}
    return text, tree


def _read_metrics(run: RunFolder) -> None:
    """The records the trainer wrote, counting skipped torn lines so the report can say so."""
    text = _read_text(run, rf.METRICS, "metrics: the run stopped before its first logged step")
    if text is None:
        return
    records, bad = parse_records(text)
    run.records.extend(records)
    if bad:
        run.missing.append(f"metrics.jsonl has {bad} unreadable line{'s' if bad > 1 else ''} (a torn write when the "
                           "run was killed?); they are skipped.")
    if not run.records:
        run.missing.append("metrics.jsonl holds no records: the run stopped before its first logged step.")
    elif not any(r.get("kind") == "epoch" for r in run.records):
        run.missing.append("metrics.jsonl has no epoch records: the run stopped during its first epoch.")
    elif run.final is None:
        run.missing.append("metrics.jsonl has no final record: the run did not finish (results below are from "
                           "its last logged epoch).")


def _read_figures(run: RunFolder) -> None:
    for stem, what in rf.FIGURE_STEMS.items():
        png = rf.figure_file(run.path / rf.FIGURES, stem)
        try:
            data = png.read_bytes()
        except OSError:
            run.missing.append(f"{png.relative_to(run.path)} is missing: no {what}.")
            continue
        # A PNG cut short by a crash would show as a broken image: check both ends.
        if data.startswith(_PNG_START) and data.rstrip(b"\0").endswith(_PNG_END):
            run.figures[stem] = data
        else:
            run.missing.append(f"{png.relative_to(run.path)} is not a complete PNG: no {what}.")


def _read_predictions(run: RunFolder) -> None:
    try:
        run.predictions = load_predictions(run.path)
    except FileNotFoundError:
        run.missing.append(f"{rf.PREDICTIONS} is missing: the confusion matrix is shown as an image only, "
                           "without the table of most confused classes.")
    except ValueError as exc:
        run.missing.append(f"{exc}: the table of most confused classes is left out.")


# ---------------------------------------------------------------------------------------------------- config keys


def config_key_notes(config: dict) -> list[str]:
    """Sentences about keys of an older or newer config: ones this version does not know, and ones it expects."""
    known = set(flatten(RunConfig.model_construct().model_dump(mode="json"), depth=2))
    sections = {key.split(".")[0] for key in known}
    present = set(flatten(config, depth=2))
    notes = []
    unknown = sorted(k for k in present - known if k.split(".")[0] not in sections or "." in k)
    if unknown:
        notes.append(f"config.yaml has keys this version of visionlaunch does not know ({', '.join(unknown)}): "
                     "the run came from another version; they are shown as recorded.")
    absent = sorted(k for k in known - present if k.split(".")[0] in {str(s) for s in config})
    absent_sections = sorted(sections - {str(s) for s in config})
    if absent or absent_sections:
        listed = ", ".join(absent + [f"{s}.*" for s in absent_sections])
        notes.append(f"config.yaml lacks keys this version has ({listed}): an older run; rerunning it now would use "
                     "the current defaults for them.")
    return notes
