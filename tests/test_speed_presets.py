"""The speed presets run end to end: `mnist_fast` (MNIST to 99% in one epoch; its timing is in the README's speed
anchor, never in a test) on a subset of the real MNIST data, with the settings it is timed with (no validation
split, one test evaluation per epoch)."""

from tests.conftest import REPO
from tests.run_helpers import records
from visionlaunch.config import load_config
from visionlaunch.launch.cli import main


def test_mnist_fast_runs_end_to_end_on_a_subset(tmp_path, shared_data, capsys):
    preset = REPO / "configs" / "mnist_fast.yaml"
    cfg = load_config(preset)
    assert cfg.data.val_size == 0 and cfg.train.epochs == 2  # what the speed anchor times
    assert main(["train", "--config", str(preset), f"data.root={shared_data}", f"output.dir={tmp_path}",
                 "output.name=fast", "data.train_subset=3072", "data.test_subset=500", "train.progress=false",
                 "report.figures=false", "train.epochs=1"]) == 0
    run = tmp_path / "fast"
    epochs = records(run, "epoch")
    assert [r["split"] for r in epochs] == ["train", "test"]  # no validation split, one test evaluation
    final = records(run, "final")[0]
    # 12 steps of 256 on 3,072 images: far from 99%, but well above chance (10%) if the preset learns.
    assert final["test_acc"] > 0.6 and epochs[1]["n"] == 500
    assert "test loss" in capsys.readouterr().err  # the line bench/time_to_accuracy.py reads
