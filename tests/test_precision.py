"""train.precision: `auto` resolves by what the device computes natively (bf16, else fp32 on a CPU and fp16 on a GPU)
and says why; fp32 has the spellings no, false and "no" everywhere; a resumed or evaluated run keeps the precision
it was computed in."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.run_helpers import FCN, train_args
from visionlaunch.config import load_config
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.trainers import checkpoint as ckpt
from visionlaunch.trainers import precision as prec
from visionlaunch.trainers.precision import Precision, resolve_precision
from visionlaunch.trajectory import config_differences

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)
ONE_EPOCH = ["data.train_subset=500", "data.val_size=100", "train.epochs=1", "train.log_every=1"]


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend this CPU has (or lacks) native bf16 instructions."""
    def pretend(native: bool):
        monkeypatch.setattr(prec, "cpu_bf16_features", lambda: ["AVX-512 BF16"] if native else [])
    return pretend


@pytest.fixture
def gpu_bf16(monkeypatch):
    """Pretend a CUDA GPU with (A100) or without (V100) native bf16."""
    def pretend(native: bool):
        monkeypatch.setattr(prec, "cuda_bf16_native", lambda device: native)
        monkeypatch.setattr(prec, "_cuda_name", lambda device: "NVIDIA A100, compute capability 8.0" if native
                            else "Tesla V100, compute capability 7.0")
    return pretend


def test_auto_picks_bf16_where_the_cpu_computes_it_natively(cpu_bf16):
    cpu_bf16(True)
    p = resolve_precision("auto", CPU)
    assert (p.name, p.mixed_precision, p.half_dtype, p.note) == ("bf16", "bf16", torch.bfloat16, None)
    assert p.reason == "auto -> bf16: this CPU computes bf16 natively (AVX-512 BF16)"


def test_auto_picks_fp32_on_a_cpu_without_native_bf16(cpu_bf16):
    cpu_bf16(False)
    p = resolve_precision("auto", CPU)
    assert (p.name, p.mixed_precision, p.half_dtype, p.note) == ("fp32", "no", None, None)
    assert p.reason.startswith("auto -> fp32: this CPU has no native bf16")


def test_auto_picks_fp16_with_loss_scaling_on_a_gpu_without_bf16(gpu_bf16):
    gpu_bf16(False)
    p = resolve_precision("auto", GPU)
    assert (p.name, p.mixed_precision, p.half_dtype) == ("fp16", "fp16", torch.float16)
    assert p.reason.startswith("auto -> fp16 with loss scaling: this GPU has no native bf16 (Tesla V100")
    gpu_bf16(True)
    assert resolve_precision("auto", GPU).name == "bf16"


def test_an_explicit_precision_wins_and_emulated_bf16_gets_a_note(cpu_bf16):
    cpu_bf16(True)
    assert resolve_precision("fp32", CPU) == Precision("fp32", "fp32: set by train.precision")
    assert resolve_precision("bf16", CPU).note is None
    cpu_bf16(False)
    p = resolve_precision("bf16", CPU)
    assert p.name == "bf16" and "emulated, usually slower than fp32" in p.note and p.note.startswith("NOTE:")


def test_auto_gives_the_real_answer_on_this_machine():
    """Computed from the CPU flags the kernel reports, independently of torch's own checks that the product uses."""
    try:
        flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}
    except OSError:
        pytest.skip("no /proc/cpuinfo: the CPU's flags cannot be read independently here")
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_precision("auto", CPU).name == ("bf16" if native else "fp32")


@pytest.mark.parametrize("override", ["train.precision=no", "train.precision=false", "train.precision=fp32",
                                      'train.precision="no"', "train.precision=No", "train.precision=FALSE"])
def test_every_spelling_of_full_precision_is_fp32(override):
    assert load_config(None, [override]).train.precision == "fp32"


def test_precision_no_in_a_yaml_file_is_fp32(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("train:\n  precision: no\n")  # YAML 1.1 reads this as the boolean False
    assert load_config(path).train.precision == "fp32"


def test_other_booleans_are_not_a_precision():
    with pytest.raises(VisionlaunchError, match="train.precision.*'auto', 'fp32', 'bf16' or 'fp16'.*got True"):
        load_config(None, ["train.precision=yes"])


def test_runs_written_with_precision_no_compare_equal_to_fp32():
    dump = lambda *o: load_config(None, list(o)).model_dump(mode="json")  # noqa: E731
    old = dump("train.precision=fp32")
    old["train"]["precision"] = "no"  # what config.yaml recorded before fp32 was the name
    assert config_differences(old, dump("train.precision=fp32"), "run", "plan") == []
    assert config_differences(old, dump("train.precision=bf16"), "run", "plan") == [
        "train.precision: run 'fp32', plan 'bf16'"]


def test_half_inputs_need_a_half_type_or_auto():
    with pytest.raises(VisionlaunchError, match="half_inputs=true needs train.precision=bf16, fp16 or auto"):
        load_config(None, ["data.half_inputs=true", "train.precision=no"])
    assert load_config(None, ["data.half_inputs=true"]).data.half_inputs  # auto: half inputs when it picks a half type


# ------------------------------------------------------------------------------------------------- real runs


def _run(shared_data, tmp_path, name, *overrides, config=None):
    args = train_args(shared_data, tmp_path, name, *ONE_EPOCH, *overrides)
    if config is not None:
        args[1] = str(config)
    return main(["train", *args])


def _identity(run: Path) -> dict:
    return yaml.safe_load((run / "run.yaml").read_text())


def test_every_spelling_of_full_precision_trains_in_fp32(tmp_path, shared_data, capsys, cpu_bf16):
    cpu_bf16(True)  # where auto would choose bf16: fp32 must come from the setting
    preset = tmp_path / "preset.yaml"
    preset.write_text(Path(FCN).read_text().rstrip() + "\n  precision: no\n")  # the last section is train:
    runs = {"as-no": ["train.precision=no"], "as-false": ["train.precision=false"],
            "as-fp32": ["train.precision=fp32"]}
    for name, overrides in runs.items():
        assert _run(shared_data, tmp_path, name, *overrides) == 0
        assert "precision fp32: set by train.precision" in capsys.readouterr().err
    assert _run(shared_data, tmp_path, "yaml", config=preset) == 0
    assert "precision fp32: set by train.precision" in capsys.readouterr().err
    losses = {}
    for name in [*runs, "yaml"]:
        assert _identity(tmp_path / name)["precision"] == "fp32"
        assert yaml.safe_load((tmp_path / name / "config.yaml").read_text())["train"]["precision"] == "fp32"
        losses[name] = [r["loss"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").open())
                        if r["kind"] == "step"]
    assert len({tuple(v) for v in losses.values()}) == 1  # one computation under four spellings


def test_auto_states_its_choice_in_the_log_run_yaml_and_report(tmp_path, shared_data, capsys, cpu_bf16):
    cpu_bf16(False)
    assert _run(shared_data, tmp_path, "auto") == 0
    err = capsys.readouterr().err
    first = err.splitlines()[:3]
    assert any(line.startswith("precision auto -> fp32: this CPU has no native bf16") for line in first), first
    identity = _identity(tmp_path / "auto")
    assert identity["precision"] == "fp32" and identity["precision_reason"].startswith("auto -> fp32: ")
    assert "auto -&gt; fp32: this CPU has no native bf16" in (tmp_path / "auto" / "report.html").read_text()


def test_explicit_bf16_on_a_cpu_that_emulates_it_prints_one_note(tmp_path, shared_data, capsys, cpu_bf16):
    cpu_bf16(False)
    assert _run(shared_data, tmp_path, "bf16", "train.precision=bf16") == 0
    err = capsys.readouterr().err
    assert err.count("emulated, usually slower than fp32") == 1
    assert _identity(tmp_path / "bf16")["precision"] == "bf16"


def test_a_run_resumed_where_auto_resolves_differently_says_so(tmp_path, shared_data, capsys, cpu_bf16):
    cpu_bf16(True)
    assert _run(shared_data, tmp_path, "run", "train.resume=auto") == 0
    capsys.readouterr()
    cpu_bf16(False)  # the same command on a machine without native bf16 (from its last, final checkpoint)
    assert _run(shared_data, tmp_path, "run", "train.resume=auto") == 2
    err = capsys.readouterr().err
    assert "train.precision: checkpoint 'bf16', now 'fp32'" in err and "train.epochs" not in err
    assert "The checkpoint was computed in bf16; here auto -> fp32" in err and "set train.precision=bf16" in err
    # As the message says: the explicit precision it was computed in continues it (emulated here, with the NOTE).
    assert _run(shared_data, tmp_path, "run", "train.resume=auto", "train.precision=bf16") == 0
    err = capsys.readouterr().err
    assert "is the end of training" in err and err.count("emulated, usually slower than fp32") == 1


def test_a_checkpoint_of_precision_no_continues_under_auto_that_resolves_to_fp32(tmp_path, cpu_bf16):
    """Checkpoints written before auto existed recorded train.precision 'no' and no resolved precision."""
    for name in (ckpt.TRAINER_STATE, "optimizer.bin", "random_states_0.pkl", ckpt.RANK_STATE.format(0),
                 "model.safetensors"):
        (tmp_path / name).touch()
    old = load_config(None, ["train.precision=fp32"]).model_dump(mode="json")
    old["train"]["precision"] = "no"
    meta, now = {"config": old, "world_size": 1}, load_config(None).model_dump(mode="json")
    ckpt.validate(tmp_path, meta, now, 1, Precision("fp32", "auto -> fp32: test"))  # no difference
    with pytest.raises(VisionlaunchError, match="train.precision: checkpoint 'fp32', now 'bf16'"):
        ckpt.validate(tmp_path, meta, now, 1, Precision("bf16", "auto -> bf16: test"))


def test_evaluate_computes_in_the_precision_the_run_trained_in(tmp_path, cpu_bf16):
    from visionlaunch.launch.evaluate import run_accelerator

    cpu_bf16(False)  # auto would be fp32 here; the run's run.yaml says it computed in bf16
    (tmp_path / "run.yaml").write_text("precision: bf16\nprecision_reason: 'auto -> bf16: elsewhere'\n")
    cfg = load_config(None, ["train.device=cpu"])
    assert run_accelerator(tmp_path, cfg).mixed_precision == "bf16"
    assert run_accelerator(tmp_path, load_config(None, ["train.device=cpu", "train.precision=fp32"])
                           ).mixed_precision == "no"
    (tmp_path / "run.yaml").unlink()  # nothing recorded: auto resolves here
    assert run_accelerator(tmp_path, cfg).mixed_precision == "no"


def test_half_inputs_follow_what_auto_chose():
    from types import SimpleNamespace

    from visionlaunch.trainers.setup import batch_pipeline

    cfg, data = load_config(None, ["data.half_inputs=true"]), SimpleNamespace(mean=(0.5,), std=(0.25,))
    assert batch_pipeline(cfg, data, CPU, 0, torch.bfloat16).dtype == torch.bfloat16
    assert batch_pipeline(cfg, data, CPU, 0, None).dtype == torch.float32  # auto -> fp32: float32 inputs


def test_an_ablation_file_may_spell_full_precision_no(tmp_path):
    from visionlaunch.ablation import load_ablation

    path = tmp_path / "precision.yaml"
    path.write_text(f"base: {FCN}\ngrid:\n  train.precision: [bf16, no, 'no', fp32]\n")  # no: YAML's False
    with pytest.raises(VisionlaunchError):  # three spellings of one setting: the plan would run it three times
        load_ablation(path, out=tmp_path / "out")
    path.write_text(f"base: {FCN}\ngrid:\n  train.precision: [bf16, no]\n")
    plan = load_ablation(path, out=tmp_path / "out")
    assert [v.config.train.precision for v in plan.variants] == ["bf16", "fp32"]


def test_ranks_that_resolve_auto_differently_are_named():
    from visionlaunch.trainers.distributed import precision_disagreement

    same = [(0, "a", "bf16", "auto -> bf16: x"), (1, "b", "bf16", "auto -> bf16: x")]
    assert precision_disagreement(same) is None
    mixed = [(2, "intel-1", "fp32", "auto -> fp32: this CPU has no native bf16"), (0, "amd-1", "bf16",
             "auto -> bf16: this CPU computes bf16 natively (AVX-512 BF16)"), (1, "amd-1", "bf16", "auto -> bf16: ...")]
    message = precision_disagreement(mixed)
    assert message.startswith("the processes of this run would compute in different precisions (rank 0 on amd-1: "
                              "auto -> bf16: this CPU computes bf16 natively (AVX-512 BF16); rank 2 on intel-1: "
                              "auto -> fp32: this CPU has no native bf16)")
    assert "Set train.precision to one of bf16, fp32 for every process" in message


@pytest.mark.timeout(300)
def test_two_processes_whose_cpus_differ_stop_before_training(tmp_path, shared_data):
    """A real 2-rank gloo group in which rank 1's CPU reports no native bf16 (a sitecustomize pretends so, as on a
    cluster of mixed nodes): auto would give bf16 on rank 0 and fp32 on rank 1; both stop with one message."""
    from tests.run_helpers import TRAIN_PY, run, two_process_launcher

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') in ('0', '1'):\n"
        "    import torch\n"
        "    native = os.environ['RANK'] == '0'\n"
        "    torch.cpu._is_avx512_bf16_supported = lambda: native\n"
        "    torch.cpu._is_amx_tile_supported = lambda: False\n")
    proc = run([*two_process_launcher(TRAIN_PY), *train_args(shared_data, tmp_path, "mixed", "train.precision=auto",
                                                              "train.epochs=1")],
               PYTHONPATH=f"{shim}:{Path(__file__).resolve().parents[1] / 'src'}", WANDB_MODE="disabled")
    assert proc.returncode != 0
    assert proc.stderr.count("the processes of this run would compute in different precisions (rank 0 on ") == 2, \
        proc.stderr[-3000:]
    assert "rank 1 on " in proc.stderr and "auto -> fp32: this CPU has no native bf16" in proc.stderr
    assert not (tmp_path / "mixed").exists()  # stopped before the run folder
