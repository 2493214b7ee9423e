"""Early stopping on a validation metric with patience, on real short MNIST runs: it stops where the patience runs
out, says so in the final record and the report, and a run resumed from a checkpoint taken before the stop stops at
the same epoch (the counter is part of the checkpoint). `train.deterministic=true` switches PyTorch's deterministic
mode on for the run (and off again for a run without it)."""

import json
import shutil

import torch

from tests.run_helpers import max_weight_difference, records, train_args
from visionlaunch.launch.cli import main

# A learning rate so small that the validation accuracy cannot change: epoch 1 is the best, and with patience 2
# training stops after epoch 3 of 5.
FLAT = ["model.args={hidden: [32], batch_norm: false, dropout: 0}", "augment.crop_padding=0", "optim.lr=1e-9",
        "train.epochs=5", "train.max_steps_per_epoch=3", "train.early_stop_patience=2", "train.keep_checkpoints=5"]


def _final(run):
    return records(run, "final")[-1]


def test_early_stopping_stops_when_patience_runs_out_and_resumes_safely(shared_data, tmp_path):
    assert main(["train", *train_args(shared_data, tmp_path, "stop", *FLAT)]) == 0
    run = tmp_path / "stop"
    epochs = sorted({r["epoch"] for r in records(run, "epoch")})
    assert epochs == [1, 2, 3]
    final = _final(run)
    assert final["early_stop"] == {"metric": "val_acc", "patience": 2, "best": final["best_val_acc"], "best_epoch": 1,
                                   "stopped_epoch": 3}
    assert "Stopped early after epoch 3: val_acc had not improved for 2 epochs" in (run / "report.html").read_text()

    # Resume from the end of epoch 2 (one epoch without improvement so far): it stops after epoch 3 again.
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert len(checkpoints) == 3
    shutil.rmtree(checkpoints[-1])
    # A key the checkpoint's version did not have counts as its default (here val_acc, as the run uses).
    meta = json.loads((checkpoints[1] / "visionlaunch.json").read_text())
    del meta["config"]["train"]["early_stop_metric"]
    (checkpoints[1] / "visionlaunch.json").write_text(json.dumps(meta))
    assert main(["train", *train_args(shared_data, tmp_path, "stop", *FLAT, f"train.resume={run}")]) == 0
    assert sorted({r["epoch"] for r in records(run, "epoch")}) == [1, 2, 3]
    assert _final(run) == final
    # Resuming the run that stopped trains no further.
    assert main(["train", *train_args(shared_data, tmp_path, "stop", *FLAT, f"train.resume={run}")]) == 0
    assert sorted({r["epoch"] for r in records(run, "epoch")}) == [1, 2, 3] and _final(run) == final


def test_early_stopping_on_val_loss_and_without_validation(shared_data, tmp_path, capsys):
    # A real learning rate: the validation loss falls every epoch, so patience 1 never runs out.
    assert main(["train", *train_args(shared_data, tmp_path, "loss", "train.max_steps_per_epoch=10",
                                      "train.early_stop_patience=1", "train.early_stop_metric=val_loss")]) == 0
    final = _final(tmp_path / "loss")
    val = [r["loss"] for r in records(tmp_path / "loss", "epoch") if r["split"] == "val"]
    assert len(val) == 2 and val[1] < val[0]
    assert final["early_stop"]["stopped_epoch"] is None and final["early_stop"]["best"] == val[1]
    assert main(["train", *train_args(shared_data, tmp_path, "noval", "data.val_size=0",
                                      "train.early_stop_patience=2")]) == 2
    assert "train.early_stop_patience watches the validation split" in capsys.readouterr().err


def test_deterministic_mode(shared_data, tmp_path):
    try:
        for name in ("det-a", "det-b"):
            assert main(["train", *train_args(shared_data, tmp_path, name, "train.deterministic=true",
                                              "train.max_steps_per_epoch=5")]) == 0
            assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert max_weight_difference(tmp_path / "det-a", tmp_path / "det-b") == 0.0
        assert main(["train", *train_args(shared_data, tmp_path, "free", "train.max_steps_per_epoch=5")]) == 0
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
