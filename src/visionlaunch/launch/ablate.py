"""`visionlaunch ablate FILE [--dry-run | --table-only | --rerun] [--out DIR] [-- key=value ...]`."""

from __future__ import annotations

import argparse
import shlex

from visionlaunch.ablation import load_ablation, run_ablation, write_ablation_results
from visionlaunch.ablation.results import TABLE_MD, read_result
from visionlaunch.ablation.runner import train_command


def ablate_command(args: argparse.Namespace) -> int:
    """0 when every run finished, 1 when some failed (the others ran and the table says which), 2 for bad input."""
    ablation = load_ablation(args.file, out=args.out, extra_overrides=args.overrides)
    if args.dry_run:
        print(dry_run_text(ablation))
        return 0
    if args.table_only:
        paths = write_ablation_results(ablation)
    else:
        paths = run_ablation(ablation, rerun=args.rerun).outputs
    print((ablation.out_dir / TABLE_MD).read_text())
    for path in paths:
        print(path)
    return 0 if all(read_result(v).state == "ok" for v in ablation.variants) else 1


def dry_run_text(ablation) -> str:
    settings = ablation.settings()
    lines = [f"ablation {ablation.name}: {len(ablation.variants)} runs ({len(settings)} settings x "
             f"{len(ablation.seeds)} seed(s)) -> {ablation.out_dir}"]
    for variant in ablation.variants:
        state = read_result(variant).state
        note = "finished, would be skipped" if state == "ok" else state
        lines.append(f"  {variant.name}  [{variant.label}, seed {variant.seed}; {note}]")
        lines.append(f"    {shlex.join(['visionlaunch', *train_command(variant)[3:]])}")
    return "\n".join(lines)
