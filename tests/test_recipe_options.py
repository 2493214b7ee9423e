"""Recipe options as the training path uses them: flip test-time augmentation in evaluation and in
`visionlaunch evaluate`, weight decay only on conv/linear weights of the residual nets, mixup/cutmix through the
trainer, and weights that do not fit the data are refused by `evaluate` with a clear message."""

import pytest
import torch
import yaml
from torch import nn

from tests.run_helpers import records, train_args
from visionlaunch.config import AugmentConfig, OptimConfig, load_config
from visionlaunch.launch.cli import main
from visionlaunch.models import build_model
from visionlaunch.trainers.losses import CrossEntropyLoss
from visionlaunch.datasets.augment import BatchPipeline
from visionlaunch.trainers.schedules import build_optimizer
from visionlaunch.trainers.distributed import make_accelerator
from visionlaunch.trainers.evaluation import evaluate, predict, tta_logits

SHORT = ["train.epochs=1", "train.max_steps_per_epoch=8"]


class LeftHeavy(nn.Module):
    """Logits that depend on which side of the image is bright: a mirror image gives other logits."""

    def forward(self, x):
        left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2:].mean((1, 2, 3))
        return torch.stack([left - right, right - left, 0 * left], dim=1)


def test_tta_logits_average_the_image_and_its_mirror():
    model, x = LeftHeavy(), torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(tta_logits(model, x, flip=False), model(x))
    torch.testing.assert_close(tta_logits(model, x, flip=True), (model(x) + model(x.flip(3))) / 2)
    # This model is antisymmetric under the flip, so the averaged logits vanish.
    assert tta_logits(model, x, flip=True).abs().max() < 1e-6


def test_evaluate_uses_flip_tta_when_asked():
    torch.manual_seed(0)
    cfg = load_config(overrides=["train.device=cpu", "train.precision=fp32"])  # compared with fp32 logits below
    acc, _ = make_accelerator(cfg)
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 3, (20,))
    pipeline = BatchPipeline(AugmentConfig(), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    loader = [(images[:10], labels[:10]), (images[10:], labels[10:])]
    plain = evaluate(model, loader, pipeline, acc, CrossEntropyLoss())
    tta = evaluate(model, loader, pipeline, acc, CrossEntropyLoss(), tta_flip=True)
    x = pipeline.eval(images)
    with torch.no_grad():
        expected = CrossEntropyLoss()((model(x) + model(x.flip(3))) / 2, labels).item()
    assert tta["loss"] == pytest.approx(expected, rel=1e-5)
    assert plain["loss"] != pytest.approx(tta["loss"], rel=1e-3)


def test_weight_decay_reaches_only_conv_and_linear_weights_of_a_resnet():
    model = build_model("resnet18", (3, 32, 32), 10, {"width": 8})
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.01, momentum=0.0))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        is_weight_matrix = name.endswith("weight") and "bn" not in name and "downsample.1" not in name
        assert (id(p) in decayed) == is_weight_matrix, name
    # Behaviour: a step with zero gradients shrinks exactly the decayed tensors, by lr * weight_decay.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.01 if id(p) in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor)


@pytest.mark.parametrize("mix", [["augment.mixup_alpha=0.4"], ["augment.cutmix_alpha=1.0"],
                                 ["augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"]])
def test_mixup_and_cutmix_train_through_the_trainer(tmp_path, shared_data, mix):
    # Mixed batches with label smoothing on the soft targets; MNIST MLP, 8 steps.
    assert main(["train", *train_args(shared_data, tmp_path, "mixed", *SHORT, *mix, "optim.label_smoothing=0.1",
                                      "optim.lr=0.1")]) == 0
    steps = records(tmp_path / "mixed", "step")
    assert len(steps) == 8 and all(r["loss"] == r["loss"] for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    saved = yaml.safe_load((tmp_path / "mixed" / "config.yaml").read_text())
    for override in mix:
        key, value = override.split("=")
        assert saved["augment"][key.split(".")[1]] == float(value)


def test_tta_run_is_reproduced_by_evaluate_and_weights_for_other_classes_are_refused(tmp_path, shared_data, capsys):
    run = tmp_path / "tta"
    assert main(["train", *train_args(shared_data, tmp_path, "tta", *SHORT, "train.tta_flip=true",
                                      "report.figures=false")]) == 0
    capsys.readouterr()
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "reproduced exactly" in out and f"loss {ckpt['results']['test']['loss']:.4f}" in out
    # The same weights evaluated without TTA give another loss: evaluate really applied the flip above.
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["tta_flip"] = False
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", str(run)]) in (0, 1)
    plain_line = capsys.readouterr().out.splitlines()[-2]
    assert f"loss {ckpt['results']['test']['loss']:.4f}" not in plain_line

    ckpt["classes"] = ckpt["classes"][:3]
    torch.save(ckpt, run / "weights" / "last.pt")
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "was trained for 3 classes" in err and "has 10" in err


class AutocastRecorder(nn.Module):
    """A linear classifier that notes whether each forward ran under CPU autocast, and in which dtype."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return self.linear(x.flatten(1))


def test_figure_predictions_run_in_the_precision_of_the_reported_accuracy():
    # The confusion matrix and the prediction grid must count what the test accuracy counted: a bf16 run's
    # predictions under the same bf16 autocast (in fp32, near-ties flip and the figures disagree with the number).
    cfg = load_config(overrides=["train.device=cpu", "train.precision=bf16"])
    acc, _ = make_accelerator(cfg)
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 3, (20,))
    pipeline = BatchPipeline(AugmentConfig(), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), seed=0)
    model = AutocastRecorder()
    result = evaluate(model, [(images, labels)], pipeline, acc, CrossEntropyLoss(), tta_flip=True)
    assert model.seen and set(model.seen) == {torch.bfloat16}
    model.seen.clear()
    preds = predict(model, images, pipeline, acc, batch_size=7, tta_flip=True)
    assert model.seen and set(model.seen) == {torch.bfloat16}
    assert (preds == labels).float().mean().item() == pytest.approx(result["acc"])
