"""The batch script: arguments with spaces, quotes, `$()` and backticks reach the job literally (no shell
injection), every rendered script parses (`bash -n`), the #SBATCH lines say what was asked, and options that
cannot work stop with a clear message. No cluster needed: these read and run the rendered text with bash."""

import shlex
import subprocess
from pathlib import Path

import pytest

from visionlaunch.errors import VisionlaunchError
from visionlaunch.slurm.render import Job, SlurmOptions, render_script

NASTY = [
    "report.ident=two words",
    "report.ident=it's \"quoted\"",
    "report.ident=$(touch {canary})",
    "report.ident=`touch {canary}`",
    "report.ident=${{HOME}} $HOME; rm -rf / # & | > <",
    "report.ident=back\\slash\ttab",
    "report.ident=ünïcødé ✓",
    "report.ident=",
    "report.ident=-n",
    "report.ident=\"; exit 3; \"",
]


def _job(tmp_path: Path, train_args: list[str], **kw) -> Job:
    base = dict(run_name="r1", run_dir=tmp_path / "runs" / "r1", workdir=tmp_path, python="/usr/bin/python3",
                entry=["-m", "visionlaunch", "train"], train_args=train_args, use_cpu=True)
    base.update(kw)
    return Job(**base)


def _values_seen_by_bash(script: str, tmp_path: Path) -> dict:
    """Run the script's value block with bash (as the job would) and read back what the variables hold."""
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RUN_DIR="))
    end = next(i for i, line in enumerate(lines) if line.startswith("MARKER="))
    block = "\n".join(lines[start:end + 1])
    probe = block + '\nprintf "%s\\0" "$RUN_DIR" "$WORKDIR" "$PYTHON" "${#ENTRY[@]}" "${ENTRY[@]}" "${TRAIN_ARGS[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    words = out.stdout.decode().split("\0")[:-1]
    n_entry = int(words[3])
    return {"run_dir": words[0], "workdir": words[1], "python": words[2], "entry": words[4:4 + n_entry],
            "train_args": words[4 + n_entry:]}


def test_arguments_reach_the_job_literally(tmp_path):
    canary = tmp_path / "injected"
    args = ["--config", str(tmp_path / "my configs" / "x y.yaml"), *[a.format(canary=canary) for a in NASTY]]
    odd_dir = tmp_path / "runs $(touch x)" / "r `1`"
    job = _job(tmp_path, args, run_dir=Path("/runs/plain"), workdir=odd_dir, python=str(tmp_path / "py env/python"))
    script = render_script(SlurmOptions(nodes=2), job)
    seen = _values_seen_by_bash(script, tmp_path)
    assert seen["train_args"] == args
    assert seen["workdir"] == str(odd_dir) and seen["python"] == str(tmp_path / "py env/python")
    assert seen["entry"] == ["-m", "visionlaunch", "train"]
    assert not canary.exists() and not (tmp_path / "x").exists()  # nothing was executed while reading them


def test_the_whole_script_runs_without_executing_arguments(tmp_path):
    """The complete script under bash with stand-ins for srun/scontrol: srun receives every argument intact."""
    canary = tmp_path / "injected"
    args = ["--config", "c.yaml", *[a.format(canary=canary) for a in NASTY]]
    job = _job(tmp_path, args, python="python3")
    script = render_script(SlurmOptions(nodes=2), job)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun_args"
    (bin_dir / "srun").write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > {shlex.quote(str(record))}\nexit 0\n')
    (bin_dir / "scontrol").write_text("#!/bin/bash\n"
                                      'case "$1 $2" in "show hostnames") echo n1; echo n2;;'
                                      ' "show node") echo "NodeName=n1 Arch=x86_64 NodeAddr=10.0.0.7 Port=1";; esac\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "n[1-2]", "HOME": str(tmp_path)}
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    words = record.read_bytes().decode().split("\0")[:-1]
    assert words[-len(args):] == args
    assert not canary.exists()
    # One launcher per node, told its machine rank by SLURM, the head's NodeAddr, 2 processes in all.
    assert words[:4] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=0"]
    launch = words[words.index("python3"):]
    assert launch[:8] == ["python3", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
                          "--main_process_ip", "10.0.0.7"]
    assert words[4:6] == ["bash", "-c"] and "--machine_rank \"$SLURM_NODEID\"" in words[6]
    assert "visionlaunch: training ended with status 0" in proc.stdout


@pytest.mark.parametrize("opts", [
    SlurmOptions(),
    SlurmOptions(nodes=4, gpus_per_node=8, cpus_per_task=64, mem="500G", time="2-00:00:00", partition="gpu",
                 account="proj-1", qos="high", constraint="a100&ib", job_name="big", signal_seconds=300,
                 max_requeues=2, sbatch_lines=["--mail-type=END", "--exclusive"],
                 setup_lines=["module load cuda/12.1", "source ~/venvs/vl/bin/activate", "export X='a b'"]),
    SlurmOptions(nodes=3, processes=6, requeue=False),
], ids=["defaults", "everything", "no-requeue"])
def test_every_rendered_script_parses_and_asks_for_what_was_given(tmp_path, opts):
    script = render_script(opts, _job(tmp_path, ["--config", "c.yaml", "a=$(b)"]))
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    sbatch = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert f"--nodes={opts.nodes}" in sbatch and "--ntasks-per-node=1" in sbatch
    assert f"--signal=B:USR2@{opts.signal_seconds}" in sbatch
    assert ("--requeue" in sbatch) == opts.requeue and ("--no-requeue" in sbatch) == (not opts.requeue)
    assert f"--output={tmp_path / 'runs' / 'r1' / 'slurm' / '%j.out'}" in sbatch
    for name in ("mem", "time", "partition", "account", "qos", "constraint"):
        value = getattr(opts, name)
        assert (f"--{name}={value}" in sbatch) == (value is not None)
    for line in opts.sbatch_lines:
        assert line in sbatch
    for line in opts.setup_lines:
        assert line in script.splitlines()
    assert f"PROCS_PER_NODE={opts.procs_per_node}" in script
    assert f"MAX_REQUEUES={opts.max_requeues if opts.requeue else 0}" in script
    # sbatch only reads #SBATCH lines before the first command: all of them come first.
    first_command = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH"))


@pytest.mark.parametrize("opts, message", [
    (SlurmOptions(nodes=3, processes=4), "does not divide evenly over --nodes 3"),
    (SlurmOptions(nodes=2, gpus_per_node=2, processes=8), "one process per GPU at most"),
    (SlurmOptions(nodes=0), "at least one node"),
    (SlurmOptions(time="2 hours"), "is not a SLURM time"),
    (SlurmOptions(mem="lots"), "is not a SLURM memory size"),
    (SlurmOptions(partition="gpu debug"), "cannot go on an #SBATCH line"),
    (SlurmOptions(account='a"b'), "cannot go on an #SBATCH line"),
    (SlurmOptions(sbatch_lines=["mail-type=END"]), "is not an sbatch option"),
    (SlurmOptions(setup_lines=["module load a\nrm -rf /"]), "line break"),
    (SlurmOptions(setup_lines=["if [ -d /opt ]; then module load a"]), "does not parse (bash -n"),
    (SlurmOptions(max_requeues=-1), "--max-requeues -1"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_options_that_cannot_work_stop_with_a_clear_message(tmp_path, opts, message):
    with pytest.raises(VisionlaunchError, match=message.replace("(", r"\(").replace("$", r"\$")):
        render_script(opts, _job(tmp_path, ["--config", "c.yaml"]))


def test_a_log_path_with_spaces_is_refused_because_sbatch_splits_its_lines(tmp_path):
    with pytest.raises(VisionlaunchError, match="output.dir/output.name without spaces"):
        render_script(SlurmOptions(), _job(tmp_path, [], run_dir=tmp_path / "my runs" / "r1"))
