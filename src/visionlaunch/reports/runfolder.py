"""A run folder as reports see it: read tolerantly, so that a crashed, unfinished or older run still gets a
report. Whatever exists is loaded; whatever is missing or unreadable is named in `RunFolder.missing` as a sentence
for the reader. Only a folder that does not exist at all is an error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from visionlaunch.errors import VisionlaunchError
from visionlaunch.trainers.metrics import parse_records

from .analysis import final_record
from .predictions import PREDICTIONS_FILE, Predictions, load_predictions

FIGURES = {  # file stem in figures/ -> what it shows
    "loss": "loss curves",
    "accuracy": "accuracy curves",
    "tsne": "t-SNE of the features",
    "predictions": "prediction grid",
    "confusion": "confusion matrix",
}
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
    run.identity = _read_mapping(run, "run.yaml", "the run's identity (who, when, where, command line)")
    run.config_text = _read_text(run, "config.yaml", "the resolved configuration")
    if run.config_text is not None:
        run.config = _parse_mapping(run, "config.yaml", run.config_text)
        run.missing.extend(config_key_notes(run.config))
    run.summary = _read_text(run, "summary.txt", "the model summary")
    _read_metrics(run)
    report = run.config.get("report")
    if isinstance(report, dict) and report.get("figures") is False and not list(path.glob("figures/*.png")):
        # One sentence instead of six: the run was asked not to draw, so nothing is missing by accident.
        run.missing.append("report.figures=false: the run drew no figures (t-SNE, prediction grid, confusion matrix) "
                           "and stored no predictions.")
    else:
        _read_figures(run)
        _read_predictions(run)
    return run


# ---------------------------------------------------------------------------------------------------- files


def _read_text(run: RunFolder, name: str, what: str) -> str | None:
    try:
        return (run.path / name).read_text(errors="replace")
    except FileNotFoundError:
        run.missing.append(f"{name} is missing: no {what}.")
    except OSError as exc:
        run.missing.append(f"{name} is unreadable ({exc.strerror}): no {what}.")
    return None


def _parse_mapping(run: RunFolder, name: str, text: str) -> dict:
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        run.missing.append(f"{name} is not valid YAML ({str(exc).splitlines()[0]}); it is shown as text only.")
        return {}
    if not isinstance(tree, dict):
        run.missing.append(f"{name} does not hold a mapping of keys; it is shown as text only.")
        return {}
    return tree


def _read_mapping(run: RunFolder, name: str, what: str) -> dict:
    text = _read_text(run, name, what)
    return {} if text is None else _parse_mapping(run, name, text)


def _read_metrics(run: RunFolder) -> None:
    """The records the trainer wrote, counting skipped torn lines so the report can say so."""
    text = _read_text(run, "metrics.jsonl", "metrics: the run stopped before its first logged step")
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
    for stem, what in FIGURES.items():
        png = run.path / "figures" / f"{stem}.png"
        try:
            data = png.read_bytes()
        except OSError:
            run.missing.append(f"figures/{stem}.png is missing: no {what}.")
            continue
        # A PNG cut short by a crash would show as a broken image: check both ends.
        if data.startswith(_PNG_START) and data.rstrip(b"\0").endswith(_PNG_END):
            run.figures[stem] = data
        else:
            run.missing.append(f"figures/{stem}.png is not a complete PNG: no {what}.")


def _read_predictions(run: RunFolder) -> None:
    try:
        run.predictions = load_predictions(run.path)
    except FileNotFoundError:
        run.missing.append(f"{PREDICTIONS_FILE} is missing: the confusion matrix is shown as an image only, "
                           "without the table of most confused classes.")
    except ValueError as exc:
        run.missing.append(f"{exc}: the table of most confused classes is left out.")


# ---------------------------------------------------------------------------------------------------- config keys


def config_key_notes(config: dict) -> list[str]:
    """Sentences about keys of an older or newer config: ones this version does not know, and ones it expects."""
    from visionlaunch.config import RunConfig  # pydantic: imported only when a config is actually checked

    known = {f"{section}.{key}" for section, fld in RunConfig.model_fields.items()
             for key in fld.annotation.model_fields}
    sections = set(RunConfig.model_fields)
    present = set()
    for section, values in config.items():
        if isinstance(values, dict):
            present.update(f"{section}.{key}" for key in values)
        else:
            present.add(str(section))
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
