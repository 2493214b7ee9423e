"""The `visionlaunch` command: train, evaluate, predict, export, figures, prepare, show-config, models, report,
compare, ablate, submit, jobs.

`train.py` at the repository root calls `main(["train", ...])`, so `accelerate launch train.py ...` and
`visionlaunch train ...` are the same program.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from visionlaunch.errors import EXIT_BAD_INPUT, VisionlaunchError, describe_environment_error
from visionlaunch.trainers.preemption import Preempted

EPILOG = """examples:
  visionlaunch train --config configs/mnist_cnn.yaml
  visionlaunch train --config configs/mnist_cnn.yaml optim.lr=0.05 train.epochs=3
  accelerate launch train.py --config configs/cifar10_cnn.yaml
  visionlaunch evaluate runs/mnist_cnn-20261125-120000
  visionlaunch evaluate runs/mnist_cnn-20261125-120000 --data name=imagefolder path=/data/digits
  visionlaunch predict runs/mnist_cnn-20261125-120000 photos/ scans.zip --top-k 3 --out preds.csv
  visionlaunch export runs/mnist_cnn-20261125-120000 --format onnx
  visionlaunch report runs/mnist_cnn-20261125-120000 --pdf
  visionlaunch compare runs/lr-0.05 runs/lr-0.1 runs/lr-0.2
  visionlaunch submit --nodes 2 --gpus-per-node 4 --time 04:00:00 -- --config configs/cifar10_cnn.yaml
  visionlaunch jobs
  visionlaunch ablate configs/ablations/mnist_width.yaml --dry-run -- data.root=../shared/data
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
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print the model's layer table (it is always in runs/<name>/summary.txt)")

    p = sub.add_parser("evaluate", help="reload a run's saved weights and measure test accuracy again")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--weights", choices=("last", "best", "ema_last", "ema_best"), default="last",
                   help="ema_*: the EMA weights of a run trained with train.ema_decay")
    p.add_argument("--data", nargs="+", metavar="key=value",
                   help="measure on other data: the run's data section with these keys changed, e.g. --data "
                        "name=imagefolder path=/data/digits (classes must match by name)")
    p.add_argument("--split", choices=("train", "val", "test"), help="the split to measure (default test)")

    p = sub.add_parser("predict", help="classify images, folders or archives (.zip/.tar) with a run's weights")
    p.add_argument("run_dir", type=Path)
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files, folders, .zip/.tar archives")
    p.add_argument("--weights", choices=("last", "best", "ema_last", "ema_best"), default="last")
    p.add_argument("--top-k", type=int, default=3, help="classes per image, most probable first (default 3)")
    p.add_argument("--out", type=Path, help="write the table as CSV here instead of printing it")
    p.add_argument("--batch-size", type=int, help="images per batch; default the run's train.eval_batch_size")

    p = sub.add_parser("export", help="write a run's model as TorchScript, ONNX or safetensors, with a JSON beside it")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx", "safetensors"))
    p.add_argument("--weights", choices=("last", "best", "ema_last", "ema_best"), default="last")
    p.add_argument("--out", type=Path, help="the model file; default <run>/export/<weights>.<format suffix>")

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

    p = sub.add_parser("models", help="list the models and their arguments")
    p.add_argument("--timm", nargs="?", const="", metavar="PATTERN",
                   help="list timm's architectures (use as model.name=timm/<architecture>), those matching PATTERN")

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
    p.add_argument("--slurm", action="store_true",
                   help="submit the unfinished runs as one SLURM job array (task i = run i), then a job that builds "
                        "the table when all have ended; takes the resource and preemption options of `submit`")
    _add_slurm_args(p, job_options=False)

    p = sub.add_parser("submit", help="run training as a SLURM batch job: submit [options] -- <train arguments>",
                       description="Render a batch script into runs/<name>/slurm/job.sh and sbatch it. Everything "
                                   "after `--` is given to `visionlaunch train` unchanged.")
    _add_slurm_args(p)

    p = sub.add_parser("jobs", help="the SLURM jobs submitted from a runs folder, and their run folders")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (output.dir); default runs")
    return parser


def _add_slurm_args(p: argparse.ArgumentParser, job_options: bool = True) -> None:
    g = p.add_argument_group("SLURM resources")
    g.add_argument("--nodes", "-N", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0, help="0 (default): CPU nodes, DDP over gloo")
    g.add_argument("--processes", type=int, help="training processes in all; default nodes x (GPUs per node or 1)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs for each node's launcher and its processes")
    g.add_argument("--mem", help="memory per node, e.g. 32G")
    g.add_argument("--time", help="time limit, e.g. 04:00:00")
    g.add_argument("--partition", "-p")
    g.add_argument("--account", "-A")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--job-name", help="default vl-<run name>")
    g.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="an extra #SBATCH line, e.g. --sbatch=--mail-type=END (repeatable)")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before training, e.g. 'module load cuda' or 'source .venv/bin/activate'")
    g = p.add_argument_group("SLURM preemption")
    g.add_argument("--signal-seconds", type=int, default=120, help="USR2 this long before the time limit (120)")
    g.add_argument("--no-requeue", action="store_true", help="do not requeue a preempted job")
    g.add_argument("--max-requeues", type=int, default=5, help="requeues of one job at most (5)")
    g.add_argument("--python", help="the Python on the compute nodes; default this one")
    if not job_options:
        return
    g = p.add_argument_group("job")
    g.add_argument("--script", help="run this front door (like train.py) instead of `python -m visionlaunch train`")
    g.add_argument("--dry-run", action="store_true", help="print the batch script; submit nothing")
    g.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="submit a run's own job (runs/<name>/slurm/job.sh) again; no training arguments")


def _slurm_options(args: argparse.Namespace):
    from visionlaunch.slurm.render import SlurmOptions
    return SlurmOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node, processes=args.processes,
                        cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time, partition=args.partition,
                        account=args.account, qos=args.qos, constraint=args.constraint, job_name=args.job_name,
                        signal_seconds=args.signal_seconds, requeue=not args.no_requeue,
                        max_requeues=args.max_requeues, sbatch_lines=args.sbatch, setup_lines=args.setup)


def _split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str] | None]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def _preset_name(config_path: str | None) -> str | None:
    return Path(config_path).stem if config_path else None


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.config import describe_keys, load_config

    if args.command == "train":
        cfg = load_config(args.config, args.overrides)  # before torch is imported: config errors come at once
        from visionlaunch.reports.artefacts import after_training
        from visionlaunch.trainers.trainer import training
        with training(cfg, preset=_preset_name(args.config), argv=argv, verbose=args.verbose) as trainer:
            after_training(trainer, trainer.fit())  # figures and report, under the trainer's signal handlers
        return 0
    if args.command == "evaluate" and (args.data or args.split):
        from visionlaunch.launch.evaluate_data import evaluate_on_data
        return evaluate_on_data(args.run_dir, args.weights, args.data or [], args.split or "test")
    if args.command == "evaluate":
        from visionlaunch.launch.evaluate import evaluate_run
        return evaluate_run(args.run_dir, args.weights)
    if args.command == "predict":
        from visionlaunch.launch.predict import predict_command
        return predict_command(args.run_dir, args.paths, which=args.weights, top_k=args.top_k, out=args.out,
                               batch_size=args.batch_size)
    if args.command == "export":
        from visionlaunch.launch.export import export_run
        for path in export_run(args.run_dir, args.format, args.weights, args.out):
            print(path)
        return 0
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
        if args.timm is not None:
            from visionlaunch.models.timm_models import PREFIX, list_architectures
            names = list_architectures(args.timm)
            print("\n".join(PREFIX + n for n in names) or f"no timm architecture matches {args.timm!r}")
            return 0
        for name in model_names():
            spec = ", ".join(f"{k}={default!r}" for k, (_, default) in model_args(name).items())
            print(f"{name}: {spec}")
        print("timm/<architecture>: drop_rate=0.0, drop_path_rate=0.0 (any timm architecture; "
              "`visionlaunch models --timm [PATTERN]` lists them)")
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
    if args.command == "ablate" and args.slurm:
        from visionlaunch.ablation import load_ablation
        from visionlaunch.slurm.ablation import submit_ablation
        if args.table_only:
            raise VisionlaunchError("--table-only runs nothing: drop --slurm (the table is built here, now).")
        ablation = load_ablation(args.file, out=args.out, extra_overrides=args.overrides)
        submit_ablation(ablation, _slurm_options(args), python=args.python, dry_run=args.dry_run, rerun=args.rerun)
        return 0
    if args.command == "ablate":
        from visionlaunch.launch.ablate import ablate_command
        return ablate_command(args)
    if args.command == "submit":
        from visionlaunch.slurm.submit import plan_job, resubmit, submit
        train_args = getattr(args, "train_args", None) or []
        if args.resume is not None:
            if train_args:
                raise VisionlaunchError(
                    "--resume submits the run's own job again and takes no training arguments: drop the arguments "
                    "after `--` (or drop --resume to submit a new run).")
            resubmit(args.resume)
            return 0
        opts = _slurm_options(args)
        submit(opts, plan_job(opts, train_args, python=args.python, script=args.script), dry_run=args.dry_run)
        return 0
    if args.command == "jobs":
        from visionlaunch.slurm.jobs import format_statuses, job_statuses
        print(format_statuses(*job_statuses(args.runs)), end="")
        return 0
    raise AssertionError(args.command)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Everything after a `--` is overrides, wherever the options stand (argparse alone rejects
    `ablate FILE --dry-run -- key=value`: it has already filled the positionals when it meets `--`)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_known_args(argv[:cut])
    if extra:
        # `prepare ffcv --dataset mnist data.root=...`: argparse stops taking positionals after an option.
        if args.command == "prepare" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if cut < len(argv):
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no key=value overrides")
        args.overrides = [*(args.overrides or []), *argv[cut + 1:]]
    return args


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
    if argv[:1] == ["submit"]:  # submit [slurm options] -- <train arguments, passed on untouched>
        head, train_args = _split_at_double_dash(argv)
        args = build_parser().parse_args(head)
        args.train_args = train_args
    else:
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
    except Exception as exc:  # last resort: the environment's errors (files, disk, formats) without a traceback
        message = describe_environment_error(exc)
        if message is None:
            raise  # a bug: its traceback and exit status 1
        print(f"visionlaunch: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
