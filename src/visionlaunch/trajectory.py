"""Which config keys shape what a run learns, and how two runs' configs differ in them: resuming a checkpoint, the
ablation's check of its run folders and the comparison page go by this alone."""

from __future__ import annotations

from typing import Any

from visionlaunch.config import RunConfig, canonical_precision, flatten

# Keys that may change without changing the sequence of weights a run goes through: where files are, what is logged
# and how often, how the run reacts to signals, which kernels compute the same numbers.
TRAJECTORY_NEUTRAL = (
    "output.", "report.", "tracker.", "data.root", "data.cache_dir", "data.download", "data.verify", "data.fallback",
    "data.num_workers", "data.loader", "data.ffcv_dir", "train.resume", "train.progress", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.preempt_signals", "train.dist_timeout_s",
    "train.eval_batch_size", "train.device", "train.compile", "train.channels_last", "train.deterministic")


def shapes_trajectory(key: str) -> bool:
    """Whether a dotted config key (e.g. optim.lr) changes what a run learns."""
    return not key.startswith(TRAJECTORY_NEUTRAL)


def canonical_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened dumped config with every value in its current spelling: runs written before fp32 was the name of
    full precision recorded train.precision 'no'."""
    if "train.precision" in flat:
        flat = {**flat, "train.precision": canonical_precision(flat["train.precision"])}
    return flat


def config_differences(old: dict, new: dict, old_label: str, new_label: str) -> list[str]:
    """'key: <old_label> X, <new_label> Y' for every trajectory-shaping config key (model.args whole) that differs
    between two dumped configs. A key the old config's version did not have yet counts as its default (what that
    version did), so adding a key with a default keeps old runs comparable."""
    a = canonical_settings({**flatten(RunConfig.model_construct().model_dump(mode="json"), depth=2),
                            **flatten(old, depth=2)})
    b = canonical_settings(flatten(new, depth=2))
    keys = [k for k in sorted(set(a) | set(b)) if shapes_trajectory(k) and a.get(k, "<absent>") != b.get(k, "<absent>")]
    return [f"{k}: {old_label} {a.get(k, '<absent>')!r}, {new_label} {b.get(k, '<absent>')!r}" for k in keys]
