"""End to end through the command line: a real short MNIST run writes the whole run folder, `evaluate`
reproduces its test accuracy exactly, and bad input fails cleanly without leaving a run folder behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visionlaunch.launch.cli import main
from visionlaunch.runfolder import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Small but real: 3,000 MNIST training images, 1,000 test images, a narrow CNN, two epochs.
QUICK = ["data.train_subset=3000", "data.test_subset=1000", "data.val_size=500", "train.epochs=2",
         "train.batch_size=100", "train.progress=false", "report.tsne_samples=200", "report.ident=tester"]
SMALL_CNN = "model.args={channels: [8, 16], hidden: [32], convs_per_stage: 1}"


def _train(tmp_path, *overrides, config="mnist_cnn", name="run"):
    args = ["train", "--config", str(CONFIGS / f"{config}.yaml"), f"output.dir={tmp_path / 'runs'}",
            f"output.name={name}", *QUICK, *overrides]
    return main(args), tmp_path / "runs" / name


def test_mnist_run_writes_the_whole_run_folder_and_evaluate_reproduces_it(tmp_path, shared_data, capsys):
    code, run = _train(tmp_path, f"data.root={shared_data}", SMALL_CNN)
    assert code == 0
    for rel in ("config.yaml", "run.yaml", "summary.txt", "metrics.jsonl", "weights/last.pt", "weights/best.pt",
                "figures/loss.png", "figures/accuracy.png", "figures/tsne.png", "figures/predictions.png",
                "figures/confusion.png"):
        assert (run / rel).is_file(), rel
    records = read_metrics(run / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert {(r["split"], r["epoch"]) for r in epochs} == {(s, e) for s in ("train", "val", "test") for e in (1, 2)}
    final = [r for r in records if r["kind"] == "final"][0]
    test_epochs = [r for r in epochs if r["split"] == "test"]
    assert final["test_acc"] == test_epochs[-1]["acc"]
    assert final["test_acc"] > 0.85          # a real model learned real digits
    assert all(0 <= r["acc5"] <= 1 and r["acc5"] >= r["acc"] for r in epochs)
    assert test_epochs[-1]["n"] == 1000 and [r for r in epochs if r["split"] == "val"][0]["n"] == 500

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["name"] == "mnist" and saved["optim"]["lr"] == 0.05
    identity = yaml.safe_load((run / "run.yaml").read_text())
    assert identity["ident"] == "tester" and identity["processes"] == 1 and "mnist: 2500 train" in identity["data"]
    assert "Total params" in (run / "summary.txt").read_text() or "parameters" in (run / "summary.txt").read_text()

    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "reproduced exactly" in out
    assert f"{100 * final['test_acc']:.2f}%" in out
    assert main(["evaluate", str(run), "--weights", "best"]) == 0
    assert "reproduced exactly" in capsys.readouterr().out

    # Figures can be redrawn from the folder alone.
    for png in (run / "figures").glob("*.png"):
        png.unlink()
    assert main(["figures", str(run)]) == 0
    assert {p.name for p in (run / "figures").glob("*.png")} == {
        "loss.png", "accuracy.png", "tsne.png", "predictions.png", "confusion.png"}


def test_evaluate_detects_weights_that_do_not_match_the_record(tmp_path, shared_data, capsys):
    import torch
    code, run = _train(tmp_path, f"data.root={shared_data}", "model.name=fcn", "model.args={hidden: [64]}",
                       "train.epochs=1", "report.figures=false")
    assert code == 0
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    ckpt["model"] = {k: torch.zeros_like(v) for k, v in ckpt["model"].items()}
    torch.save(ckpt, run / "weights" / "last.pt")
    assert main(["evaluate", str(run)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    (run / "weights" / "last.pt").write_bytes(b"truncated")
    assert main(["evaluate", str(run)]) == 2
    assert "cannot read the weights file" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "not a finished visionlaunch run folder" in capsys.readouterr().err


def test_prepare_show_config_and_models_commands(tmp_path, shared_data, capsys):
    assert main(["prepare", "--config", str(CONFIGS / "mnist_cnn.yaml"), f"data.root={shared_data}"]) == 0
    assert "mnist: 55000 train, 5000 val" in capsys.readouterr().out
    assert any((tmp_path / "cache").iterdir())  # the decoded tensors are cached for the next run
    assert main(["show-config", "--config", str(CONFIGS / "mnist_cnn.yaml"), "optim.lr=0.3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.3
    assert main(["show-config", "--keys"]) == 0
    assert "label_smoothing" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "fcn:" in out and "cnn:" in out and "channels=" in out


def test_saved_config_reruns_to_the_same_numbers(tmp_path, shared_data):
    code, run = _train(tmp_path, f"data.root={shared_data}", "model.name=fcn", "model.args={hidden: [64]}",
                       "train.epochs=1", "report.figures=false")
    assert code == 0
    assert main(["train", "--config", str(run / "config.yaml"), "output.name=again"]) == 0
    first = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"]
    again = [r for r in read_metrics(run.parent / "again" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [(r["split"], r["loss"], r["acc"]) for r in first] == [(r["split"], r["loss"], r["acc"]) for r in again]


def test_missing_mnist_falls_back_to_the_embedded_sample_only_when_asked(tmp_path, capsys):
    code, run = _train(tmp_path, f"data.root={tmp_path / 'empty'}", SMALL_CNN, name="strict")
    assert code == 2
    assert "MNIST" in capsys.readouterr().err
    assert not run.exists()

    code, run = _train(tmp_path, f"data.root={tmp_path / 'empty'}", "data.fallback=sample", SMALL_CNN,
                       "train.epochs=1", "report.figures=false", name="sample")
    assert code == 0
    assert "embedded MNIST sample" in capsys.readouterr().err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["name"] == "mnist_sample"
    assert main(["evaluate", str(run)]) == 0  # re-evaluation reloads the sample, not whatever appears later


@pytest.mark.parametrize("override, expected", [
    ("model.name=resnet9000", "resnet9000"),
    ("train.epochs=-3", "train.epochs"),
    ("data.name=svhn", "data.name"),
    ("model.args={hiden: [3]}", "hiden"),
    ("report.tsne_layer=no_such_layer", "no_such_layer"),
])
def test_bad_input_exits_2_and_leaves_no_run_folder(tmp_path, shared_data, capsys, override, expected):
    code, run = _train(tmp_path, f"data.root={shared_data}", SMALL_CNN, override)
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not run.exists()


def test_unwritable_output_dir(tmp_path, shared_data, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out_dir in (blocker / "runs", Path("/proc/visionlaunch-runs")):
        code = main(["train", "--config", str(CONFIGS / "mnist_fcn.yaml"), f"data.root={shared_data}",
                     f"output.dir={out_dir}", *QUICK])
        assert code == 2
        assert "not a writable folder" in capsys.readouterr().err


def test_existing_run_folder_is_not_overwritten_unless_asked(tmp_path, shared_data, capsys):
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("mine")
    code, _ = _train(tmp_path, f"data.root={shared_data}", SMALL_CNN)
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (run / "keep.txt").read_text() == "mine"


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, shared_data, capsys):
    code, run = _train(tmp_path, f"data.root={shared_data}", "model.name=fcn",
                       "model.args={hidden: [64], batch_norm: false}", "optim.lr=1e30", "schedule.name=constant",
                       "train.log_every=1", "report.figures=false")
    assert code == 2
    assert "loss became" in capsys.readouterr().err


def _cli_env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}


@pytest.mark.parametrize("launcher", [
    [sys.executable, str(REPO / "train.py")],
    [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
     "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train.py")],
], ids=["python", "accelerate-launch"])
def test_front_door_train_py(tmp_path, shared_data, launcher):
    cmd = [*launcher, "--config", str(CONFIGS / "mnist_fcn.yaml"), f"data.root={shared_data}",
           f"output.dir={tmp_path}", "output.name=front", *QUICK, "train.epochs=1", "report.figures=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = [r for r in read_metrics(tmp_path / "front" / "metrics.jsonl") if r["kind"] == "final"]
    assert final and final[0]["test_acc"] > 0.8


def test_console_script_reports_errors_without_traceback(tmp_path):
    exe = Path(sys.executable).parent / "visionlaunch"
    proc = subprocess.run([str(exe), "train", "--config", str(tmp_path / "missing.yaml")], capture_output=True,
                          text=True, env=_cli_env(), timeout=120)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("preset", ["cifar100_fcn", "cifar100_cnn", "cifar10_fcn", "cifar10_cnn"])
def test_cifar_presets_run_end_to_end_on_canonical_format_files(tmp_path, preset):
    from tests.cifar_format import write_cifar10, write_cifar100
    root = tmp_path / "data"
    (write_cifar100 if preset.startswith("cifar100") else write_cifar10)(root, n_train=600, n_test=200, seed=0)
    code = main(["train", "--config", str(CONFIGS / f"{preset}.yaml"), f"data.root={root}", "data.verify=false",
                 f"output.dir={tmp_path / 'runs'}", "output.name=c", "data.val_size=100", "train.epochs=1",
                 "train.batch_size=50", "train.progress=false", "report.tsne_samples=100"])
    assert code == 0
    run = tmp_path / "runs" / "c"
    final = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"][0]
    n_classes = 100 if preset.startswith("cifar100") else 10
    ckpt_classes = yaml.safe_load((run / "config.yaml").read_text())["data"]["name"]
    assert ckpt_classes == preset.split("_")[0]
    assert 0 <= final["test_acc"] <= 1 and (run / "figures" / "confusion.png").is_file()
    import torch
    assert len(torch.load(run / "weights" / "last.pt", weights_only=True)["classes"]) == n_classes


RESIDUAL_PRESETS = [f"{ds}_{recipe}" for ds in ("cifar10", "cifar100")
                    for recipe in ("resnet18", "wrn16_8", "wrn28_10", "fast")]


@pytest.mark.parametrize("preset", RESIDUAL_PRESETS)
def test_residual_presets_run_end_to_end_on_canonical_format_files(tmp_path, preset):
    # The full-size models of each preset, cut to one optimizer step of 10 images and 20 test images: the big
    # ones take seconds per step on a CPU.
    from tests.cifar_format import write_cifar10, write_cifar100
    root = tmp_path / "data"
    (write_cifar100 if preset.startswith("cifar100") else write_cifar10)(root, n_train=200, n_test=20, seed=0)
    code = main(["train", "--config", str(CONFIGS / f"{preset}.yaml"), f"data.root={root}", "data.verify=false",
                 f"output.dir={tmp_path / 'runs'}", "output.name=c", "data.val_size=10", "train.epochs=1",
                 "train.max_steps_per_epoch=1", "train.batch_size=10", "train.eval_batch_size=20",
                 "train.progress=false", "report.tsne_samples=10"])
    assert code == 0
    run = tmp_path / "runs" / "c"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    preset_cfg = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())
    assert {k: saved["model"][k] for k in ("name", "args")} == {"name": preset_cfg["model"]["name"],
                                                             "args": preset_cfg["model"].get("args", {})}
    assert saved["model"]["weights"] is None  # random init: no weights file
    final = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"][0]
    assert final["steps"] == 1 and 0 <= final["test_acc"] <= 1
    assert (run / "figures" / "tsne.png").is_file()
