"""TensorBoard and CSV trackers beside W&B, several at once, on a real short MNIST run: the TensorBoard event files
hold every scalar of metrics.jsonl (read back with TensorBoard's own EventAccumulator), metrics.csv has one row per
value, and a resumed run drops what it logs again. An unknown tracker name is refused before anything is written."""

import csv
import math
import shutil
from pathlib import Path


from tests.run_helpers import train_args
from visionlaunch.launch.cli import main
from visionlaunch.runfolder import read_metrics


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _expected(run: Path) -> dict[tuple[str, int], float]:
    """(key, step) -> value as every tracker gets them, from metrics.jsonl."""
    out = {}
    for r in read_metrics(run / "metrics.jsonl"):
        if r["kind"] == "step":
            out.update({(f"step/{k}", r["step"]): r[k] for k in ("loss", "lr") if k in r})
        elif r["kind"] == "epoch":
            out.update({(f"{r['split']}/{k}", r["step"]): r[k] for k in ("loss", "acc", "acc5") if k in r})
    return out


def test_tensorboard_and_csv_hold_the_logged_scalars(shared_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", *train_args(shared_data, tmp_path, "tb", "tracker.name=[tensorboard, csv]",
                                      "train.max_steps_per_epoch=5")]) == 0
    run = tmp_path / "tb"
    expected = _expected(run)
    assert ("val/acc", 5) in expected and ("step/loss", 3) in expected

    events = EventAccumulator(str(run / "tensorboard" / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    for key, value in expected.items():
        assert math.isclose(logged[key], value, rel_tol=1e-6, abs_tol=1e-7), key  # stored as float32
    final = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"][0]
    assert math.isclose(logged[("final/test_acc", 10)], final["test_acc"], rel_tol=1e-6)

    rows = _csv_rows(run / "metrics.csv")
    table = {(r["key"], int(r["step"])): float(r["value"]) for r in rows}
    assert len(rows) == len(table)  # one row per value, none twice
    for key, value in expected.items():
        assert table[key] == value, key  # written with repr(): exact
    assert table[("final/test_acc", 10)] == final["test_acc"]


def test_resumed_run_keeps_the_csv_rows_before_its_checkpoint(shared_data, tmp_path):
    assert main(["train", *train_args(shared_data, tmp_path, "once", "tracker.name=csv",
                                      "train.max_steps_per_epoch=5", "train.keep_checkpoints=3")]) == 0
    run = tmp_path / "once"
    full = _csv_rows(run / "metrics.csv")
    # Resume from the end of epoch 1 (step 5): the rows of epoch 2 are logged again, once.
    shutil.rmtree(run / "checkpoints" / "step-00000010")
    assert main(["train", *train_args(shared_data, tmp_path, "once", "tracker.name=csv",
                                      "train.max_steps_per_epoch=5", "train.keep_checkpoints=3",
                                      f"train.resume={run}")]) == 0
    again = _csv_rows(run / "metrics.csv")
    assert [(r["step"], r["key"]) for r in again] == [(r["step"], r["key"]) for r in full]
    assert [r["value"] for r in again if int(r["step"]) <= 5] == [r["value"] for r in full if int(r["step"]) <= 5]


def test_unknown_tracker_is_refused(shared_data, tmp_path, capsys):
    assert main(["train", *train_args(shared_data, tmp_path, "bad", "tracker.name=[csv, mlflow]")]) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'mlflow'; valid: none, wandb, tensorboard, csv" in err
    assert not (tmp_path / "bad").exists()
