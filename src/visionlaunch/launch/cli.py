"""The `visionlaunch` command: train, evaluate, figures, prepare, show-config, models, report, compare, ablate.

`train.py` at the repository root calls `main(["train", ...])`, so `accelerate launch train.py ...` and
`visionlaunch train ...` are the same program.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from visionlaunch.errors import VisionlaunchError
from visionlaunch.trainers.preemption import Preempted

EPILOG = """examples:
  visionlaunch train --config configs/mnist_cnn.yaml
  visionlaunch train --config configs/mnist_cnn.yaml optim.lr=0.05 train.epochs=3
  accelerate launch train.py --config configs/cifar10_cnn.yaml
  visionlaunch evaluate runs/mnist_cnn-20261125-120000
  visionlaunch report runs/mnist_cnn-20261125-120000 --pdf
  visionlaunch compare runs/lr-0.05 runs/lr-0.1 runs/lr-0.2
  visionlaunch ablate configs/ablations/mnist_width.yaml --dry-run -- data.root=../shared/data
"""


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML preset, e.g. configs/mnist_cnn.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.05")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionlaunch", description="Train image classifiers from one config.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model; writes runs/<name>/")
    _add_config_args(p)

    p = sub.add_parser("evaluate", help="reload a run's saved weights and measure test accuracy again")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--weights", choices=("last", "best", "ema_last", "ema_best"), default="last",
                   help="ema_*: the EMA weights of a run trained with train.ema_decay")

    p = sub.add_parser("figures", help="redraw a run's figures from its folder and weights")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser("prepare", help="decode the config's dataset once into the tensor cache")
    _add_config_args(p)

    p = sub.add_parser("show-config", help="print the resolved config (or every key with --keys)")
    _add_config_args(p, required=False)
    p.add_argument("--keys", action="store_true", help="list every key with its default and meaning")

    sub.add_parser("models", help="list the models and their arguments")

    p = sub.add_parser("report", help="write a run's self-contained report.html (and report.pdf with --pdf)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--pdf", action="store_true", help="also print report.pdf with headless Chromium")

    p = sub.add_parser("compare", help="compare runs in one self-contained HTML page (the first is the baseline)")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir")
    p.add_argument("--out", type=Path, help="output file; default <common parent of the runs>/compare.html")
    p.add_argument("--pdf", action="store_true", help="also print the page to PDF with headless Chromium")

    p = sub.add_parser("ablate", help="run a config over a grid or list of overrides and seeds; write a table and "
                                      "a figure")
    p.add_argument("file", type=Path, help="ablation file, e.g. configs/ablations/mnist_width.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="extra overrides for every run (after --), e.g. -- data.root=../shared/data")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the runs and their commands; run nothing")
    mode.add_argument("--table-only", action="store_true", help="rebuild the table and figure from the run folders")
    mode.add_argument("--rerun", action="store_true", help="run finished variants again, replacing their folders")
    p.add_argument("--only", action="append", metavar="RUN",
                   help="only this run (<setting>-seed<k>) or setting (all its seeds); repeatable, e.g. for array jobs")
    p.add_argument("--out", type=Path, help="the ablation folder; default <output_dir>/<name> (runs/ablations/<name>)")
    return parser


def _preset_name(config_path: str | None) -> str | None:
    return Path(config_path).stem if config_path else None


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.config import describe_keys, load_config

    if args.command == "train":
        from visionlaunch.trainers.trainer import train
        cfg = load_config(args.config, args.overrides)
        train(cfg, preset=_preset_name(args.config), argv=argv)
        return 0
    if args.command == "evaluate":
        from visionlaunch.launch.evaluate import evaluate_run
        return evaluate_run(args.run_dir, args.weights)
    if args.command == "figures":
        from visionlaunch.launch.evaluate import redraw_figures
        for path in redraw_figures(args.run_dir):
            print(path)
        return 0
    if args.command == "prepare":
        from visionlaunch.trainers.data import prepare_data
        cfg = load_config(args.config, args.overrides)
        bundle = prepare_data(cfg.data)
        print(bundle.note)
        return 0
    if args.command == "show-config":
        if args.keys:
            print(describe_keys())
        else:
            print(load_config(args.config, args.overrides).to_yaml(), end="")
        return 0
    if args.command == "models":
        from visionlaunch.models import model_args, model_names
        for name in model_names():
            spec = ", ".join(f"{k}={default!r}" for k, (_, default) in model_args(name).items())
            print(f"{name}: {spec}")
        return 0
    if args.command == "report":
        from visionlaunch.reports.html import write_report
        out = write_report(args.run_dir, pdf=args.pdf)
        print(out)
        if args.pdf:
            print(out.with_suffix(".pdf"))
        return 0
    if args.command == "compare":
        from visionlaunch.reports.compare import write_comparison
        out = write_comparison(args.run_dirs, args.out, pdf=args.pdf)
        print(out)
        if args.pdf:
            print(out.with_suffix(".pdf"))
        return 0
    if args.command == "ablate":
        from visionlaunch.launch.ablate import ablate_command
        return ablate_command(args)
    raise AssertionError(args.command)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Everything after a `--` is overrides, wherever the options stand (argparse alone rejects
    `ablate FILE --dry-run -- key=value`: it has already filled the positionals when it meets `--`)."""
    if "--" not in argv:
        return parser.parse_args(argv)
    cut = argv.index("--")
    args = parser.parse_args(argv[:cut])
    if not hasattr(args, "overrides"):
        parser.error(f"{args.command} takes no key=value overrides")
    args.overrides = [*(args.overrides or []), *argv[cut + 1:]]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(build_parser(), argv)
    try:
        return run(args, ["visionlaunch", *argv])
    except VisionlaunchError as exc:
        print(f"visionlaunch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Preempted as exc:  # a checkpoint is written: a scheduler may requeue on this exit status
        print(f"visionlaunch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("visionlaunch: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
