"""The run folder contract: visionlaunch.runfolder alone spells the names of a run folder's files, and
`folder_state` tells the states of real folders that tiny MNIST runs leave (finished, preempted, crashed, resumed),
as `visionlaunch jobs` and `train.resume=auto` rely on."""

import ast
import signal
from pathlib import Path

import pytest

from tests.run_helpers import train_args
from tests.test_preemption import _signal_at_micro_batch
from visionlaunch import runfolder as rf
from visionlaunch.launch.cli import main
from visionlaunch.runfolder import FolderState, folder_state
from visionlaunch.slurm.jobs import run_folder_state
from visionlaunch.trainers import losses
from visionlaunch.trainers.preemption import PREEMPTED_EXIT_CODE

SRC = Path(__file__).resolve().parents[1] / "src" / "visionlaunch"
# Names that only a run folder has: spelled anywhere else (except as a dict key or in a sentence) they are a copy
# of the contract.
FILE_NAMES = {rf.CONFIG, rf.IDENTITY, rf.SUMMARY, rf.METRICS, rf.WEIGHTS, rf.CHECKPOINTS, rf.PREDICTIONS, rf.REPORT,
              rf.PREEMPTED, rf.METRICS_CSV, rf.CHECKPOINT_DONE, "last.pt", "best.pt"}
# Also command, tracker or config names ("figures", "wandb", ...): a copy only when joined onto a path.
FOLDER_NAMES = FILE_NAMES | {rf.FIGURES, rf.JOB_DIR, rf.TENSORBOARD, "wandb"}
FIGURE_FILES = {rf.figure_file(Path(), stem).name for stem in rf.FIGURE_STEMS}  # loss.png, confusion.png, ...


def contract_copies(source: str) -> list[str]:
    """'line: text' for every spelling of a run folder's file names in Python source."""
    tree = ast.parse(source)
    keys = {id(k) for node in ast.walk(tree) if isinstance(node, ast.Dict) for k in node.keys if k is not None}
    joined = {id(node.right) for node in ast.walk(tree) if isinstance(node, ast.BinOp)
              and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
              and node.right.value in FOLDER_NAMES}
    in_fstring = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in keys:
            continue
        text = node.value
        if id(node) in joined or text in FILE_NAMES | FIGURE_FILES or text.startswith(("step-", ".tmp-step-")) \
                or text == ".lock" or id(node) in in_fstring and text.startswith(".png") \
                or id(node) not in in_fstring and any(text.startswith(f"{name}/") for name in FOLDER_NAMES):
            found.append(f"{node.lineno}: {text!r}")
    return found


def test_the_scan_finds_each_way_of_spelling_a_run_file():
    planted = '''
path = run / "metrics.jsonl"
weights = run / "weights" / f"{which}.pt"
figures = run / "figures"
glob = run.glob("figures/*.png")
name = f"step-{step:08d}"
lock = f".{name}.lock"
confusion = out_dir / "confusion.png"
curves = out_dir / f"{stem}.png"
'''
    assert sorted(int(line.split(":")[0]) for line in contract_copies(planted)) == [2, 3, 4, 5, 6, 7, 8, 9]
    fine = '''
manifest = {"weights": which, "run": name}        # a key of another file's JSON
parser.add_parser("figures", help="redraw")      # a command name
message = f"{run} has no weights/{which}.pt: let the run finish an epoch"
images = {f"figures/{stem}": image}               # a W&B key
pngs = [p for p in paths if p.suffix == ".png"]   # any PNG
beside = out.with_name(f"{out.stem}-curves.png")  # another command's output file
'''
    assert contract_copies(fine) == []


def test_no_module_but_runfolder_spells_the_run_folder_names():
    copies = {str(path.relative_to(SRC)): contract_copies(path.read_text())
              for path in sorted(SRC.rglob("*.py")) if path.name != "runfolder.py" or path.parent != SRC}
    assert {path: lines for path, lines in copies.items() if lines} == {}


def test_runfolder_imports_nothing_above_it():
    tree = ast.parse((SRC / "runfolder.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {name for name in imported if name.startswith("visionlaunch")}
    # The modules beneath it: atomic writes, errors, and the YAML reader (which imports only errors).
    assert ours <= {"visionlaunch.atomic", "visionlaunch.errors", "visionlaunch.yamlfiles"}
    yamlfiles = ast.parse((SRC / "yamlfiles.py").read_text())
    assert {node.module for node in ast.walk(yamlfiles) if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("visionlaunch")} == {"visionlaunch.errors"}


# ---------------------------------------------------------------------------------------------------- folder states


def test_states_of_folders_without_a_run(tmp_path):
    assert folder_state(tmp_path / "nothing") is FolderState.ABSENT
    (tmp_path / "empty").mkdir()
    assert folder_state(tmp_path / "empty") is FolderState.EMPTY
    job = tmp_path / "job"
    (job / rf.JOB_DIR).mkdir(parents=True)
    (job / rf.JOB_DIR / rf.JOB_SCRIPT).write_text("#!/bin/bash\n")
    assert folder_state(job) is FolderState.JOB_ONLY
    assert run_folder_state(job) == "not started"
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "thesis.tex").write_text("x")
    assert folder_state(tmp_path / "papers") is FolderState.OTHER
    (tmp_path / "file").write_text("x")
    assert folder_state(tmp_path / "file") is FolderState.OTHER


def test_a_preempted_run_then_resumed_to_its_end(tmp_path, shared_data, monkeypatch):
    _signal_at_micro_batch(monkeypatch, signal.SIGUSR2, at=6)
    args = train_args(shared_data, tmp_path, "pre", "model.args={hidden: [16]}", "train.epochs=1")
    assert main(["train", *args]) == PREEMPTED_EXIT_CODE
    run = tmp_path / "pre"
    assert folder_state(run) is FolderState.PREEMPTED
    assert (run / rf.PREEMPTED).is_file() and rf.final_record(rf.read_metrics(run / rf.METRICS)) is None
    assert [p.name for p in rf.complete_checkpoints(run / rf.CHECKPOINTS)] == [rf.checkpoint_name(6)]
    assert run_folder_state(run) == f"preempted, checkpoint {rf.checkpoint_name(6)}"

    monkeypatch.undo()
    assert main(["train", *args, "train.resume=auto"]) == 0
    assert folder_state(run) is FolderState.FINISHED
    assert not (run / rf.PREEMPTED).exists()  # the resumed run is no longer the preempted one
    final = rf.final_record(rf.read_metrics(run / rf.METRICS))
    assert run_folder_state(run) == f"finished, test acc {100 * final['test_acc']:.2f}%"
    assert rf.weights_file(run, "last").is_file()


def test_a_crashed_run_is_started_and_resume_auto_starts_it_again(tmp_path, shared_data, monkeypatch, capsys):
    forward, calls = losses.CrossEntropyLoss.forward, {"n": 0}

    def crashing_forward(self, logits, targets):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return forward(self, logits, targets)

    monkeypatch.setattr(losses.CrossEntropyLoss, "forward", crashing_forward)
    args = train_args(shared_data, tmp_path, "crash", "model.args={hidden: [16]}", "train.epochs=1")
    with pytest.raises(RuntimeError, match="simulated crash"):  # a bug's traceback: the process dies here
        main(["train", *args])
    run = tmp_path / "crash"
    assert folder_state(run) is FolderState.STARTED
    assert rf.read_metrics(run / rf.METRICS) and not rf.complete_checkpoints(run / rf.CHECKPOINTS)
    assert run_folder_state(run) == "started, no checkpoint"

    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", *args, "train.resume=auto"]) == 0
    assert f"no complete checkpoint in {run}: starting that run again" in capsys.readouterr().err
    assert folder_state(run) is FolderState.FINISHED
