"""Training options: gradient accumulation keeps the trajectory, clipping bounds the step, the EMA is updated,
evaluated and saved beside the raw weights, bf16 autocast and channels_last run on the CPU, and settings that
cannot work (fp16 on a CPU, a batch that does not split) stop before anything is written.
torch.compile is not exercised here: on a CPU it costs tens of seconds to compile and makes small models slower."""

import math

import pytest
import torch
from torch import nn

from tests.run_helpers import DETERMINISTIC, max_weight_difference, records, train_args, weights
from visionlaunch.config import AugmentConfig
from visionlaunch.launch.cli import main
from visionlaunch.trainers.ema import ModelEMA
from visionlaunch.datasets.augment import BatchPipeline

SHORT = ["train.epochs=1", "train.max_steps_per_epoch=12"]


def _train(shared_data, tmp_path, name, *overrides):
    return main(["train", *train_args(shared_data, tmp_path, name, *overrides)])


@pytest.mark.parametrize("overrides, expected", [
    (["train.precision=fp16"], "train.precision=fp16 needs a GPU"),
    (["train.batch_size=50", "train.grad_accum=3"], "Choose a multiple of 3"),
])
def test_settings_that_cannot_work_stop_before_anything_is_written(tmp_path, shared_data, capsys, overrides,
                                                                   expected):
    assert _train(shared_data, tmp_path, "bad", *overrides) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_gradient_accumulation_follows_the_same_trajectory(tmp_path, shared_data):
    assert _train(shared_data, tmp_path, "a1", *DETERMINISTIC) == 0
    assert _train(shared_data, tmp_path, "a3", *DETERMINISTIC, "train.grad_accum=3") == 0  # micro-batches of 16
    s1, s3 = records(tmp_path / "a1", "step"), records(tmp_path / "a3", "step")
    assert len(s1) == len(s3) == 2 * (1700 // 48)  # the same number of optimizer steps
    for a, b in zip(s1, s3):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["lr"] == pytest.approx(b["lr"], rel=1e-12), (a, b)
    assert max_weight_difference(tmp_path / "a1", tmp_path / "a3") < 1e-5


def test_gradient_clipping_bounds_the_update_and_logs_the_norm(tmp_path, shared_data):
    assert _train(shared_data, tmp_path, "free", *DETERMINISTIC, *SHORT) == 0
    assert _train(shared_data, tmp_path, "clipped", *DETERMINISTIC, *SHORT, "optim.clip_grad_norm=1e-4") == 0
    steps = records(tmp_path / "clipped", "step")
    assert all(r["grad_norm"] > 1e-3 for r in steps)  # the norm before clipping is what gets logged
    assert "grad_norm" not in records(tmp_path / "free", "step")[0]
    free_loss = records(tmp_path / "free", "epoch")[0]["loss"]
    clipped_loss = records(tmp_path / "clipped", "epoch")[0]["loss"]
    assert free_loss < 1.9 and clipped_loss > 2.2  # clipped steps of norm 1e-4 leave the model near chance (ln 10)


def test_ema_is_evaluated_and_saved_beside_the_raw_weights(tmp_path, shared_data, capsys):
    assert _train(shared_data, tmp_path, "ema", *DETERMINISTIC, "train.ema_decay=0.95") == 0
    run = tmp_path / "ema"
    epochs = records(run, "epoch")
    assert [r["split"] for r in epochs[:5]] == ["train", "val", "test", "val_ema", "test_ema"]
    ema_test = [r for r in epochs if r["split"] == "test_ema"][-1]
    assert ema_test["n"] == 500 and 0.5 < ema_test["acc"] <= 1
    assert records(run, "final")[0]["test_ema_acc"] == ema_test["acc"]
    raw, ema = weights(run, "last"), weights(run, "ema_last")
    assert raw.keys() == ema.keys() and max((raw[k] - ema[k]).abs().max() for k in raw) > 1e-4
    assert (run / "weights" / "ema_best.pt").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--weights", "ema_last"]) == 0  # the EMA weights reproduce their record
    out = capsys.readouterr().out
    assert "reproduced exactly" in out and f"{100 * ema_test['acc']:.2f}%" in out


def test_ema_update_is_the_exponential_average_and_copies_integer_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 5
    ema.update(model)
    expected = 0.9 * start["0.weight"] + 0.1 * model[0].weight
    assert torch.allclose(ema.state["0.weight"], expected, atol=1e-7)
    assert ema.state["1.num_batches_tracked"].item() == 5
    saved = ema.state_dict()
    other = ModelEMA(model, decay=0.9)
    other.load_state_dict(saved)
    assert torch.equal(other.model()[0].weight, ema.model()[0].weight) and other.updates == 1


def test_bf16_autocast_trains_on_the_cpu(tmp_path, shared_data):
    assert _train(shared_data, tmp_path, "fp32", *DETERMINISTIC, *SHORT) == 0
    assert _train(shared_data, tmp_path, "bf16", *DETERMINISTIC, *SHORT, "train.precision=bf16") == 0
    fp32, bf16 = records(tmp_path / "fp32", "step"), records(tmp_path / "bf16", "step")
    assert all(math.isfinite(r["loss"]) for r in bf16)
    assert [r["loss"] for r in fp32] != [r["loss"] for r in bf16]  # autocast really computed in bf16
    assert abs(fp32[-1]["loss"] - bf16[-1]["loss"]) < 0.1
    assert "precision: bf16" in (tmp_path / "bf16" / "run.yaml").read_text()


def test_channels_last_gives_the_same_numbers(tmp_path, shared_data):
    cnn = ["model.name=cnn", "model.args={channels: [4, 8], hidden: [16], convs_per_stage: 1}",
           "augment.crop_padding=0", "train.batch_size=48", "train.epochs=1", "train.max_steps_per_epoch=5",
           "data.val_size=100", "data.test_subset=200", "train.precision=fp32"]  # bf16 rounds per layout
    assert _train(shared_data, tmp_path, "nchw", *cnn) == 0
    assert _train(shared_data, tmp_path, "nhwc", *cnn, "train.channels_last=true") == 0
    nchw, nhwc = records(tmp_path / "nchw", "step"), records(tmp_path / "nhwc", "step")
    # The first loss is the same function of the same weights. Later steps may part: max-pooling over the many
    # tied zeros of MNIST breaks ties differently in the two layouts and routes the gradient elsewhere.
    assert abs(nchw[0]["loss"] - nhwc[0]["loss"]) < 1e-5
    assert len(nhwc) == 5 and all(math.isfinite(r["loss"]) for r in nhwc)
    batch = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    for channels_last in (True, False):
        pipeline = BatchPipeline(AugmentConfig(crop_padding=2), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), seed=0,
                                 channels_last=channels_last)
        for out in (pipeline.train(batch), pipeline.eval(batch)):
            assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
