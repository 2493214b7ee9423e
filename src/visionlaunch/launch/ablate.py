"""`visionlaunch ablate FILE [--dry-run | --table-only | --rerun] [--only RUN] [--out DIR] [-- key=value ...]`."""

from __future__ import annotations

import argparse
import shlex

from visionlaunch.ablation import Ablation, Variant, load_ablation, run_ablation, write_ablation_results
from visionlaunch.ablation.results import TABLE_MD, is_complete, read_result
from visionlaunch.ablation.runner import train_command


def ablate_command(args: argparse.Namespace) -> int:
    """0 when every selected run finished, 1 when some failed (the others ran and the table says which), 2 for
    bad input."""
    ablation = load_ablation(args.file, out=args.out, extra_overrides=args.overrides)
    selected = ablation.select(args.only)
    if args.dry_run:
        print(dry_run_text(ablation, selected))
        return 0
    if args.table_only:
        paths = write_ablation_results(ablation)
    else:
        paths = run_ablation(ablation, rerun=args.rerun, only=args.only).outputs
    print((ablation.out_dir / TABLE_MD).read_text())
    for path in paths:
        print(path)
    return 0 if all(is_complete(v) for v in selected) else 1


def dry_run_text(ablation: Ablation, selected: list[Variant]) -> str:
    settings = ablation.settings()
    lines = [f"ablation {ablation.name}: {len(ablation.variants)} runs ({len(settings)} settings x "
             f"{len(ablation.seeds)} seed(s)) -> {ablation.out_dir}"]
    if len(selected) < len(ablation.variants):
        lines.append(f"selected: {len(selected)} of them")
    for variant in selected:
        state = read_result(variant).state
        note = "finished, would be skipped" if state == "ok" else state
        lines.append(f"  {variant.name}  [{variant.label}, seed {variant.seed}; {note}]")
        lines.append(f"    {shlex.join(['visionlaunch', *train_command(variant)[3:]])}")
    return "\n".join(lines)
