"""`visionlaunch submit` and `jobs` without a cluster: bad input stops before anything is written or submitted,
with one clear message each; --dry-run prints the script; and the trainer's side of the contract (a run folder
that only holds its job's slurm/ folder is started in place and keeps it; a preempted run leaves preempted.json,
which its resumption clears). The submissions themselves run on the real cluster in test_slurm_cluster.py."""

import json
import os
import signal
import subprocess

import pytest

from tests.run_helpers import FCN, records, signal_at_training_step, train_args
from visionlaunch.launch.cli import main
from visionlaunch.runfolder import PREEMPTED
from visionlaunch.slurm.jobs import RECORDS, format_statuses, job_statuses, record_submission
from visionlaunch.trainers.preemption import PREEMPTED_EXIT_CODE

TINY = ["train.epochs=1", "data.train_subset=600", "data.test_subset=200", "data.val_size=100",
        "model.args={hidden: [16]}", "train.progress=false", "report.figures=false", "train.batch_size=50"]


@pytest.fixture
def no_sbatch(tmp_path, monkeypatch):
    """A PATH with bash and python but no SLURM commands."""
    bin_dir = tmp_path / "bin-without-slurm"
    bin_dir.mkdir()
    for tool in ("bash", "sh"):
        os.symlink(f"/bin/{tool}", bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))


def _submit(capsys, *argv):
    code = main(["submit", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_sbatch_on_path_stops_before_writing_anything(tmp_path, no_sbatch, capsys):
    code, out, err = _submit(capsys, "--nodes", "2", "--", "--config", str(FCN), f"output.dir={tmp_path}",
                             "output.name=r1")
    assert code == 2
    assert "sbatch is not on PATH" in err and "--dry-run" in err
    assert not (tmp_path / "r1").exists() and not (tmp_path / RECORDS).exists()


def test_dry_run_prints_the_script_and_writes_nothing(tmp_path, no_sbatch, capsys):
    code, out, err = _submit(capsys, "--dry-run", "--nodes", "2", "--time", "01:00:00", "--", "--config", str(FCN),
                             f"output.dir={tmp_path}", "output.name=r1", "report.ident=a $(b) `c`")
    assert code == 0, err
    assert out.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in out and "#SBATCH --time=01:00:00" in out
    assert "'report.ident=a $(b) `c`'" in out  # quoted, literally
    assert "output.name=r1" in out and "train.resume=auto" in out
    assert not (tmp_path / "r1").exists()


def test_a_run_without_a_name_gets_one_so_that_its_requeue_finds_it(tmp_path, no_sbatch, capsys):
    code, out, _ = _submit(capsys, "--dry-run", "--", "--config", str(FCN), f"output.dir={tmp_path}")
    assert code == 0
    name = next(w for w in out.split() if w.startswith("output.name=")).split("=", 1)[1]
    assert name.startswith("mnist_fcn-") and f"--output={tmp_path / name / 'slurm'}/%j.out" in out


@pytest.mark.parametrize("slurm_args, train_extra, message", [
    (["--nodes", "3", "--processes", "4"], [], "--processes 4 does not divide evenly over --nodes 3"),
    (["--nodes", "2", "--processes", "4"], ["train.batch_size=50"], "must divide evenly into 4 process(es)"),
    ([], ["train.resume=runs/other"], "a SLURM job always continues its own run folder"),
    ([], ["optim.learning_rate=0.1"], "unknown key 'optim.learning_rate'"),
    (["--time", "tomorrow"], [], "is not a SLURM time"),
], ids=["nodes-do-not-divide-processes", "batch-does-not-divide", "resume-other-run", "bad-config", "bad-time"])
def test_bad_input_stops_before_anything_is_written(tmp_path, capsys, slurm_args, train_extra, message):
    code, _, err = _submit(capsys, *slurm_args, "--", "--config", str(FCN), f"output.dir={tmp_path}",
                           "output.name=r1", *train_extra)
    assert code == 2
    assert message in err, err
    assert not (tmp_path / "r1").exists() and not (tmp_path / RECORDS).exists()


def test_no_training_arguments(capsys):
    code, _, err = _submit(capsys, "--nodes", "2")
    assert code == 2 and "give them after `--`" in err


def test_an_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "keep.txt").write_text("mine")
    code, _, err = _submit(capsys, "--", "--config", str(FCN), f"output.dir={tmp_path}", "output.name=r1")
    assert code == 2 and "already exists" in err and "visionlaunch submit --resume" in err
    assert (tmp_path / "r1" / "keep.txt").read_text() == "mine"


def test_resume_needs_an_existing_submitted_run_folder(tmp_path, capsys):
    code, _, err = _submit(capsys, "--resume", str(tmp_path / "missing"))
    assert code == 2 and "there is no such run folder" in err
    (tmp_path / "manual").mkdir()
    code, _, err = _submit(capsys, "--resume", str(tmp_path / "manual"))
    assert code == 2 and "has no slurm/job.sh" in err
    code, _, err = _submit(capsys, "--resume", str(tmp_path / "manual"), "--", "--config", str(FCN))
    assert code == 2 and "takes no training arguments" in err


def test_jobs_reads_the_records_and_the_run_folders_without_slurm(tmp_path, no_sbatch, capsys):
    assert main(["jobs", "--runs", str(tmp_path)]) == 0
    assert "no jobs submitted" in capsys.readouterr().out
    (tmp_path / "a" / "slurm").mkdir(parents=True)
    record_submission(tmp_path, {"job_id": "17", "run_dir": str(tmp_path / "a")})
    record_submission(tmp_path, {"job_id": "18", "run_dir": str(tmp_path / "gone")})
    statuses, note = job_statuses(tmp_path)
    assert [(s.job_id, s.slurm_state, s.run_state) for s in statuses] == [
        ("17", "unknown", "not started"), ("18", "unknown", "run folder missing")]
    assert "neither sacct nor squeue answered" in note
    assert "17" in format_statuses(statuses, note)


def test_a_run_folder_holding_only_its_job_is_started_in_place_and_keeps_it(tmp_path, shared_data):
    run_dir = tmp_path / "r1"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "slurm" / "job.sh").write_text("#!/bin/bash\n")
    (run_dir / "slurm" / "5.out").write_text("log so far\n")
    args = ["--config", str(FCN), f"data.root={shared_data}", f"output.dir={tmp_path}", "output.name=r1",
            "train.resume=auto", *TINY]
    assert main(["train", *args]) == 0
    assert (run_dir / "slurm" / "5.out").read_text() == "log so far\n"
    assert [r["kind"] for r in records(run_dir)][-1] == "final"
    # Without train.resume=auto an existing folder is still refused, job files or not.
    (tmp_path / "r2" / "slurm").mkdir(parents=True)
    assert main(["train", *args[:-len(TINY) - 2], "output.name=r2", *TINY]) == 2


def test_a_failed_start_removes_what_it_made_but_keeps_the_job_files(tmp_path, capsys):
    run_dir = tmp_path / "r1"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "slurm" / "5.out").write_text("log so far\n")
    code = main(["train", "--config", str(FCN), f"data.root={tmp_path / 'nothing'}", f"output.dir={tmp_path}",
                 "output.name=r1", "train.resume=auto", *TINY])
    assert code == 2 and "visionlaunch: error:" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == ["slurm"]
    assert (run_dir / "slurm" / "5.out").read_text() == "log so far\n"


def test_preemption_leaves_a_marker_that_the_resumed_run_clears(tmp_path, shared_data, capsys, monkeypatch):
    remove_fault = signal_at_training_step(monkeypatch, signal.SIGUSR2, 4)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    args = train_args(shared_data, tmp_path, "m", "train.resume=auto", "model.args={hidden: [16]}",
                      "train.batch_size=50")
    assert main(["train", *args]) == PREEMPTED_EXIT_CODE
    marker = json.loads((tmp_path / "m" / PREEMPTED).read_text())
    assert marker["signal"] == "SIGUSR2" and marker["step"] == 4 and marker["slurm_job_id"] == "4242"
    assert marker["checkpoint"] == str(tmp_path / "m" / "checkpoints" / "step-00000004")

    remove_fault()
    assert main(["train", *args]) == 0
    assert not (tmp_path / "m" / PREEMPTED).exists()


def test_squeue_ids_are_matched_to_recorded_jobs_and_array_tasks():
    from visionlaunch.slurm.jobs import reported_as
    assert reported_as("123", "123") and reported_as("123_4", "123") and not reported_as("1234", "123")
    assert reported_as("123_4", "123_4") and not reported_as("123_5", "123_4") and not reported_as("12_4", "123_4")
    assert reported_as("123_[2-7]", "123_4") and not reported_as("123_[5-7%2]", "123_4")
    assert reported_as("123_[0,3-5%2]", "123_4") and not reported_as("123_[0,3]", "123_4")


def _tiny_ablation(tmp_path, data_root):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"base: {FCN}\noverrides:\n  data.root: {data_root}\n  train.epochs: 1\n"
                    "grid:\n  optim.lr: ['0.05', '0.2']\n")
    return path


def test_ablate_slurm_dry_run_prints_the_array_and_its_follow_up(tmp_path, no_sbatch, capsys):
    out_dir = tmp_path / "abl"
    assert main(["ablate", str(_tiny_ablation(tmp_path, tmp_path)), "--slurm", "--dry-run", "--nodes", "2",
                 "--out", str(out_dir), "--", "train.batch_size=64"]) == 0
    printed = capsys.readouterr().out
    array, _, after = printed.partition("# ---- then, with --dependency=afterany:<array job id>:\n")
    assert "#SBATCH --array=0-1" in array and "#SBATCH --nodes=2" in array
    scripts_line = next(line for line in array.splitlines() if line.startswith("SCRIPTS=("))
    assert scripts_line.count(f"{out_dir.resolve()}/") == scripts_line.count("/slurm/job.sh") == 2
    assert 'exec bash "${SCRIPTS[$SLURM_ARRAY_TASK_ID]}"' in array
    assert "--table-only --out " + str(out_dir.resolve()) in after and "-- train.batch_size=64" in after
    assert "#SBATCH --no-requeue" in after
    for script in (array, after):
        assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0
    assert not out_dir.exists()


@pytest.mark.parametrize("flag, message", [("--rerun", "--rerun cannot be combined with --slurm"),
                                           ("--table-only", "--table-only runs nothing")])
def test_ablate_slurm_refuses_modes_that_cannot_work_on_a_cluster(tmp_path, capsys, flag, message):
    code = main(["ablate", str(_tiny_ablation(tmp_path, tmp_path)), "--slurm", flag, "--out", str(tmp_path / "a")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
