"""An ablation's results from its run folders alone (so it works after runs that went as separate jobs): table.md
and table.csv with one row per setting, seeds aggregated, and curves.png with the settings' mean test curves.

A run counts when its metrics.jsonl has the final record and its config.yaml is the variant's config. Otherwise it
is failed (exit status and last log line from logs/<variant>.json, which the sequential runner writes), unfinished
(no exit status: still running, or killed), stale (a finished run of another config) or not run.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from visionlaunch.atomic import atomic_write_text
from visionlaunch.errors import VisionlaunchError
from visionlaunch.reports.analysis import number
from visionlaunch.reports.figures import Stamp, epoch_series, plot_ablation_curves
from visionlaunch.runfolder import CONFIG, IDENTITY, METRICS, final_record, read_metrics
from visionlaunch.trajectory import config_differences
from visionlaunch.yamlfiles import read_yaml

from .plan import Ablation, Variant

TABLE_MD, TABLE_CSV, CURVES_PNG = "table.md", "table.csv", "curves.png"
LOGS = "logs"
STATES = ("ok", "failed", "unfinished", "stale", "not run")


def log_path(variant: Variant) -> Path:
    return variant.out_dir / LOGS / f"{variant.name}.log"


def status_path(variant: Variant) -> Path:
    """The exit record the sequential runner writes for each run it started: exit code, seconds, log tail."""
    return variant.out_dir / LOGS / f"{variant.name}.json"


@dataclass
class RunResult:
    variant: Variant
    state: str                             # one of STATES
    final_test_acc: float | None = None    # fractions, as in metrics.jsonl
    best_test_acc: float | None = None     # the highest test accuracy of any epoch
    ema_test_acc: float | None = None      # final test accuracy of the EMA weights (train.ema_decay > 0)
    time_s: float | None = None            # the final record's time: training and per-epoch evaluation
    identity: dict = field(default_factory=dict, repr=False)  # run.yaml
    records: list[dict] = field(default_factory=list, repr=False)
    message: str = ""                      # why a run is not ok, in a few words


# ---------------------------------------------------------------------------------------------------- one run


def plan_differences(variant: Variant, saved: dict) -> list[str]:
    """'key: run X, plan Y' for the settings that make `saved` (a run's config.yaml) another experiment than the
    variant's config. Keys that may change between a run and its resumption (paths, logging) do not count."""
    planned = variant.config.model_dump(mode="json")
    if planned["data"]["fallback"] == "sample" and saved.get("data", {}).get("name") == "mnist_sample":
        saved = {**saved, "data": {**saved["data"], "name": planned["data"]["name"]}}  # the data really used
    if planned["data"].get("residency") == "auto" and saved.get("data", {}).get("residency") in ("memory", "disk"):
        saved = {**saved, "data": {**saved["data"], "residency": "auto"}}  # where auto put the data
    return config_differences(saved, planned, "run", "plan")


def _read_mapping(path: Path, load=read_yaml) -> dict:
    """The mapping a file holds; {} when it is absent, unreadable or holds something else."""
    try:
        tree = load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8 text, or not JSON
        return {}
    return tree if isinstance(tree, dict) else {}


def read_result(variant: Variant) -> RunResult:
    """What the variant's run folder (and the runner's exit record, if any) says about this run."""
    run = variant.run_dir
    exit_record = _read_mapping(status_path(variant), json.loads)
    code = exit_record.get("exit_code")
    failed = isinstance(code, int) and code != 0
    why = f"exit {code}: {exit_record.get('last_line') or 'no output'}" if failed else ""
    if not run.is_dir():
        return RunResult(variant, "failed" if failed else "not run", message=why)
    records = read_metrics(run / METRICS)
    final = final_record(records)
    if final is not None:
        saved = _read_mapping(run / CONFIG)
        differences = plan_differences(variant, saved) if saved else ["config.yaml is missing"]
        if differences:
            return RunResult(variant, "stale",
                             message="a finished run of another config (" + "; ".join(differences[:3]) + ")")
        test = epoch_series(records, "acc").get("test")  # (epochs, accuracies), or None without a test split
        return RunResult(variant, "ok", final_test_acc=number(final.get("test_acc")),
                         best_test_acc=float(test[1].max()) if test else None,
                         ema_test_acc=number(final.get("test_ema_acc")),
                         time_s=number(final.get("time")), identity=_read_mapping(run / IDENTITY), records=records)
    if failed:
        return RunResult(variant, "failed", message=why)
    return RunResult(variant, "unfinished",
                     message="no final record and no exit status: still running, or killed (rerun to resume)")


def is_complete(variant: Variant) -> bool:
    return read_result(variant).state == "ok"


# ---------------------------------------------------------------------------------------------------- settings


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None below two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class SettingRow:
    setting: str
    label: str
    values: dict
    runs: list[RunResult]

    @property
    def ok(self) -> list[RunResult]:
        return [r for r in self.runs if r.state == "ok"]

    def stat(self, attribute: str) -> tuple[float | None, float | None]:
        return mean_std([v for v in (getattr(r, attribute) for r in self.ok) if v is not None])

    @property
    def parameters(self) -> int | None:
        return next((p for r in self.ok if isinstance(p := r.identity.get("parameters"), int)), None)

    @property
    def status(self) -> str:
        """'ok', or e.g. 'failed 1, not run 1 of 3'."""
        counts = {state: sum(r.state == state for r in self.runs) for state in STATES}
        if counts["ok"] == len(self.runs):
            return "ok"
        parts = [f"{state} {n}" for state, n in counts.items() if n and state != "ok"]
        return ", ".join(parts) + f" of {len(self.runs)}"


# ---------------------------------------------------------------------------------------------------- outputs


def _pct(stat: tuple[float | None, float | None]) -> str:
    mean, std = stat
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s" if value < 100 else f"{value:,.0f} s"


def render_markdown(ablation: Ablation, rows: list[SettingRow]) -> str:
    n_seeds = len(ablation.seeds)
    ema = any(r.ema_test_acc is not None for row in rows for r in row.ok)  # a column only when a run has EMA
    lines = [
        f"**Ablation `{ablation.name}`**" + (f": {ablation.description}" if ablation.description else "")
        + f" ({ablation.source}). Base `{ablation.base}`"
        + (f" + `{' '.join(ablation.fixed + ablation.extra)}`" if ablation.fixed or ablation.extra else "")
        + f"; seeds {', '.join(map(str, ablation.seeds))}.",
        "",
        "| variant | final test acc (%) | best test acc (%) |" + (" EMA test acc (%) |" if ema else "")
        + " seeds | time / run | parameters | status |",
        "|---|---|---|" + ("---|" if ema else "") + "---|---|---|---|",
    ]
    for row in rows:
        params = f"{row.parameters:,}" if row.parameters is not None else "–"
        label = row.label.replace("|", "\\|")
        lines.append(f"| {label} | {_pct(row.stat('final_test_acc'))} | {_pct(row.stat('best_test_acc'))} | "
                     + (f"{_pct(row.stat('ema_test_acc'))} | " if ema else "")
                     + f"{len(row.ok)}/{n_seeds} | {_seconds(row.stat('time_s')[0])} | {params} | {row.status} |")
    lines += ["", "Accuracies: mean ± sample standard deviation over the finished seeds; final = after the last "
              "epoch, best = the highest test accuracy of any epoch (a view of the curve, not a model-selection result)"
              + (", EMA = final accuracy of the weight average (runs with train.ema_decay > 0)" if ema else "")
              + ". Time: mean per run, training and per-epoch evaluation (from the final record; start-up and "
              "figures not included)."]
    problems = [r for row in rows for r in row.runs if r.state != "ok"]
    if problems:
        lines += ["", "Runs that did not count:", ""]
        lines += [f"- `{r.variant.name}`: {r.state}" + (f" ({r.message})" if r.message else "") for r in problems]
    return "\n".join(lines) + "\n"


def render_csv(ablation: Ablation, rows: list[SettingRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    accuracies = ("final_test_acc", "best_test_acc", "ema_test_acc")
    writer.writerow(["setting", "label", *ablation.varied, "seeds_ok", "seeds_total",
                     *(f"{acc}_{stat}_pct" for acc in accuracies for stat in ("mean", "std")), "time_s_mean",
                     "parameters", "status"])

    def num(value: float | None, scale: float = 1.0) -> str:
        return "" if value is None else f"{scale * value:.4f}"

    for row in rows:
        writer.writerow([row.setting, row.label,
                         *[json.dumps(row.values[k]) if isinstance(row.values.get(k), (list, dict))
                           else row.values.get(k) for k in ablation.varied],
                         len(row.ok), len(row.runs), *(num(v, 100) for acc in accuracies for v in row.stat(acc)),
                         num(row.stat("time_s")[0]), "" if row.parameters is None else row.parameters, row.status])
    return buf.getvalue()


def write_ablation_results(ablation: Ablation) -> list[Path]:
    """Write table.md, table.csv and curves.png into the ablation folder from its run folders; their paths."""
    rows = [SettingRow(setting, label, variants[0].values, [read_result(v) for v in variants])
            for setting, label, variants in ablation.settings()]
    if all(r.state == "not run" for row in rows for r in row.runs):
        raise VisionlaunchError(
            f"no run of ablation {ablation.name} exists under {ablation.out_dir}: nothing to tabulate. Run it first "
            f"(`visionlaunch ablate {ablation.source}`), or point --out at the folder its runs went to.")
    out = ablation.out_dir
    atomic_write_text(out / TABLE_MD, render_markdown(ablation, rows))
    atomic_write_text(out / TABLE_CSV, render_csv(ablation, rows))
    groups = [(f"{row.label} (n={len(row.ok)})", [r.records for r in row.ok]) for row in rows if row.ok]
    ident = next((str(r.identity["ident"]) for row in rows for r in row.ok if r.identity.get("ident")), "")
    curves = plot_ablation_curves(groups, out / CURVES_PNG, Stamp.today(ident, f"ablation {ablation.name}"),
                                  f"Ablation {ablation.name}: mean over seeds")
    return [out / TABLE_MD, out / TABLE_CSV, curves]
