"""The `visionlaunch` command: train, evaluate, figures, prepare, show-config, models, report, compare.

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
  visionlaunch prepare ffcv --dataset cifar10 data.root=/data
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

    p = sub.add_parser(
        "prepare", help="decode the config's dataset once into the tensor cache; `prepare ffcv` also writes .beton files",
        description="prepare --config X [key=value ...]: decode the dataset into the tensor cache.\n"
                    "prepare ffcv (--config X | --dataset NAME) [key=value ...]: also write its train/val/test .beton "
                    "files (data.ffcv_dir, default <cache>/ffcv).", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p, required=False)
    p.add_argument("--dataset", choices=("mnist", "mnist_sample", "cifar10", "cifar100", "imagefolder"),
                   help="ffcv: the dataset (instead of or on top of --config); imagefolder needs data.path=...")
    p.add_argument("--encoding", choices=("raw", "jpeg"), help="ffcv: store images raw (default) or as JPEG (RGB)")
    p.add_argument("--jpeg-quality", type=int, help="ffcv: JPEG quality 1..100 (default 90)")
    p.add_argument("--out", help="ffcv: folder for the .beton files (data.ffcv_dir)")
    p.add_argument("--overwrite", action="store_true", help="ffcv: write the files again even if they exist")

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
        return _prepare(args)
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
    raise AssertionError(args.command)


def _prepare(args: argparse.Namespace) -> int:
    from visionlaunch.config import load_config
    from visionlaunch.trainers.data import prepare_data

    overrides = list(args.overrides)
    ffcv = bool(overrides) and overrides[0] == "ffcv"
    if ffcv:
        overrides.pop(0)
    ffcv_flags = {"--dataset": args.dataset, "--encoding": args.encoding, "--jpeg-quality": args.jpeg_quality,
                  "--out": args.out, "--overwrite": args.overwrite or None}
    if not ffcv:
        used = [flag for flag, value in ffcv_flags.items() if value is not None]
        if used or not args.config:
            raise VisionlaunchError(
                f"`visionlaunch prepare` needs --config{' and takes ' + ', '.join(used) + ' only in its ffcv form' if used else ''}"
                ": `visionlaunch prepare --config configs/X.yaml` fills the tensor cache, `visionlaunch prepare ffcv "
                "--dataset mnist` (or --config) also writes the .beton files.")
    elif not (args.config or args.dataset):
        raise VisionlaunchError("`visionlaunch prepare ffcv` needs --dataset NAME or --config FILE, e.g. "
                                "`visionlaunch prepare ffcv --dataset cifar10 data.root=/data`.")
    for key, value in (("data.name", args.dataset), ("data.ffcv_encoding", args.encoding),
                       ("data.ffcv_jpeg_quality", args.jpeg_quality), ("data.ffcv_dir", args.out)):
        if value is not None:
            overrides.insert(0, f"{key}={value}")
    cfg = load_config(args.config, overrides)
    if not ffcv:
        print(prepare_data(cfg.data).note)
        return 0
    from visionlaunch.ffcv_builders.prepare import ensure_betons
    from visionlaunch.ffcv_builders.requirements import require_ffcv

    require_ffcv("`visionlaunch prepare ffcv`")
    bundle = prepare_data(cfg.data)
    print(bundle.note)
    files = ensure_betons({"train": bundle.train, "val": bundle.val, "test": bundle.test}, bundle.name, cfg.data,
                          overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
    for path in files.values():
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `prepare ffcv --dataset mnist data.root=...`: argparse stops taking positionals after an option.
        if args.command == "prepare" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
