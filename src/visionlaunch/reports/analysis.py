"""What reports say about a run, computed from the parsed lines of metrics.jsonl: per-epoch rows, the headline
results, timing and where a resumed run restarted. Pure functions, tolerant of missing or odd fields."""

from __future__ import annotations

import math
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


def number(value) -> float | None:
    """A finite float, or None for anything else (strings, bools, NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def final_record(records: list[dict]) -> dict | None:
    """The last `kind: final` record, or None for a run that has not finished."""
    finals = [r for r in records if r.get("kind") == "final"]
    return finals[-1] if finals else None


def epoch_rows(records: list[dict]) -> list[dict]:
    """One row per epoch, {"epoch": e, "train": rec, "val": rec, "test": rec} (splits that were logged), sorted.

    A resumed run logs some epochs twice: the later record wins, as it belongs to the run that went on.
    """
    rows: dict[int, dict] = {}
    for rec in records:
        epoch = number(rec.get("epoch"))
        if rec.get("kind") != "epoch" or rec.get("split") not in SPLITS or epoch is None:
            continue
        rows.setdefault(int(epoch), {"epoch": int(epoch)})[rec["split"]] = rec
    return [rows[e] for e in sorted(rows)]


@dataclass(frozen=True)
class Headline:
    """The results a reader looks for first. Fractions for accuracies; None where the run did not record one."""

    finished: bool
    epochs_done: int
    epochs_planned: int | None
    test_acc: float | None = None
    test_acc5: float | None = None
    test_loss: float | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    test_acc_at_best_val: float | None = None
    wall_s: float | None = None
    images_per_s: float | None = None  # mean training throughput over the epochs


def _get(row: dict, split: str, key: str) -> float | None:
    return number(row.get(split, {}).get(key))


def _elapsed(row: dict) -> float | None:
    """Seconds since the start of the run when the epoch's last record was written."""
    times = [t for t in (_get(row, split, "time") for split in SPLITS) if t is not None]
    return max(times) if times else None


def headline(records: list[dict], epochs_planned: int | None = None) -> Headline:
    """From the final record when there is one; otherwise from the epoch records of an unfinished run."""
    rows = epoch_rows(records)
    final = final_record(records) or {}
    last = rows[-1] if rows else {}
    val = [(r["epoch"], _get(r, "val", "acc")) for r in rows if _get(r, "val", "acc") is not None]
    best_epoch, best_val = max(val, key=lambda ev: ev[1]) if val else (None, None)  # first best on ties
    best_row = next((r for r in rows if r["epoch"] == best_epoch), {})
    rates = [x for x in (_get(r, "train", "images_per_s") for r in rows) if x is not None]
    elapsed = [t for t in map(_elapsed, rows) if t is not None]

    def pick(final_key: str, fallback):
        value = number(final.get(final_key))
        return value if value is not None else fallback

    best_epoch_final = number(final.get("best_epoch"))
    return Headline(
        finished=bool(final),
        epochs_done=rows[-1]["epoch"] if rows else 0,
        epochs_planned=int(number(final.get("epochs")) or 0) or epochs_planned,
        test_acc=pick("test_acc", _get(last, "test", "acc")),
        test_acc5=pick("test_acc5", _get(last, "test", "acc5")),
        test_loss=pick("test_loss", _get(last, "test", "loss")),
        best_val_acc=pick("best_val_acc", best_val),
        best_epoch=int(best_epoch_final) if best_epoch_final is not None else best_epoch,
        test_acc_at_best_val=pick("test_acc_at_best_val", _get(best_row, "test", "acc")),
        wall_s=pick("time", elapsed[-1] if elapsed else None),
        images_per_s=sum(rates) / len(rates) if rates else None,
    )


@dataclass(frozen=True)
class Restart:
    """A point in metrics.jsonl where logging went back in time: the run was interrupted and resumed there."""

    line: int                   # index of the first record after the restart
    last_epoch: int             # last epoch fully logged (train record) before the interruption; 0 if none
    last_step: int | None       # last step logged before the interruption
    resumed_epoch: int | None   # epoch of the first record after it
    resumed_step: int | None    # step of the first record after it


def find_restarts(records: list[dict]) -> list[Restart]:
    """Restarts show as a step record whose step was already logged (steps only grow within one process), any
    record whose step goes backwards, or an epoch record for a (split, epoch) already logged.

    Elapsed `time` is not used: a resumed run may restore it or start it again, so it proves nothing.
    """
    restarts: list[Restart] = []
    last_step: float | None = None       # latest step of any record
    last_logged: float | None = None     # latest step of a `kind: step` record
    seen: set[tuple[str, int]] = set()
    last_epoch = 0
    for i, rec in enumerate(records):
        step, epoch = number(rec.get("step")), number(rec.get("epoch"))
        is_step = rec.get("kind") == "step"
        key = (rec.get("split"), int(epoch)) if rec.get("kind") == "epoch" and epoch is not None else None
        went_back = step is not None and ((last_step is not None and step < last_step)
                                          or (is_step and last_logged is not None and step <= last_logged))
        if went_back or (key is not None and key in seen):
            restarts.append(Restart(line=i, last_epoch=last_epoch, last_step=_int(last_step),
                                    resumed_epoch=_int(epoch), resumed_step=_int(step)))
            seen = {k for k in seen if epoch is None or k[1] < epoch}  # epochs from here on are logged anew
            last_logged = None
        if step is not None:
            last_step = step
            if is_step:
                last_logged = step
        if key is not None:
            seen.add(key)
            if key[0] == "train":
                last_epoch = key[1]
    return restarts


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
