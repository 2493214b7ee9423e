"""The `visionlaunch` command and its subcommands. `train.py` at the repository root calls `main(["train", ...])`, so
`accelerate launch train.py ...` and `visionlaunch train ...` are the same program.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visionlaunch.config import load_config  # pydantic and YAML, no torch: config errors come first
from visionlaunch.config_reference import describe_keys, markdown_reference
from visionlaunch.errors import EXIT_BAD_INPUT, VisionlaunchError, describe_environment_error, report
from visionlaunch.launch.process_end import end_process, lost_reader_exit, stdout_reader_gone
from visionlaunch.slurm.render import SlurmOptions, add_slurm_arguments
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


WEIGHTS = ("last", "best", "ema_last", "ema_best")  # the files in runs/<name>/weights/
# The options of `prepare ffcv` that set a config key.
FFCV_OPTIONS = {"dataset": "data.name", "encoding": "data.ffcv_encoding", "jpeg_quality": "data.ffcv_jpeg_quality",
                "out": "data.ffcv_dir"}


def _add_run_args(p: argparse.ArgumentParser, **weights_help) -> None:
    p.add_argument("run_dir", type=Path)
    p.add_argument("--weights", choices=WEIGHTS, default="last", **weights_help)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML preset, e.g. configs/mnist_cnn.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.05")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionlaunch", description="Train image classifiers from one config.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kwargs)
        p.set_defaults(func=func)
        return p

    p = command("train", _train, help="train a model; writes runs/<name>/")
    _add_config_args(p)
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print the model's layer table (it is always in runs/<name>/summary.txt)")

    p = command("evaluate", _evaluate, help="reload a run's saved weights and measure test accuracy again")
    _add_run_args(p, help="ema_*: the EMA weights of a run trained with train.ema_decay")
    p.add_argument("--data", nargs="+", metavar="key=value",
                   help="measure on other data: the run's data section with these keys changed, e.g. --data "
                        "name=imagefolder path=/data/digits (classes must match by name)")
    p.add_argument("--split", choices=("train", "val", "test"), help="the split to measure (default test)")

    p = command("predict", _predict, help="classify images, folders or archives (.zip/.tar) with a run's weights")
    _add_run_args(p)
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files, folders, .zip/.tar archives")
    p.add_argument("--top-k", type=int, default=3, help="classes per image, most probable first (default 3)")
    p.add_argument("--out", type=Path, help="write the table as CSV here instead of printing it")
    p.add_argument("--batch-size", type=int, help="images per batch; default the run's train.eval_batch_size")

    p = command("export", _export,
                help="write a run's model as TorchScript, ONNX or safetensors, with a JSON beside it")
    _add_run_args(p)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx", "safetensors"))
    p.add_argument("--out", type=Path, help="the model file; default <run>/export/<weights>.<format suffix>")

    p = command("figures", _figures, help="redraw a run's figures from its folder and weights")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser(
        "prepare", help="decode the config's dataset once into the tensor cache; `prepare ffcv` also writes .beton files",
        description="prepare --config X [key=value ...]: decode the dataset into the tensor cache.\n"
                    "prepare ffcv (--config X | --dataset NAME) [key=value ...]: also write its train/val/test .beton "
                    "files (data.ffcv_dir, default <cache>/ffcv).", formatter_class=argparse.RawDescriptionHelpFormatter)
    # The options stand before or after `ffcv`; their defaults live here, so that a form's parser never resets
    # them. The ffcv options are accepted (unlisted) without `ffcv` only to say where they belong.
    _add_prepare_args(p, top=True)
    p.set_defaults(func=_prepare_cache, overrides=[])
    forms = p.add_subparsers(dest="form", metavar="[ffcv]", action=_DefaultSubcommand)
    _add_prepare_args(forms.add_parser("cache", add_help=False), ffcv=False)  # `prepare --config X key=value`
    q = forms.add_parser("ffcv", help="also write the dataset's train/val/test .beton files")
    _add_prepare_args(q)
    q.set_defaults(func=_prepare_ffcv)

    p = command("show-config", _show_config, help="print the resolved config (or every key with --keys)")
    _add_config_args(p, required=False)
    p.add_argument("--keys", action="store_true", help="list every key with its default and meaning")
    p.add_argument("--markdown", action="store_true", help="with --keys: as the Markdown page docs/configuration.md")

    p = command("models", _models, help="list the models and their arguments")
    p.add_argument("--timm", nargs="?", const="", metavar="PATTERN",
                   help="list timm's architectures (use as model.name=timm/<architecture>), those matching PATTERN")

    p = command("report", _report, help="write a run's self-contained report.html (and report.pdf with --pdf)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--pdf", action="store_true", help="also print report.pdf with headless Chromium")

    p = command("compare", _compare, help="compare runs in one self-contained HTML page (the first is the baseline)")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir")
    p.add_argument("--out", type=Path, help="output file; default <common parent of the runs>/compare.html")
    p.add_argument("--pdf", action="store_true", help="also print the page to PDF with headless Chromium")

    p = command("ablate", _ablate,
                help="run a config over a grid or list of overrides and seeds; write a table and a figure")
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
    add_slurm_arguments(p, job_options=False)

    p = command("submit", _submit, help="run training as a SLURM batch job: submit [options] -- <train arguments>",
                description="Render a batch script into runs/<name>/slurm/job.sh and sbatch it. Everything after "
                            "`--` is given to `visionlaunch train` unchanged.")
    add_slurm_arguments(p)

    p = command("jobs", _jobs, help="the SLURM jobs submitted from a runs folder, and their run folders")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (output.dir); default runs")
    return parser


class _DefaultSubcommand(argparse._SubParsersAction):
    """Subcommands with a default: words that name none of them go to the first one (`prepare key=value`)."""

    class _AnyWord(dict):
        def __contains__(self, word) -> bool:
            return True

    @property
    def choices(self):  # argparse checks the first word against these before __call__: let every word pass
        return self._AnyWord(self._name_parser_map)

    @choices.setter
    def choices(self, value) -> None:
        pass

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] not in self._name_parser_map:
            values = [next(iter(self._name_parser_map)), *values]
        super().__call__(parser, namespace, values, option_string)


def _add_prepare_args(p: argparse.ArgumentParser, top: bool = False, ffcv: bool = True) -> None:
    def add(*flags, **kwargs):
        if top and flags[0] != "--config":
            kwargs["help"] = argparse.SUPPRESS
        elif not top:
            kwargs["default"] = argparse.SUPPRESS  # a form's parser must not reset what stood before its name
        p.add_argument(*flags, **kwargs)

    add("--config", "-c", help="YAML preset, e.g. configs/mnist_cnn.yaml")
    if not top:
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.root=/data")
    if not ffcv:
        return
    add("--dataset", choices=("mnist", "mnist_sample", "cifar10", "cifar100", "imagefolder"),
        help="the dataset (instead of or on top of --config); imagefolder needs data.path=...")
    add("--encoding", choices=("raw", "jpeg"), help="store images raw (default) or as JPEG (RGB)")
    add("--jpeg-quality", type=int, help="JPEG quality 1..100 (default 90)")
    add("--out", help="folder for the .beton files (data.ffcv_dir)")
    add("--overwrite", action="store_true", help="write the files again even if they exist")


# ---------------------------------------------------------------------------------------------------- commands


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = load_config(args.config, args.overrides)  # before torch is imported: config errors come at once
    from visionlaunch.reports.artefacts import after_training
    from visionlaunch.trainers.trainer import training
    with training(cfg, preset=Path(args.config).stem if args.config else None, argv=argv,
                  verbose=args.verbose) as trainer:
        after_training(trainer, trainer.fit())  # figures and report, under the trainer's signal handlers
    return 0


def _evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.launch.evaluate import evaluate_on_data, evaluate_run

    if args.data or args.split:
        return evaluate_on_data(args.run_dir, args.weights, args.data or [], args.split or "test")
    return evaluate_run(args.run_dir, args.weights)


def _predict(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.launch.predict import predict_command

    return predict_command(args.run_dir, args.paths, which=args.weights, top_k=args.top_k, out=args.out,
                           batch_size=args.batch_size)


def _export(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.launch.export import export_run

    return _print_paths(export_run(args.run_dir, args.format, args.weights, args.out))


def _figures(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.launch.evaluate import redraw_figures

    return _print_paths(redraw_figures(args.run_dir))


def _print_paths(paths) -> int:
    for path in paths:
        print(path)
    return 0


def _prepare_cache(args: argparse.Namespace, argv: list[str]) -> int:
    used = ["--" + dest.replace("_", "-") for dest in FFCV_OPTIONS if getattr(args, dest) is not None]
    if args.overwrite:
        used.append("--overwrite")
    if used or not args.config:
        raise VisionlaunchError(
            f"`visionlaunch prepare` needs --config{' and takes ' + ', '.join(used) + ' only in its ffcv form' if used else ''}"
            ": `visionlaunch prepare --config configs/X.yaml` fills the tensor cache, `visionlaunch prepare ffcv "
            "--dataset mnist` (or --config) also writes the .beton files.")
    cfg = load_config(args.config, args.overrides)
    from visionlaunch.trainers.data import prepare_data
    print(prepare_data(cfg.data).note)
    return 0


def _prepare_ffcv(args: argparse.Namespace, argv: list[str]) -> int:
    if not (args.config or args.dataset):
        raise VisionlaunchError("`visionlaunch prepare ffcv` needs --dataset NAME or --config FILE, e.g. "
                                "`visionlaunch prepare ffcv --dataset cifar10 data.root=/data`.")
    flags = [f"{key}={getattr(args, dest)}" for dest, key in FFCV_OPTIONS.items() if getattr(args, dest) is not None]
    cfg = load_config(args.config, [*flags, *args.overrides])
    from visionlaunch.launch.prepare_ffcv import prepare_ffcv

    files = prepare_ffcv(cfg.data, overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
    return _print_paths(files.values())


def _show_config(args: argparse.Namespace, argv: list[str]) -> int:
    if args.markdown and not args.keys:
        raise VisionlaunchError("--markdown formats the list of keys: use show-config --keys --markdown")
    if args.keys:
        print(markdown_reference() if args.markdown else describe_keys(), end="" if args.markdown else "\n")
        return 0
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def _models(args: argparse.Namespace, argv: list[str]) -> int:
    if args.timm is not None:
        from visionlaunch.models.timm_models import PREFIX, list_architectures
        names = list_architectures(args.timm)
        print("\n".join(PREFIX + n for n in names) or f"no timm architecture matches {args.timm!r}")
        return 0
    from visionlaunch.models import model_args, model_names
    for name in model_names():
        spec = ", ".join(f"{k}={default!r}" for k, (_, default) in model_args(name).items())
        print(f"{name}: {spec}")
    print("timm/<architecture>: drop_rate=0.0, drop_path_rate=0.0 (any timm architecture; "
          "`visionlaunch models --timm [PATTERN]` lists them)")
    return 0


def _report(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.reports.html import write_report

    out = write_report(args.run_dir, pdf=args.pdf)
    return _print_paths([out, out.with_suffix(".pdf")] if args.pdf else [out])


def _compare(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.reports.compare import write_comparison

    out = write_comparison(args.run_dirs, args.out, pdf=args.pdf)
    return _print_paths([out, out.with_suffix(".pdf")] if args.pdf else [out])


def _ablate(args: argparse.Namespace, argv: list[str]) -> int:
    """0 when every selected run finished, 1 when some failed (the others ran and the table says which), 2 for
    bad input."""
    from visionlaunch.ablation import dry_run_text, is_complete, load_ablation, run_ablation, write_ablation_results

    if args.slurm and args.table_only:
        raise VisionlaunchError("--table-only runs nothing: drop --slurm (the table is built here, now).")
    ablation = load_ablation(args.file, out=args.out, extra_overrides=args.overrides)
    if args.slurm:
        from visionlaunch.slurm.array import submit_ablation
        submit_ablation(ablation, SlurmOptions.from_args(args), python=args.python, dry_run=args.dry_run,
                        rerun=args.rerun)
        return 0
    selected = ablation.select(args.only)
    if args.dry_run:
        print(dry_run_text(ablation, selected))
        return 0
    if args.table_only:
        paths = write_ablation_results(ablation)
    else:
        paths = run_ablation(ablation, rerun=args.rerun, only=args.only).outputs
    print(paths[0].read_text())  # table.md
    _print_paths(paths)
    return 0 if all(is_complete(v) for v in selected) else 1


def _submit(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.slurm.submit import plan_job, resubmit, submit

    if args.resume is not None:
        if args.train_args:
            raise VisionlaunchError(
                "--resume submits the run's own job again and takes no training arguments: drop the arguments "
                "after `--` (or drop --resume to submit a new run).")
        resubmit(args.resume)
        return 0
    opts = SlurmOptions.from_args(args)
    submit(opts, plan_job(opts, args.train_args, python=args.python, script=args.script), dry_run=args.dry_run)
    return 0


def _jobs(args: argparse.Namespace, argv: list[str]) -> int:
    from visionlaunch.slurm.jobs import format_statuses, job_statuses

    print(format_statuses(*job_statuses(args.runs)), end="")
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Everything after a `--` is overrides, wherever the options stand (argparse alone rejects
    `ablate FILE --dry-run -- key=value`: it has already filled the positionals when it meets `--`), except for
    `submit`, which passes it on to `visionlaunch train` untouched."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    if args.command == "submit":
        args.train_args = argv[cut + 1:]
    elif cut < len(argv):
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no key=value overrides")
        args.overrides = [*(args.overrides or []), *argv[cut + 1:]]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(build_parser(), argv)
    try:
        code = args.func(args, ["visionlaunch", *argv])
        sys.stdout.flush()  # here, not at exit: a closed output pipe is then one more error handled below
        return code
    except VisionlaunchError as exc:
        return report(exc)
    except Preempted as exc:  # a checkpoint is written: a scheduler may requeue on this exit status
        print(f"visionlaunch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("visionlaunch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        return lost_reader_exit()
    except Exception as exc:  # last resort: the environment's errors (files, disk, formats) without a traceback
        message = describe_environment_error(exc)
        if message is None:
            raise  # a bug: its traceback and exit status 1
        print(f"visionlaunch: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def console_main() -> None:  # pragma: no cover - thin wrapper for the console script
    end_process(main())
