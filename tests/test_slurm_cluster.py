"""On a real SLURM cluster (two slurmd nodes, .ci/slurm_cluster.sh): `visionlaunch submit` trains across two nodes
exactly like two local processes; a job that gets its preemption signal checkpoints, requeues itself, resumes
and ends with the same weights as an uninterrupted job; the requeue cap holds and `submit --resume` continues;
a job that fails for another reason is not requeued; sbatch's refusals come back with sbatch's own message and
nothing submitted; `visionlaunch jobs` lists the jobs with their run folders.

Skips loudly without sbatch on a developer machine; fails in CI (CI=true) when the cluster is missing.
"""

import json
from pathlib import Path
import random
import re
import subprocess
import time

import pytest

from tests.run_helpers import (DETERMINISTIC, FAULT_TRAIN_PY, FCN, assert_same_records, max_weight_difference, records,
                               require_mnist, run, train_args, two_process_launcher)
from tests.slurm_helpers import cancel, job_info, require_cluster, wait_for_job
from visionlaunch.launch.cli import main
from visionlaunch.runfolder import PREEMPTED
from visionlaunch.slurm.jobs import RECORDS, read_records

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    require_cluster()
    data = require_mnist()
    out = tmp_path_factory.mktemp("slurm_runs")
    cache = str(tmp_path_factory.mktemp("cache"))
    # The reference: the README's CPU recipe, 2 local processes.
    proc = run([*two_process_launcher(), *train_args(data, out, "local", *DETERMINISTIC)],
               VISIONLAUNCH_CACHE=cache, WANDB_MODE="disabled")
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield {"data": data, "out": out, "cache": cache}
    cancel(r["job_id"] for r in read_records(out))  # whatever a failed test left queued or running


@pytest.fixture
def job_env(ctx, monkeypatch):
    # sbatch hands the submitting environment to the job (--export=ALL, the default).
    monkeypatch.setenv("VISIONLAUNCH_CACHE", ctx["cache"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("VL_TEST_FAULT", raising=False)
    return monkeypatch


def _submit(capsys, *argv) -> str:
    capsys.readouterr()
    code = main(["submit", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    match = re.search(r"submitted job (\d+)", out)
    assert match, out
    return match.group(1)


def _log(run_dir, job_id) -> str:
    path = run_dir / "slurm" / f"{job_id}.out"
    return path.read_text(errors="replace") if path.is_file() else "<no log>"


def _wait_for_steps(run_dir, n: int, job_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count('"kind": "step"') >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not reach step {n} in {timeout} s: {job_info(job_id)}\n{_log(run_dir, job_id)[-3000:]}")


def test_two_node_job_trains_exactly_like_two_local_processes(ctx, job_env, capsys):
    out = ctx["out"]
    job = _submit(capsys, "--nodes", "2", "--", *train_args(ctx["data"], out, "two_nodes", *DETERMINISTIC))
    info = wait_for_job(job, 300)
    run_dir = out / "two_nodes"
    log = _log(run_dir, job)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-4000:]}"
    assert info["NumNodes"] == "2" and info["NodeList"] == "n[1-2]"
    assert "2 node(s) x 1 process(es)" in log and "srun: error" not in log
    assert "processes: 2" in (run_dir / "run.yaml").read_text()
    # The same computation as the README's 2-process recipe on one machine: every logged loss and accuracy.
    assert_same_records(records(out / "local"), records(run_dir), tol=1e-6)
    assert max_weight_difference(out / "local", run_dir) <= 1e-6
    assert (run_dir / "slurm" / "job.sh").is_file()


def test_preempted_job_requeues_resumes_and_ends_with_the_same_weights(ctx, job_env, capsys):
    out = ctx["out"]
    if not (out / "two_nodes" / "weights" / "last.pt").is_file():
        pytest.skip("needs the uninterrupted two-node job of the previous test")
    job_env.setenv("VL_TEST_FAULT", "sleep=0.2")  # slow steps (numerics untouched) so that the signal lands mid-run
    at = random.randint(3, 45)  # of 70 optimizer steps over the two epochs
    run_dir = out / "preempted"
    job = _submit(capsys, "--nodes", "2", "--script", str(FAULT_TRAIN_PY), "--",
                  *train_args(ctx["data"], out, "preempted", *DETERMINISTIC))
    _wait_for_steps(run_dir, at, job)
    # What SLURM does near the time limit with --signal=B:USR2@N: the signal goes to the batch shell only.
    subprocess.run(["scancel", "--signal=USR2", "--batch", job], check=True, capture_output=True, timeout=30)
    info = wait_for_job(job, 400)
    log = _log(run_dir, job)
    assert info["JobState"] == "COMPLETED", f"signal at step {at}: {info}\n{log[-5000:]}"
    assert info["Restarts"] == "1"
    assert "USR2 received" in log and "stopped by SIGUSR2 after step" in log
    assert f"requeueing job {job} (requeue 1 of at most 5)" in log
    assert f"job {job} attempt 2" in log and "resuming from" in log
    assert not (run_dir / PREEMPTED).exists()  # cleared by the resumed run
    resumed = (run_dir / "run.yaml").read_text()
    assert resumed.count("from: ") == 1
    # Bitwise the same run as the uninterrupted two-node job.
    assert max_weight_difference(out / "two_nodes", run_dir) == 0.0, f"signal at step {at}"
    assert_same_records(records(out / "two_nodes"), records(run_dir), tol=0.0)


def test_requeue_cap_then_submit_resume_continues_the_run(ctx, job_env, capsys):
    out = ctx["out"]
    job_env.setenv("VL_TEST_FAULT", "sleep=0.1")
    run_dir = out / "capped"
    args = train_args(ctx["data"], out, "capped", *DETERMINISTIC)
    job = _submit(capsys, "--max-requeues", "0", "--script", str(FAULT_TRAIN_PY), "--", *args)
    _wait_for_steps(run_dir, 5, job)
    subprocess.run(["scancel", "--signal=USR2", "--batch", job], check=True, capture_output=True, timeout=30)
    info = wait_for_job(job, 300)
    log = _log(run_dir, job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "75:0" and info["Restarts"] == "0", f"{info}\n{log}"
    assert "already requeued 0 time(s) (the cap)" in log
    marker = json.loads((run_dir / PREEMPTED).read_text())
    assert marker["signal"] == "SIGUSR2" and marker["slurm_job_id"] == job

    job2 = _submit(capsys, "--resume", str(run_dir))
    info = wait_for_job(job2, 300)
    log2 = _log(run_dir, job2)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log2[-4000:]}"
    checkpoint = run_dir / "checkpoints" / f"step-{marker['step']:08d}"
    assert f"resuming from {checkpoint}" in log2
    final = [r for r in records(run_dir) if r["kind"] == "final"]
    assert len(final) == 1 and final[0]["steps"] == 2 * (1700 // 48)
    assert [r["job_id"] for r in read_records(out)][-2:] == [job, job2]


def test_a_job_that_fails_otherwise_is_not_requeued_and_jobs_lists_it(ctx, job_env, capsys, tmp_path):
    out = ctx["out"]
    run_dir = out / "broken"
    job = _submit(capsys, "--", *train_args(tmp_path / "no-data-here", out, "broken"))
    info = wait_for_job(job, 240)
    log = _log(run_dir, job)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", f"{info}\n{log}"
    assert "visionlaunch: error:" in log and "requeueing" not in log
    # The trainer's set-up failure removed what it made and kept the job's script and log.
    assert sorted(p.name for p in run_dir.iterdir()) == ["slurm"]

    capsys.readouterr()
    assert main(["jobs", "--runs", str(out)]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith(job + " "))
    assert "FAILED" in row and "not started" in row and str(run_dir) in row
    assert "sacct is not available" in listing  # this cluster has no accounting: said, not hidden
    for r in read_records(out):
        if (out / "two_nodes").is_dir() and r["run_dir"] == str(out / "two_nodes"):
            assert "finished" in next(line for line in listing.splitlines() if line.startswith(r["job_id"] + " "))


@pytest.mark.parametrize("slurm_args, sbatch_says", [
    (["--partition", "nosuchpartition"], "Invalid partition name specified"),
    (["--partition", "short", "--time", "00:10:00"], "Requested time limit is invalid"),
], ids=["unknown-partition", "over-the-time-limit"])
def test_sbatch_refusal_shows_its_message_and_leaves_nothing(ctx, job_env, capsys, slurm_args, sbatch_says):
    out = ctx["out"]
    before = (out / RECORDS).read_text() if (out / RECORDS).is_file() else ""
    queued_before = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True,
                                   timeout=30).stdout.split()
    code = main(["submit", *slurm_args, "--", *train_args(ctx["data"], out, "refused")])
    err = capsys.readouterr().err
    assert code == 2
    assert "sbatch refused the job" in err and sbatch_says in err and "Nothing was submitted" in err
    assert not (out / "refused").exists()
    assert ((out / RECORDS).read_text() if (out / RECORDS).is_file() else "") == before
    queued_after = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True,
                                  timeout=30).stdout.split()
    assert sorted(queued_after) == sorted(queued_before)


def _ablation_file(tmp_path, data, name="tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"base: {FCN}\n"
        "overrides:\n"
        f"  data.root: {data}\n"
        "  data.train_subset: 1000\n  data.test_subset: 300\n  data.val_size: 200\n"
        "  model.args: {hidden: [16]}\n  train.epochs: 1\n  train.batch_size: 50\n  report.figures: false\n"
        "grid:\n  optim.lr: [0.05, 0.2]\n")
    return path


def test_ablate_slurm_runs_one_array_task_per_variant_then_builds_the_table(ctx, job_env, capsys, tmp_path):
    out_dir = ctx["out"] / "ablation"
    capsys.readouterr()
    assert main(["ablate", str(_ablation_file(tmp_path, ctx["data"])), "--slurm", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    array_id = re.search(r"submitted job array (\d+): 2 task\(s\)", printed).group(1)
    after_id = re.search(r"then job (\d+) \(after every task has ended\)", printed).group(1)
    assert "afterany" in job_info(after_id).get("Dependency", "") or job_info(after_id).get("JobState") != "PENDING"
    info = wait_for_job(after_id, 300)
    assert info["JobState"] == "COMPLETED", info
    for task in ("0", "1"):
        assert job_info(f"{array_id}_{task}").get("JobState") == "COMPLETED"
    table = (out_dir / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| lr=")]
    assert len(rows) == 2 and all(row.rstrip().endswith("| ok |") for row in rows), table
    # Built after both runs had finished: newer than either run's metrics.
    runs = [p for p in out_dir.iterdir() if (p / "metrics.jsonl").is_file()]
    assert len(runs) == 2
    assert (out_dir / "table.md").stat().st_mtime >= max((p / "metrics.jsonl").stat().st_mtime for p in runs)
    assert all(records(p)[-1]["kind"] == "final" for p in runs)
    # Each task ran its run's own job script, which stays there for `submit --resume`.
    assert all((p / "slurm" / "job.sh").is_file() for p in runs)
    capsys.readouterr()
    assert main(["jobs", "--runs", str(out_dir)]) == 0
    listing = capsys.readouterr().out
    assert f"{array_id}_0 " in listing and f"{array_id}_1 " in listing and "ablation table written" in listing


def test_a_refused_array_leaves_nothing_behind(ctx, job_env, capsys, tmp_path):
    out_dir = ctx["out"] / "refused_ablation"
    code = main(["ablate", str(_ablation_file(tmp_path, ctx["data"], "refused")), "--slurm", "--partition",
                 "nosuchpartition", "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Invalid partition name specified" in err
    assert not out_dir.exists()
