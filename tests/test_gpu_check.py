"""bench/gpu_check.py --quick runs every part of the GPU check on the CPU (tiny model, few steps, the embedded MNIST
sample), so the one-command GPU check cannot rot between the rare sessions that have a GPU; without a GPU the
full check stops at once, saying so."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.mark.timeout(1100)
def test_quick_check_runs_every_part_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "check"
    # A generous budget: on a busy 2-core machine the quick check takes minutes instead of tens of seconds.
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--quick", "--data", str(tmp_path / "no-data"),
                           "--budget-s", "900"], capture_output=True, text=True, timeout=1000, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["quick"] and set(report["parts"]) == {"setup", "tests", "overhead", "loaders", "imagenet", "cifar10",
                                                        "cifar100"}
    rows = report["rows"]
    assert not [r for r in rows if r["verdict"] == "FAIL"]
    tests = [r for r in rows if r["part"] == "tests"]
    # Every GPU test was collected and reported; on a CPU each one skips.
    assert len(tests) >= 9 and all(r["verdict"] == ("pass" if torch.cuda.is_available() else "skipped") for r in tests)
    pairs = report["parts"]["overhead"]["pairs"]
    assert pairs and all(p["trainer"] > 0 and p["bare"] > 0 for p in pairs)
    assert {r["backend"] for r in report["parts"]["loaders"]["results"]} == {"tensor", "torch"}
    imagenet = [r for r in rows if r["part"] == "imagenet"]  # one row per size of the preset's progressive resizing
    if importlib.util.find_spec("ffcv") is None:
        assert [r["verdict"] for r in imagenet] == ["skipped"], imagenet
    else:
        assert [r["check"].split(", ")[-1] for r in imagenet] == ["160 px", "192 px"], imagenet
        assert all(r["result"].endswith("img/s") for r in imagenet), imagenet
    for part in ("cifar10", "cifar100"):
        result = report["parts"][part]["result"]
        assert result["exit_code"] == 0 and result["trajectory"], part  # one epoch line parsed per run
    markdown = (out / "gpu_check.md").read_text()
    assert "| part | check | result | goal | verdict |" in markdown and markdown in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_full_check_without_a_gpu_stops_at_once_and_says_so(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "check")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "--quick" in proc.stderr
    report = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert report["rows"] == [{"part": "set-up", "check": "CUDA", "result": "torch sees no GPU", "goal": "a GPU",
                               "verdict": "FAIL"}]


@pytest.mark.timeout(600)
def test_the_imagenet_speed_check_runs_on_the_cpu(tmp_path):
    """bench/imagenet_speed.py --quick: the ResNet-50 preset's step (width 4) fed by the ffcv loader at 160 and 192 px,
    bf16, channels_last, on generated photos; every size measured. The numbers are the GPU's question."""
    pytest.importorskip("ffcv")
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "imagenet_speed.py"), str(out), "--quick"],
                          capture_output=True, text=True, timeout=500, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "resnet50_imagenet" and result["model_args"]["blurpool"]
    assert set(result["images_per_s"]) == {"160", "192"} and all(v > 0 for v in result["images_per_s"].values())
    assert result["precision"] == "bf16" and result["channels_last"]
