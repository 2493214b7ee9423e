"""An ablation file and the plan it describes: a base config, fixed overrides, a grid or a list of variants, and
seeds, expanded into one `Variant` per (setting, seed), each validated as a complete run config before anything
runs.

    name: mnist_label_smoothing        # optional: the file's stem
    base: ../mnist_cnn.yaml            # relative to this file, else to the working directory (the repository)
    overrides: [train.epochs=3]        # every variant: a list of key=value or a mapping {key: value}
    grid: {optim.label_smoothing: [0.0, 0.1], augment.cutout: [0, 8]}     # cartesian product ...
    variants:                          # ... or named override sets (one of the two)
      - {name: cosine, label: cosine schedule, overrides: [schedule.name=cosine]}
    seeds: [0, 1, 2]                   # train.seed of each run; default [0]
    output_dir: runs/ablations         # optional; the runs go to <output_dir>/<name>/<variant>/

A `Variant` carries the exact argument list of `visionlaunch train`, so each one can run in its own process
here or as a separate cluster job; results are read back from the run folders alone (results.py).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visionlaunch.config import RunConfig, load_config, parse_override
from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import enclosing_run_folder
from visionlaunch.yamlfiles import load_yaml

FILE_KEYS = ("name", "description", "base", "overrides", "grid", "variants", "seeds", "output_dir")
VARIANT_KEYS = ("name", "label", "overrides")
DEFAULT_OUTPUT_DIR = "runs/ablations"
PLAN_FILE = "ablation.yaml"
# Keys the ablation itself sets on every run: where it is written and how a rerun continues it.
MANAGED_KEYS = ("output.dir", "output.name", "output.overwrite", "train.resume")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Variant:
    """One run of the ablation: a setting (grid point or named variant) with one seed."""

    name: str                  # run folder name, unique and filesystem-safe: <setting>-seed<k>
    label: str                 # human text for the table, shared by the seeds of one setting
    seed: int
    overrides: list[str]       # fixed + command-line extras + the setting's own + train.seed
    setting: str               # the setting's name (the run folder name without the seed)
    values: dict[str, Any]     # the varied keys and this setting's values (the CSV's columns)
    config_path: Path          # the base config
    out_dir: Path              # the ablation folder: the run folder is out_dir / name
    config: RunConfig | None = field(default=None, repr=False)  # resolved and validated by load_ablation

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.name

    def train_args(self, restart: bool = False) -> list[str]:
        """The arguments of `visionlaunch train` for this run: rerun, they continue an interrupted run from its
        newest checkpoint; with `restart` they replace its folder. Progress bars are off (logs, not terminals)."""
        tail = ["train.resume=none", "output.overwrite=true"] if restart else ["train.resume=auto"]
        return ["--config", str(self.config_path), "train.progress=false", *self.overrides,
                f"output.dir={self.out_dir}", f"output.name={self.name}", *tail]


@dataclass
class Ablation:
    name: str
    source: Path               # the ablation file
    description: str
    base: Path
    out_dir: Path
    fixed: list[str]           # the file's fixed overrides
    extra: list[str]           # overrides given on the command line
    varied: list[str]          # the keys the grid varies (variants: every key any variant sets)
    seeds: list[int]
    variants: list[Variant]

    def settings(self) -> list[tuple[str, str, list[Variant]]]:
        """(setting, label, its variants in seed order), in plan order."""
        groups: dict[str, list[Variant]] = {}
        for v in self.variants:
            groups.setdefault(v.setting, []).append(v)
        return [(setting, vs[0].label, vs) for setting, vs in groups.items()]

    def select(self, names: list[str] | None) -> list[Variant]:
        """The runs named (by run name, e.g. cosine-seed1, or setting name, e.g. cosine: all its seeds), in plan
        order; all of them for None."""
        if names is None:
            return list(self.variants)
        settings = {v.setting for v in self.variants}
        unknown = [n for n in names if n not in settings and n not in {v.name for v in self.variants}]
        if unknown:
            raise VisionlaunchError(
                f"ablation {self.name} has no run or setting {', '.join(map(repr, unknown))}. Its settings: "
                f"{', '.join(sorted(settings))}; a run is <setting>-seed<k> (`--dry-run` lists them).")
        return [v for v in self.variants if v.name in names or v.setting in names]

    def plan(self) -> dict:
        """The resolved plan as plain data: what `ablation.yaml` in the ablation folder records."""
        return {
            "name": self.name, "description": self.description, "source": str(self.source),
            "base": str(self.base), "out_dir": str(self.out_dir), "overrides": self.fixed,
            "extra_overrides": self.extra, "varied": self.varied, "seeds": self.seeds,
            "variants": [{"name": v.name, "label": v.label, "setting": v.setting, "seed": v.seed,
                          "values": v.values, "train_args": v.train_args()} for v in self.variants],
        }


# ---------------------------------------------------------------------------------------------------- loading


def load_ablation(path: str | os.PathLike, *, out: str | os.PathLike | None = None,
                  extra_overrides: list[str] | tuple[str, ...] = ()) -> Ablation:
    """Read and expand an ablation file; every variant's config is validated here, so a bad file fails before
    anything runs. `out` replaces the ablation folder; `extra_overrides` apply to every variant (after the
    file's fixed overrides, so they win over them) but may not touch a key the ablation varies."""
    source = Path(path)
    where = f"ablation file {source}"
    tree = load_yaml(source, what="ablation file", example="configs/ablations/mnist_schedule.yaml",
                     holds="a mapping with base:, overrides:, grid: or variants:, and seeds:")
    _check_keys(tree, FILE_KEYS, where, "top-level key")
    name = tree.get("name", source.stem)
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise VisionlaunchError(f"{where}: name {name!r} cannot be a folder name. Use letters, digits, '.', '_' and "
                                "'-' only, e.g. name: mnist_label_smoothing.")
    base = _resolve_base(tree.get("base"), source, where)
    fixed = _overrides(tree.get("overrides", []), f"{where}, overrides")
    extra = _overrides(list(extra_overrides), "the command-line overrides")
    seeds = _seeds(tree.get("seeds", [0]), where)
    settings, varied = _settings(tree, where)
    out_dir = Path(out) if out is not None else Path(_string(tree.get("output_dir", DEFAULT_OUTPUT_DIR),
                                                                 f"{where}, output_dir")) / name
    inside = enclosing_run_folder(out_dir / "x")  # its runs, tables and logs must not land among a run's files
    if inside is not None:
        raise VisionlaunchError(
            f"{where}: the ablation folder {out_dir} lies inside the run folder {inside}. Choose a folder outside "
            f"any run with output_dir: in the file or `visionlaunch ablate --out DIR`, e.g. {inside.parent / name}.")

    variants: list[Variant] = []
    for setting, label, own, values in settings:
        _check_overrides([("the fixed overrides", fixed), ("the command-line overrides", extra),
                          (f"variant {setting!r}", own)], where, seeds_given="seeds" in tree)
        for seed in seeds:
            overrides = [*fixed, *extra, *own, f"train.seed={seed}"]
            variant = Variant(name=f"{setting}-seed{seed}", label=label, seed=seed, overrides=overrides,
                              setting=setting, values=values, config_path=base, out_dir=out_dir)
            variant.config = _validated(variant, where)
            variants.append(variant)
    _check_folder_names(name, variants, where)
    _check_distinct_settings(variants, where)
    description = tree.get("description", "")
    return Ablation(name=name, source=source, description=description if isinstance(description, str) else "",
                    base=base, out_dir=out_dir, fixed=fixed, extra=extra, varied=varied, seeds=seeds,
                    variants=variants)


def _check_keys(tree: dict, valid: tuple[str, ...], where: str, what: str) -> None:
    unknown = [str(k) for k in tree if k not in valid]
    if unknown:
        raise VisionlaunchError(f"{where}: unknown {what} {', '.join(map(repr, unknown))}. Valid keys: "
                                f"{', '.join(valid)}.")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise VisionlaunchError(f"{where} must be a non-empty string, got {value!r}.")
    return value


def _resolve_base(value: Any, source: Path, where: str) -> Path:
    """The base config: beside the ablation file first, then relative to the working directory."""
    if value is None:
        raise VisionlaunchError(f"{where} has no base config. Add e.g. `base: configs/mnist_cnn.yaml` (relative "
                                "to the ablation file or to the repository).")
    text = _string(value, f"{where}, base")
    candidates = [Path(text)] if Path(text).is_absolute() else [source.parent / text, Path(text)]
    for candidate in candidates:
        if candidate.is_file():
            return Path(os.path.normpath(candidate))
    raise VisionlaunchError(f"{where}: base config {text!r} not found (looked at "
                            f"{', '.join(str(c) for c in candidates)}). Give a path relative to the ablation file "
                            "or to the repository, e.g. configs/mnist_cnn.yaml.")


def format_value(value: Any) -> str:
    """A YAML value as override text that parses back to the same value: 0.1, cosine, [32, 64], {hidden: [32]}."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20).strip()
    return text.removesuffix("...").strip()


def _overrides(value: Any, where: str) -> list[str]:
    """key=value strings from a list of them or a mapping {dotted key: value}; each checked for its form."""
    if isinstance(value, dict):
        items = [f"{k}={format_value(v)}" for k, v in value.items()]
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        items = list(value)
    else:
        raise VisionlaunchError(f"{where} must be a list of key=value strings or a mapping of keys to values, "
                                f"got {value!r}.")
    for text in items:
        try:
            parse_override(text)
        except VisionlaunchError as exc:
            raise VisionlaunchError(f"{where}: {exc}") from None
    return items


def _seeds(value: Any, where: str) -> list[int]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise VisionlaunchError(f"{where}: seeds must be a non-empty list of integers, e.g. seeds: [0, 1, 2]; got "
                                f"{value!r}.")
    if len(set(value)) != len(value):
        raise VisionlaunchError(f"{where}: seeds {value} repeat a seed; list each once.")
    return list(value)


# ---------------------------------------------------------------------------------------------------- settings


def _settings(tree: dict, where: str) -> tuple[list[tuple[str, str, list[str], dict]], list[str]]:
    """[(setting name, label, its own overrides, {varied key: value})] and the varied keys."""
    has_grid, has_variants = "grid" in tree, "variants" in tree
    if has_grid == has_variants:
        raise VisionlaunchError(
            f"{where} needs exactly one of grid: (key -> list of values, all combinations run) or variants: (a list "
            f"of named override sets); it has {'both' if has_grid else 'neither'}.")
    return _grid(tree["grid"], where) if has_grid else _variants(tree["variants"], where)


def _grid(grid: Any, where: str) -> tuple[list[tuple[str, str, list[str], dict]], list[str]]:
    if not isinstance(grid, dict) or not grid:
        raise VisionlaunchError(f"{where}: the grid is empty. Give at least one key with a list of values, e.g. "
                                "grid: {optim.label_smoothing: [0.0, 0.1]}.")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise VisionlaunchError(f"{where}: grid key {key!r} needs a non-empty list of values, got {values!r}.")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise VisionlaunchError(f"{where}: grid key {key!r} lists a value twice ({values}); list each once.")
    keys = [str(k) for k in grid]
    short = _short_keys(keys)
    settings = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(keys, combo))
        own = [f"{k}={format_value(v)}" for k, v in values.items()]
        name = "_".join(f"{short[k]}-{_slug(format_value(v))}" for k, v in values.items())
        label = ", ".join(f"{short[k]}={format_value(v)}" for k, v in values.items())
        settings.append((name, label, own, values))
    _overrides(settings[0][2], f"{where}, grid")  # each key=value must have the override form
    return settings, keys


def _variants(variants: Any, where: str) -> tuple[list[tuple[str, str, list[str], dict]], list[str]]:
    if not isinstance(variants, list) or not variants:
        raise VisionlaunchError(f"{where}: variants is empty. Give a list of {{name:, label:, overrides:}} "
                                "entries, e.g. - {name: cosine, overrides: [schedule.name=cosine]}.")
    settings = []
    for i, entry in enumerate(variants):
        here = f"{where}, variant {i + 1}"
        if not isinstance(entry, dict):
            raise VisionlaunchError(f"{here} must be a mapping with name:, label: and overrides:, got {entry!r}.")
        _check_keys(entry, VARIANT_KEYS, here, "key")
        name = entry.get("name")
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise VisionlaunchError(f"{here}: name {name!r} cannot be a folder name. Every variant needs a name of "
                                    "letters, digits, '.', '_' and '-', e.g. name: cosine.")
        label = entry.get("label", name)
        own = _overrides(entry.get("overrides", []), f"{here} ({name})")
        settings.append((name, str(label), own, {_key(o): parse_override(o)[1] for o in own}))
    varied = list(dict.fromkeys(key for *_, values in settings for key in values))
    # Each variant's value of every varied key (the CSV's columns).
    return [(name, label, own, {k: values.get(k, "(base)") for k in varied})
            for name, label, own, values in settings], varied


_GENERIC = ("name", "args")  # too vague alone: schedule.name, model.args


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's last part (label_smoothing), or the whole key where that part is vague (schedule.name) or two
    keys share it (augment.cutout and some.other.cutout)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (short if last.count(short) == 1 and short not in _GENERIC else k) for k, short in zip(keys, last)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "empty"


def _key(override: str) -> str:
    return ".".join(parse_override(override)[0])


# ---------------------------------------------------------------------------------------------------- checks


def _related(a: str, b: str) -> bool:
    """Same key, or one inside the other (model.args and model.args.hidden)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _check_overrides(sources: list[tuple[str, list[str]]], where: str, seeds_given: bool) -> None:
    """The keys the ablation sets itself, and train.seed (from `seeds:`), are not overrides. A key set by two
    sources with different values is ambiguous: the file does not say which one is meant. The command-line extras
    may replace the fixed overrides (the usual command-line precedence), but not what a variant varies."""
    for src, overrides in sources:
        for o in overrides:
            key = _key(o)
            if any(_related(key, m) for m in MANAGED_KEYS):
                raise VisionlaunchError(
                    f"{where}: {src} set {key}, which the ablation sets itself (every run goes to "
                    "<output_dir>/<ablation>/<variant> and continues with train.resume=auto). Remove it; choose "
                    "the folder with output_dir: in the file or `visionlaunch ablate --out DIR`.")
            if _related(key, "train.seed"):
                raise VisionlaunchError(
                    f"{where}: {src} set {o}, but each run's train.seed comes from seeds: "
                    f"({'as listed' if seeds_given else 'default [0]'}). List the seeds there instead.")
    (fixed_src, fixed), (extra_src, extra), (own_src, own) = sources
    pairs = [(fixed_src, fixed, own_src, own), (extra_src, extra, own_src, own)]
    for src, overrides in ((fixed_src, fixed), (own_src, own)):  # one list naming a key twice
        pairs += [(src, overrides[:i], src, [o]) for i, o in enumerate(overrides)]
    for a_src, a_list, b_src, b_list in pairs:
        for a in a_list:
            for b in b_list:
                ka, kb = _key(a), _key(b)
                if _related(ka, kb) and (ka != kb or _canon(a) != _canon(b)):
                    raise VisionlaunchError(
                        f"{where}: conflicting overrides: {a_src} set {a} and {b_src} set {b}. Set each key in "
                        "one place: vary it in the grid/variants, or fix it in overrides:, not both.")


def _canon(override: str) -> str:
    return json.dumps(parse_override(override)[1], sort_keys=True, default=str)


def _validated(variant: Variant, where: str) -> RunConfig:
    """The variant's complete config, checked the way `visionlaunch train` checks it, model arguments included."""
    try:
        return load_config(variant.config_path, variant.train_args()[2:])
    except VisionlaunchError as exc:
        raise VisionlaunchError(f"{where}: variant {variant.name} ({variant.label}) is not a valid run, so nothing "
                                f"was run. {exc}") from None


# A file name may have 255 bytes on common file systems; the runner writes logs/<run>.json and temporary files
# named .<run>.json.<random>.tmp beside the files it replaces, so a run name keeps 20 bytes free.
MAX_NAME_BYTES = 255 - 20


def _check_distinct_settings(variants: list[Variant], where: str) -> None:
    """Two settings whose values spell one config (train.precision no and fp32; 0.1 and 1e-1) would run the same
    experiment twice under two names."""
    seen: dict[str, Variant] = {}
    for v in variants:
        same = seen.setdefault(json.dumps(v.config.model_dump(mode="json", exclude={"output"}), sort_keys=True), v)
        if same is not v:
            raise VisionlaunchError(
                f"{where}: the settings {same.label!r} and {v.label!r} are one configuration (the same values, "
                "spelt differently), so their runs would repeat each other. List each setting once.")


def _check_folder_names(name: str, variants: list[Variant], where: str) -> None:
    """Before any file is written: two runs sharing a folder, or a name the file system would refuse, stop the plan,
    not its 5th run."""
    seen: dict[str, Variant] = {}
    for v in variants:
        if v.name in seen:
            raise VisionlaunchError(
                f"{where}: two runs would share the folder {v.name} ({seen[v.name].label!r} and {v.label!r}). Give "
                "variants distinct names (grid values that differ only in punctuation need a variants: list).")
        seen[v.name] = v
    long = [n for n in (name, *seen) if len(n.encode()) > MAX_NAME_BYTES]
    if long:
        raise VisionlaunchError(
            f"{where}: the folder name {long[0][:60]}... is {len(long[0].encode())} bytes long ({len(long)} name(s) "
            f"over the limit of {MAX_NAME_BYTES}: file systems allow 255 bytes per name, and the runner adds "
            "suffixes). Nothing was written. Shorten the grid values or give the settings short names with a "
            "variants: list.")
