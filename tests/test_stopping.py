"""How a run stops says what it left: Ctrl-C checkpoints like SIGTERM and says how to resume; a signal after the
last step stops at once (or at the final record) with exit 75 and never promises what it does not do; a loss
that is not finite names only files that exist."""

import os
import signal
import time

import pytest

from tests.run_helpers import REPO
from visionlaunch.launch.cli import main
from visionlaunch.reports import artefacts
from visionlaunch.runfolder import read_metrics
from visionlaunch.trainers import losses
from visionlaunch.trainers import trainer as trainer_module
from visionlaunch.trainers.checkpoint import complete_checkpoints

TINY = ["--config", str(REPO / "configs" / "mnist_fcn.yaml"), "data.name=mnist_sample", "data.train_subset=600",
        "data.test_subset=100", "data.val_size=100", "train.batch_size=50", "train.progress=false",
        "model.args={hidden: [16]}", "train.log_every=1", "report.tsne_samples=50", "output.name=r"]


def _train(tmp_path, *overrides):
    return main(["train", *TINY, f"output.dir={tmp_path}", *overrides])


def _at_training_micro_batch(monkeypatch, k, action):
    forward, calls = losses.CrossEntropyLoss.forward, {"n": 0}

    def patched(self, logits, targets):
        import torch
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= k:
                return action(forward(self, logits, targets), calls["n"] == k)
        return forward(self, logits, targets)

    monkeypatch.setattr(losses.CrossEntropyLoss, "forward", patched)


def test_ctrl_c_checkpoints_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def ctrl_c(loss, first):
        if first:
            os.kill(os.getpid(), signal.SIGINT)  # what the terminal sends
        return loss

    _at_training_micro_batch(monkeypatch, 5, ctrl_c)
    assert _train(tmp_path, "train.epochs=2", "report.figures=false") == 75
    err = capsys.readouterr().err
    assert "stopped by SIGINT after step 5" in err and "train.resume=auto" in err and "Traceback" not in err
    assert [p.name for p in complete_checkpoints(tmp_path / "r" / "checkpoints")] == ["step-00000005"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    assert _train(tmp_path, "train.epochs=2", "report.figures=false", "train.resume=auto") == 0
    assert "resuming from" in capsys.readouterr().err


def test_a_signal_while_drawing_figures_stops_at_once_and_resume_draws_them(tmp_path, capsys, monkeypatch):
    drawn = []
    real = artefacts.make_figures

    def interrupted_figures(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        drawn.append("after the signal")  # must not be reached: the handler stops the drawing at once
        return real(*args, **kwargs)

    monkeypatch.setattr(artefacts, "make_figures", interrupted_figures)
    started = time.monotonic()
    assert _train(tmp_path, "train.epochs=1") == 75
    err = capsys.readouterr().err
    assert not drawn and time.monotonic() - started < 60
    assert "stopped by SIGTERM after training finished" in err and "figures" in err
    assert "finishing the current step" not in err  # no step was left: nothing of the kind is promised
    run = tmp_path / "r"
    assert not (run / "report.html").exists() and (run / "preempted.json").is_file()
    assert [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"]

    monkeypatch.undo()
    assert _train(tmp_path, "train.epochs=1", "train.resume=auto") == 0
    assert (run / "report.html").is_file() and (run / "figures" / "tsne.png").is_file()
    assert not (run / "preempted.json").exists()
    assert len([r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final"]) == 1


def test_a_signal_during_the_last_evaluation_keeps_its_promise(tmp_path, capsys, monkeypatch):
    real, calls = trainer_module.evaluate, {"n": 0}

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    assert _train(tmp_path, "train.epochs=1") == 75
    err = capsys.readouterr().err
    assert "finishing the current step, then writing a checkpoint" in err  # the promise made ...
    assert "stopped by SIGTERM after training finished (step 10)" in err  # ... and kept
    assert [p.name for p in complete_checkpoints(tmp_path / "r" / "checkpoints")] == ["step-00000010"]


@pytest.mark.parametrize("nan_from, saved", [(3, False), (15, True)], ids=["first-epoch", "second-epoch"])
def test_a_non_finite_loss_names_only_what_exists(tmp_path, capsys, monkeypatch, nan_from, saved):
    _at_training_micro_batch(monkeypatch, nan_from, lambda loss, first: loss * float("nan"))
    assert _train(tmp_path, "train.epochs=2", "report.figures=false") == 2
    err = capsys.readouterr().err
    assert "loss became nan" in err and "Traceback" not in err
    run = tmp_path / "r"
    if saved:
        assert f"{run / 'weights' / 'last.pt'}" in err and f"{run / 'checkpoints' / 'step-00000010'}" in err
        assert (run / "weights" / "last.pt").is_file() and (run / "checkpoints" / "step-00000010").is_dir()
    else:
        message = err[err.index("loss became"):]
        assert "Nothing was saved" in message and "last.pt" not in message and "checkpoints/" not in message
