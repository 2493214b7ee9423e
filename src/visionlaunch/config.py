"""Typed configuration for a whole run: YAML preset + dotted command-line overrides, validated up front.

A run is described by one `RunConfig`. Presets live in `configs/*.yaml`; any field can be overridden on the
command line as `section.key=value` (values are parsed as YAML, so `3`, `0.1`, `true`, `[64,128]` work).
Every problem (unknown key, wrong type, out-of-range value) is reported with the dotted key and the valid keys
of that section, before any data is read or any file is written.
"""

from __future__ import annotations

import getpass
import os
import signal
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from visionlaunch.config_section import ConfigSection as _Section
from visionlaunch.errors import VisionlaunchError
from visionlaunch.optim_config import OptimConfig, ScheduleConfig  # the optim: and schedule: sections
from visionlaunch.resolution_config import ResolutionConfig  # the resolution: section (progressive resizing)
from visionlaunch.validation_messages import format_validation_error
from visionlaunch.yamlfiles import YamlRefused, load_yaml, read_yaml

# numpy seeds its generator with an unsigned 32-bit number: every seed must fit.
SEED_MAX = 2**32 - 1


# Full precision has one name, fp32; `no` (the name Accelerate uses) means the same, and so does YAML's reading of
# an unquoted no or false (the boolean False), so that `train.precision=no` and `precision: no` work as written.
FULL_PRECISION_ALIASES = ("no", "false", "fp32")


def canonical_precision(value: Any) -> Any:
    """train.precision in its one spelling: fp32 for every name of full precision; anything else unchanged."""
    if value is False or isinstance(value, str) and value.strip().lower() in FULL_PRECISION_ALIASES:
        return "fp32"
    return value


class DataConfig(_Section):
    name: Literal["mnist", "mnist_sample", "cifar10", "cifar100", "imagefolder"] = Field(
        "mnist", description="the dataset; mnist_sample: embedded in the package; imagefolder: your images (data.path)")
    root: str | None = Field(None, description="data root; default $VISIONLAUNCH_DATA, else ./data")
    path: str | None = Field(None, description="imagefolder only: a folder or .tar/.tar.gz, relative to root")
    download: bool = Field(False, description="download MNIST/CIFAR with torchvision when absent (needs network)")
    verify: bool = Field(True, description="check the official md5 sums of the canonical files")
    fallback: Literal["none", "sample"] = Field(
        "none", description="mnist only: 'sample' trains on the embedded MNIST sample when the files are absent")
    cache_dir: str | None = Field(None, description="decoded-tensor cache; default $VISIONLAUNCH_CACHE, else ~/.cache/visionlaunch")
    val_size: int | float = Field(5000, ge=0, description="held out from train: a count (>=1) or a fraction (<1); 0 = none")
    split_seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the validation split and of the subsets")
    train_subset: int | None = Field(None, ge=1, description="use only N training images (quick runs): a seeded "
                                     "(data.split_seed), class-stratified sample, taken before the val split")
    test_subset: int | None = Field(None, ge=1, description="use only N test images (quick runs): a seeded "
                                    "(data.split_seed), class-stratified sample")
    loader: Literal["tensor", "torch", "ffcv"] = Field(
        "tensor", description="tensor: whole dataset resident on the device; torch: DataLoader baseline; ffcv: "
                              "FFCV .beton files (pip install visionlaunch[ffcv])")
    residency: Literal["auto", "memory", "disk"] = Field(
        "auto", description="where the training split lives: memory (decoded once), disk (out of core: each image "
                            "decoded when used, by the torch loader, or read from its .beton file by ffcv), or auto: memory "
                            "when it fits (disk for an ImageFolder with data.loader=ffcv)")
    num_workers: int = Field(2, ge=0, description="torch loader: worker processes; ffcv: threads (and writer processes)")
    ffcv_dir: str | None = Field(None, description="ffcv: folder of the .beton files; default <data cache>/ffcv")
    ffcv_encoding: Literal["raw", "jpeg"] = Field("raw", description="ffcv: how images are stored (jpeg: RGB only, lossy)")
    ffcv_jpeg_quality: int = Field(90, ge=1, le=100, description="ffcv: JPEG quality when ffcv_encoding=jpeg")
    ffcv_max_resolution: int | None = Field(
        None, ge=8, description="ffcv with image_size, training split read out of core: photos stored at their own "
                                "aspect ratio, the longer side at most this many px (null: 4/3 x image_size / 0.875)")
    half_inputs: bool = Field(False, description="normalised batches in the half type the run computes in (bf16/fp16; "
                                                 "with train.precision=auto, where it picks one) instead of float32")
    class_names: str | None = Field(None, description="imagefolder: a text file of '<class folder> <name>' lines "
                                    "(e.g. ImageNet's LOC_synset_mapping.txt) whose names figures and reports show")
    image_size: int | None = Field(None, ge=8, description="imagefolder: photos of any size become image_size x "
                                   "image_size RGB (train: random-resized crop; evaluation: resize, centre crop); "
                                   "null = every image must have one size")
    eval_image_size: int | None = Field(None, ge=8, description="image_size: the side (px) evaluation, `evaluate` and "
                                        "`predict` see (FFCV's validation.resolution, e.g. 256 after training at "
                                        "160-192); null = image_size")
    eval_crop_ratio: float = Field(0.875, gt=0, le=1, description="image_size: evaluation's centre crop, a share of "
                                   "the stored square (image_size / 0.875 px), resized to eval_image_size; 0.875 = "
                                   "224/256, FFCV's DEFAULT_CROP_RATIO (with eval_image_size = image_size: exactly "
                                   "the centre image_size square)")
    max_upscale: float = Field(4.0, ge=1, description="image_size: refuse images whose shorter side would be "
                                                      "enlarged more than this many times")


class AugmentConfig(_Section):
    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this many pixels")
    flip: bool = Field(False, description="random horizontal flip (off for digits)")
    cutout: int = Field(0, ge=0, description="side of one random zeroed square; 0 = off")
    mixup_alpha: float = Field(0.0, ge=0, description="mixup of training batches with lam ~ Beta(a, a), soft "
                                                      "targets; 0 = off (typical 0.2)")
    cutmix_alpha: float = Field(0.0, ge=0, description="cutmix of training batches with lam ~ Beta(a, a); 0 = off "
                                                       "(typical 1.0); with mixup too, one of them per batch")
    crop_scale: tuple[float, float] = Field((0.25, 1.0), description="data.image_size: the random-resized crop's "
                                            "share of the image area, drawn from [min, max]")

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError("crop_scale must be [min, max] with 0 < min <= max <= 1, e.g. [0.25, 1.0]")
        return scale


class ModelConfig(_Section):
    name: str = Field("cnn", description="a model of `visionlaunch models` (fcn, cnn, resnet18, ...) or timm/<arch>")
    args: dict[str, Any] = Field(default_factory=dict, description="builder arguments; `visionlaunch models` lists them")
    weights: str | None = Field(None, description="start from this local weights file (.pth/.pt/.safetensors state_dict; "
                                              "timm's own files too) instead of random weights; nothing is downloaded")


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, description="passes over the training split")
    batch_size: int = Field(128, ge=1, description="GLOBAL batch size of one optimizer step, split across processes "
                                                   "(and grad_accum micro-batches); optim.lr is meant for it")
    eval_batch_size: int = Field(1000, ge=1, description="global batch of evaluation, figures, evaluate and predict")
    seed: int = Field(0, ge=0, le=SEED_MAX, description=f"0..{SEED_MAX}")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="number format of training and evaluation. auto: bf16 where the device computes it "
                            "natively (a CPU with AVX-512 BF16 or AMX, a GPU with bf16: compute capability 8.0+), "
                            "else fp32 on a CPU and fp16 with loss scaling on a GPU; the choice and its reason are "
                            "printed and recorded in run.yaml. fp32: full precision (no, false and \"no\" mean the "
                            "same). bf16/fp16: autocast in that type (fp16 needs a GPU; bf16 on a CPU without native "
                            "bf16 is emulated, usually slower than fp32)")
    device: Literal["auto", "cpu"] = Field("auto", description="auto: GPU when there is one; cpu: force CPU")
    log_every: int = Field(50, ge=1, description="steps between step records in metrics.jsonl")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cut epochs short (smoke tests); optimizer steps")
    progress: bool = Field(True, description="tqdm progress bars on the main process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step; batch_size stays the global batch "
                                                "of one optimizer step, so it must divide by processes x grad_accum")
    channels_last: bool = Field(False, description="channels_last memory format for model and batches (GPU convnets)")
    compile: bool = Field(False, description="torch.compile the model (GPU; on CPU usually slower)")
    tta_flip: bool = Field(False, description="evaluate (val/test, `visionlaunch evaluate`, figures) on each image and "
                                              "its mirror image, averaging the logits; for flip-invariant data")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the weights per optimizer step, evaluated and saved "
                                                         "beside the raw weights; 0 = off (typical: 0.999)")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between checkpoints; 0 = only at epoch ends")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    resume: str = Field("none", description="auto: continue runs/<output.name> from its newest complete checkpoint "
                                            "(or start it); a checkpoint or run folder path; none")
    preempt_signals: list[str] = Field(["SIGTERM", "SIGUSR2", "SIGINT"], description="signals that make the run "
                                       "finish the step, checkpoint and exit with status 75 (SIGINT: Ctrl-C); "
                                       "[] = off")
    dist_timeout_s: int = Field(600, ge=10, description="seconds a collective may wait for the other processes: "
                                "how long a hung process holds up the others; phases where only the main process "
                                "works (filling the data cache, writing .beton files, figures) must fit in it")
    early_stop_patience: int = Field(0, ge=0, description="stop when the validation metric has not improved for this "
                                                          "many epochs; 0 = off (needs data.val_size > 0)")
    early_stop_metric: Literal["val_acc", "val_loss"] = Field(
        "val_acc", description="what early stopping watches: val_acc (higher is better) or val_loss (lower)")
    deterministic: bool = Field(False, description="deterministic algorithms only (torch.use_deterministic_algorithms, "
                                                   "cuDNN deterministic, no cuDNN benchmark); slower on GPUs")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_aliases(cls, value: Any) -> Any:
        return canonical_precision(value)

    @field_validator("preempt_signals")
    @classmethod
    def _known_signals(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name.startswith("SIG") or not isinstance(getattr(signal, name, None), signal.Signals) \
                    or name in ("SIGKILL", "SIGSTOP"):
                raise ValueError(f"{name!r} is not a signal that can be caught; use names such as SIGTERM, SIGUSR1, "
                                 "SIGUSR2, SIGINT")
        return names


class OutputConfig(_Section):
    dir: str = Field("runs", description="the folder that holds the run folders")
    name: str | None = Field(None, description="run folder name; default <preset>-<date>-<time>")
    overwrite: bool = Field(False, description="replace an existing run folder of the same name (only a folder that "
                                               "holds a run: run.yaml or metrics.jsonl; an empty one)")

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: str | None) -> str | None:
        # The name is joined to output.dir and, with overwrite, its folder is emptied: `.`, `..`, `a/b` or an
        # absolute path would point that at other runs or at the folders above them.
        if not name:  # `output.name=` on the command line: the default name
            return None
        bad = name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip() \
            or len(name.encode()) > 255  # NAME_MAX of Linux and macOS file systems
        if bad:
            raise ValueError(f"a run name is one folder name inside output.dir, not {name!r} (no '/', no '.' or "
                             "'..', no leading or trailing spaces, at most 255 bytes); put the parent folder in "
                             "output.dir, e.g. output.dir=/scratch/runs output.name=exp1")
        return name


class ReportConfig(_Section):
    ident: str | None = Field(None, description="identifier stamped on every figure; default the user name")
    figures: bool = Field(True, description="draw the figures after training (report.html is written either way)")
    tsne_layer: str = Field("penultimate", description="'penultimate' (input of the classifier) or a module name")
    tsne_samples: int = Field(1000, ge=10, description="seeded test subset for t-SNE")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed for the t-SNE subset and the prediction grid")


TRACKERS = ("none", "wandb", "tensorboard", "csv")


class TrackerConfig(_Section):
    name: str | list[str] = Field("none", description="wandb (Weights & Biases), tensorboard (runs/<name>/tensorboard/"
                                                      "), csv (runs/<name>/metrics.csv), a list of several, or none; "
                                                      "metrics.jsonl is written either way")
    project: str = Field("visionlaunch", description="W&B project")
    entity: str | None = Field(None, description="W&B team or user; default your default entity")
    group: str | None = Field(None, description="W&B group, e.g. one per ablation")
    tags: list[str] = Field(default_factory=list, description="W&B tags")
    run_name: str | None = Field(None, description="W&B run name; default the run folder name")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="default $WANDB_MODE, else online (needs an API key); offline needs no network")
    dir: str | None = Field(None, description="where W&B writes its files; default $WANDB_DIR, else the run folder")

    @field_validator("name")
    @classmethod
    def _known_trackers(cls, name: str | list[str]) -> str | list[str]:
        unknown = [n for n in ([name] if isinstance(name, str) else name) if n not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {', '.join(map(repr, unknown))}; valid: {', '.join(TRACKERS)}, or a "
                             "list such as [tensorboard, csv]")
        return name

    @property
    def names(self) -> list[str]:
        """The trackers in use, without 'none' and duplicates: `name` may be one name or a list."""
        names = [self.name] if isinstance(self.name, str) else self.name
        return [n for n in dict.fromkeys(names) if n != "none"]


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        if self.data.name == "imagefolder" and not self.data.path:
            raise ValueError("data.path is required for data.name=imagefolder (a folder or .tar/.tar.gz of "
                             "train/<class>/<image> and test/<class>/<image>)")
        if self.data.fallback == "sample" and self.data.name != "mnist":
            raise ValueError("data.fallback=sample only applies to data.name=mnist")
        if self.data.half_inputs and self.train.precision == "fp32":
            raise ValueError("data.half_inputs=true needs train.precision=bf16, fp16 or auto (the model computes in "
                             "that type under autocast; with auto, only when it picks one); with fp32 keep float32 "
                             "inputs: data.half_inputs=false")
        if self.data.class_names and self.data.name != "imagefolder":
            raise ValueError("data.class_names applies to data.name=imagefolder: remove it")
        if self.data.image_size is not None and self.data.name != "imagefolder":
            raise ValueError("data.image_size applies to data.name=imagefolder (photos of mixed sizes); the other "
                             "datasets have one size already: remove data.image_size")
        if self.data.image_size is None and (self.resolution.enabled or self.data.eval_image_size is not None
                                             or self.data.eval_crop_ratio != 0.875):
            raise ValueError("resolution.start/end, data.eval_image_size and data.eval_crop_ratio resize the crops of "
                             "data.image_size: set data.image_size (data.name=imagefolder), or remove them")
        if self.data.image_size is not None and self.augment.crop_padding:
            raise ValueError("augment.crop_padding does not combine with data.image_size, whose random-resized crop "
                             "already moves and scales the view: set augment.crop_padding=0")
        if self.train.early_stop_patience and not self.data.val_size:
            raise ValueError("train.early_stop_patience watches the validation split: set data.val_size > 0 (a count "
                             "or a fraction held out of train), or train.early_stop_patience=0")
        if self.schedule.name == "triangular" and self.schedule.peak_epoch >= self.train.epochs:
            raise ValueError(f"schedule.peak_epoch ({self.schedule.peak_epoch:g}) must come before the end of "
                             f"training (train.epochs={self.train.epochs}): the triangular schedule rises until it, "
                             "then falls to 0 at the end. Lower schedule.peak_epoch or raise train.epochs")
        if self.data.val_size >= 1 and self.data.val_size != int(self.data.val_size):
            raise ValueError("data.val_size must be a whole count (>= 1) or a fraction below 1")
        # Last, for an otherwise valid config: the builders' signatures need torch, imported only now.
        from visionlaunch.models import validate_model_args
        try:
            validate_model_args(self.model.name, self.model.args)
        except VisionlaunchError as exc:
            raise ValueError(str(exc)) from None
        return self

    def resolved_ident(self) -> str:
        if self.report.ident:
            return self.report.ident
        try:
            return getpass.getuser()
        except Exception:  # no passwd entry in some containers
            return os.environ.get("USER", "visionlaunch")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("="):
        raise VisionlaunchError(
            f"cannot read the override {text!r}: overrides are written section.key=value, for example "
            "optim.lr=0.05 or train.epochs=3.")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw != "" else ""
    except YamlRefused as exc:
        raise VisionlaunchError(f"the override {text[:200]!r} {exc}.") from None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the literal string and let validation judge it
    return key.strip().split("."), value


def apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise VisionlaunchError(
                f"cannot set '{'.'.join(keys)}': '{'.'.join(keys[:i + 1])}' is a value, not a section.")
        node = child
    node[keys[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- YAML file <- dotted overrides, validated as a whole."""
    tree = load_yaml(path) if path is not None else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    source = f"{path}" + (f" + overrides {' '.join(overrides)}" if overrides else "") if path else "overrides"
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise VisionlaunchError(format_validation_error(err, source, RunConfig)) from None


def flatten(tree: Any, prefix: str = "", depth: int | None = None) -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}, `depth` levels deep at most; lists and empty mappings stay whole."""
    if not isinstance(tree, dict) or (not tree and prefix) or depth == 0:
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key), None if depth is None else depth - 1))
    return flat
