"""timm architectures by name: the registry contract, local weights files (timm's and ours), names that do not
exist or ask for downloads, and real runs with a tiny timm network: two processes (gloo), an exact resume, and
the report. Data: the MNIST sample embedded in the package (no files needed)."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.model_checks import check_builder_signature
from tests.run_helpers import FAULT_TRAIN_PY, TRAIN_PY, env, max_weight_difference, records, two_process_launcher
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.models import build_model, capture_features, layer_names, model_summary
from visionlaunch.models.timm_models import builder_for
from visionlaunch.models.weights import load_weights

REPO = Path(__file__).resolve().parents[1]
TINY = "timm/test_resnet"  # timm's own small ResNet (0.37M parameters)
RUN = ["--config", str(REPO / "configs" / "mnist_cnn.yaml"), "data.name=mnist_sample", "data.train_subset=64",
       "data.test_subset=32", "data.val_size=0", f"model.name={TINY}", "model.args={}", "train.batch_size=16", "train.epochs=2",
       "train.progress=false", "report.figures=false", "train.log_every=1", "augment.crop_padding=0"]


@pytest.mark.parametrize("name, in_shape", [(TINY, (1, 28, 28)), ("timm/test_vit", (3, 32, 32)),
                                            ("timm/mobilenetv3_small_050", (3, 64, 64))])
def test_timm_models_honour_the_registry_contract(name, in_shape):
    check_builder_signature(builder_for(name))
    model = build_model(name, in_shape, 7)
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.out_features == 7
    x = torch.zeros(2, *in_shape)
    assert model(x).shape == (2, 7)
    with capture_features(model) as feats:  # "penultimate": the pre-logits features, the classifier's input
        model(x)
    assert feats[0].shape == (2, model.feature_dim) == (2, model.classifier.in_features)
    assert "backbone" in layer_names(model)
    assert "Total params" in model_summary(model, in_shape)


def test_arguments_unknown_names_and_download_requests_are_refused_clearly():
    model = build_model(TINY, (3, 32, 32), 3, {"drop_rate": 0.2})
    assert model.backbone.drop_rate == 0.2
    with pytest.raises(VisionlaunchError, match=r"unknown timm architecture 'resnett10t'.*Close names: "
                                                r"timm/resnet10t"):
        build_model("timm/resnett10t", (3, 32, 32), 3)
    with pytest.raises(VisionlaunchError, match="model.args.pretrained=true .*never downloads.*model.weights="):
        build_model(TINY, (3, 32, 32), 3, {"pretrained": True})
    with pytest.raises(VisionlaunchError, match="asks for a model from a hub.*model.weights="):
        build_model("timm/hf-hub:timm/resnet18.a1_in1k", (3, 32, 32), 3)
    with pytest.raises(VisionlaunchError, match="has no argument 'dropout'"):
        build_model(TINY, (3, 32, 32), 3, {"dropout": 0.1})
    with pytest.raises(VisionlaunchError, match="unknown model 'resnet-18'.*timm/<architecture>"):
        build_model("resnet-18", (3, 32, 32), 3)


def test_models_lists_timm_architectures(capsys):
    assert main(["models", "--timm", "resnet1"]) == 0
    listed = capsys.readouterr().out.split()
    assert "timm/resnet10t" in listed and "timm/resnet18" in listed and all("resnet1" in n for n in listed)
    assert main(["models", "--timm"]) == 0
    assert len(capsys.readouterr().out.split()) == len(timm.list_models())


def test_weights_files_load_from_timm_and_from_visionlaunch(tmp_path):
    model = build_model(TINY, (3, 32, 32), 5)
    native = timm.create_model("test_resnet", num_classes=5, in_chans=3)  # timm's names: stem..., fc.weight
    torch.save(native.state_dict(), tmp_path / "native.pth")
    load_weights(model, tmp_path / "native.pth", TINY)
    assert torch.equal(model.classifier.weight, native.fc.weight)
    x = torch.randn(2, 3, 32, 32)
    native.eval(), model.eval()
    assert torch.allclose(model(x), native(x), atol=1e-5)  # the same network, the same outputs

    other = build_model(TINY, (3, 32, 32), 5)
    save_file(other.state_dict(), str(tmp_path / "ours.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "wrapped.pt")
    for name in ("ours.safetensors", "wrapped.pt"):
        load_weights(model, tmp_path / name, TINY)
        assert torch.equal(model.classifier.weight, other.classifier.weight)


@pytest.mark.parametrize("make, expected", [
    (lambda: timm.create_model("test_resnet", num_classes=1000).state_dict(),
     r"it has a classifier for 1000 classes, the data has 5"),
    (lambda: timm.create_model("test_efficientnet", num_classes=5).state_dict(), r"are not in the (file|model)"),
    (lambda: timm.create_model("test_resnet", num_classes=5, in_chans=1).state_dict(),
     r"shapes differ: backbone\.conv1\.0\.weight \(16, 1, 3, 3\) \(model: \(16, 3, 3, 3\)\)"),
    (lambda: b"not a weights file", r"cannot be read as a weights file: it is truncated, damaged or not a PyTorch"),
    (lambda: {"model": argparse.Namespace(step=3)}, r"cannot be read as a weights file: it holds objects other than "
                                                    r"tensors and plain data"),
    (lambda: {"step": 3}, r"does not hold a state_dict"),
])
def test_weights_that_do_not_fit_are_refused_naming_file_and_keys(tmp_path, make, expected):
    model = build_model(TINY, (3, 32, 32), 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "weights.pth"
    content = make()
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(VisionlaunchError, match=expected) as info:
        load_weights(model, path, TINY)
    assert str(path) in str(info.value) and "weights_only" not in str(info.value)  # never PyTorch's advice
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_a_run_with_weights_of_another_class_count_stops_before_writing(tmp_path, capsys):
    path = tmp_path / "imagenet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=1000, in_chans=1).state_dict(), path)
    code = main(["train", *RUN, f"model.weights={path}", f"output.dir={tmp_path / 'runs'}", "output.name=w"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err and "classifier for 1000 classes, the data has 10" in err
    assert not (tmp_path / "runs" / "w").exists()
    code = main(["train", *RUN, "model.name=timm/resnet10", f"output.dir={tmp_path / 'runs'}", "output.name=n"])
    assert code == 2 and "Close names: timm/resnet10t" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "n").exists()


def test_a_timm_model_trains_resumes_exactly_and_reports(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", *RUN, f"output.dir={out}", "output.name=whole", "report.figures=true",
                 "report.tsne_samples=10"]) == 0
    whole = out / "whole"
    assert "TimmClassifier" in (whole / "summary.txt").read_text()
    assert (whole / "report.html").is_file() and (whole / "figures" / "tsne.png").is_file()

    # Stopped by SIGTERM during step 5 of 8, then resumed: the same weights as the uninterrupted run.
    cut = [*RUN, f"output.dir={out}", "output.name=cut", "train.resume=auto"]
    proc = subprocess.run([sys.executable, str(FAULT_TRAIN_PY), *cut], capture_output=True, text=True,
                          env=env(VL_TEST_FAULT="action=signal,signal=SIGTERM,step=5"), cwd=REPO, timeout=300)
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert main(["train", *cut]) == 0
    assert "resuming from" in capsys.readouterr().err
    assert max_weight_difference(whole, out / "cut") == 0
    assert records(whole, "epoch") == records(out / "cut", "epoch")


def test_a_timm_model_trains_on_two_processes(tmp_path):
    proc = subprocess.run([*two_process_launcher(TRAIN_PY), *RUN, f"output.dir={tmp_path}",
                           "output.name=ddp"], capture_output=True, text=True, env=env(WANDB_MODE="disabled"),
                          cwd=REPO, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "ddp"
    assert "processes: 2" in (run / "run.yaml").read_text()
    epochs = records(run, "epoch")
    assert [(r["split"], r["n"]) for r in epochs] == [("train", 64), ("test", 32)] * 2  # each sample once
    assert len(records(run, "step")) == 8  # global batch 16 = 2 x 8, 4 steps an epoch
