"""`visionlaunch ablate`: real tiny ablations on the MNIST sample embedded in the package (no data needed).

A 2x2 grid gives 4 runs whose table and CSV carry exactly the numbers of the run folders; one of them runs as a
separate `visionlaunch train` process first (as a cluster job would) and is skipped by the runner. A second
ablation crashes one setting at run time while the other finishes, and aggregates two seeds. Bad ablation files
fail before anything runs."""

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from tests.conftest import isolate_environment
from visionlaunch.ablation import load_ablation, run_ablation, write_ablation_results
from visionlaunch.ablation.plan import format_value
from visionlaunch.ablation.results import mean_std
from visionlaunch.config import load_config
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.reports.figures import mean_curve
from visionlaunch.runfolder import read_metrics

REPO = Path(__file__).resolve().parents[1]
FCN = str(REPO / "configs" / "mnist_fcn.yaml")
# Real MNIST images (the embedded sample), tiny: 800 training, 200 validation, 300 test images, a 16-unit MLP.
TINY = {"data.name": "mnist_sample", "data.train_subset": 1000, "data.val_size": 200, "data.test_subset": 300,
        "model.args": {"hidden": [16]}, "train.epochs": 2, "train.batch_size": 100, "report.figures": False,
        "report.ident": "tester"}
GRID = {"optim.lr": [0.05, 0.2], "train.ema_decay": [0.0, 0.9]}


def write_ablation(path: Path, **tree) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def final_of(run: Path) -> dict:
    return next(r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "final")


def csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------------------- 2x2 grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2x2 grid, one seed: one variant run as a separate `visionlaunch train` (a job), then the runner."""
    root = tmp_path_factory.mktemp("grid")
    file = write_ablation(root / "grid.yaml", base=FCN, overrides=TINY, grid=GRID, seeds=[0])
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, root)
        ablation = load_ablation(file, out=out)
        separate = ablation.variants[2]
        assert main(["train", *separate.train_args()]) == 0
        result = run_ablation(ablation, log=lambda message: None)
    return file, out, ablation, result, separate


def test_grid_of_2x2_gives_four_runs_and_a_table_with_their_numbers(grid):
    file, out, ablation, result, separate = grid
    assert [v.name for v in ablation.variants] == [
        "lr-0.05_ema_decay-0.0-seed0", "lr-0.05_ema_decay-0.9-seed0", "lr-0.2_ema_decay-0.0-seed0",
        "lr-0.2_ema_decay-0.9-seed0"]
    assert result.failed == [] and result.skipped == [separate.name] and len(result.ran) == 3
    rows = csv_rows(out / "table.csv")
    assert len(rows) == 4
    for variant, row in zip(ablation.variants, rows):
        run = out / variant.name
        final = final_of(run)
        tests = [r["acc"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch" and r["split"] == "test"]
        assert len(tests) == 2
        assert row["setting"] == variant.setting and row["status"] == "ok"
        assert (float(row["optim.lr"]), float(row["train.ema_decay"])) == (
            variant.config.optim.lr, variant.config.train.ema_decay)
        if variant.config.train.ema_decay:  # the EMA weights' accuracy, from the final record
            assert float(row["ema_test_acc_mean_pct"]) == pytest.approx(100 * final["test_ema_acc"], abs=1e-4)
        else:
            assert "test_ema_acc" not in final and row["ema_test_acc_mean_pct"] == ""
        assert float(row["final_test_acc_mean_pct"]) == pytest.approx(100 * final["test_acc"], abs=1e-4)
        assert float(row["best_test_acc_mean_pct"]) == pytest.approx(100 * max(tests), abs=1e-4)
        assert row["final_test_acc_std_pct"] == ""  # one seed: no spread
        assert float(row["time_s_mean"]) == pytest.approx(final["time"], abs=1e-4)
        assert int(row["parameters"]) == yaml.safe_load((run / "run.yaml").read_text())["parameters"]
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["optim"]["lr"] == variant.config.optim.lr and saved["train"]["seed"] == 0
    md = (out / "table.md").read_text()
    body = [line for line in md.splitlines() if line.startswith("| lr=")]
    assert len(body) == 4
    for variant, line in zip(ablation.variants, body):
        cells = [c.strip() for c in line.strip("|").split("|")]
        final = final_of(out / variant.name)
        assert cells[0] == variant.label
        assert cells[1] == f"{100 * final['test_acc']:.2f}"
        assert cells[3] == (f"{100 * final['test_ema_acc']:.2f}" if variant.config.train.ema_decay else "–")
        params = yaml.safe_load((out / variant.name / "run.yaml").read_text())["parameters"]
        assert cells[4] == "1/1" and cells[6:] == [f"{params:,}", "ok"]
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    plan = yaml.safe_load((out / "ablation.yaml").read_text())
    assert [v["train_args"] for v in plan["variants"]] == [v.train_args() for v in ablation.variants]


def test_the_runner_records_exit_status_of_what_it_ran_only(grid):
    _, out, ablation, _, separate = grid
    for variant in ablation.variants:
        status = out / "logs" / f"{variant.name}.json"
        if variant is separate:
            assert not status.exists()  # ran as its own job, so the runner never started it
        else:
            assert json.loads(status.read_text())["exit_code"] == 0
            assert "done in" in (out / "logs" / f"{variant.name}.log").read_text()


def test_train_args_resolve_to_the_validated_config(grid):
    _, out, ablation, _, _ = grid
    for variant in ablation.variants:
        args = variant.train_args()
        assert args[:2] == ["--config", FCN] and args[-3:] == [f"output.dir={out}", f"output.name={variant.name}",
                                                               "train.resume=auto"]
        assert load_config(FCN, args[2:]) == variant.config


def test_rerun_skips_finished_variants(grid, tmp_path, capsys):
    file, out, ablation, _, _ = grid
    copy = Path(shutil.copytree(out, tmp_path / "out"))
    before = {v.name: (copy / v.name / "metrics.jsonl").stat().st_mtime_ns for v in ablation.variants}
    assert main(["ablate", str(file), "--out", str(copy)]) == 0
    err = capsys.readouterr().err
    assert err.count("finished before, skipped") == 4
    assert {v.name: (copy / v.name / "metrics.jsonl").stat().st_mtime_ns for v in ablation.variants} == before


def test_table_only_rebuilds_the_same_table_from_the_run_folders(grid, tmp_path, capsys):
    file, out, *_ = grid
    copy = Path(shutil.copytree(out, tmp_path / "out"))
    shutil.rmtree(copy / "logs")  # the table needs only the run folders
    for name in ("table.md", "table.csv", "curves.png"):
        (copy / name).unlink()
    assert main(["ablate", str(file), "--out", str(copy), "--table-only"]) == 0
    assert (copy / "table.csv").read_text() == (out / "table.csv").read_text()
    assert (copy / "table.md").read_text() == (out / "table.md").read_text()
    assert (copy / "curves.png").is_file()
    assert (out / "table.md").read_text() in capsys.readouterr().out


def test_dry_run_lists_every_run_and_its_command_and_runs_nothing(grid, tmp_path, capsys):
    file, out, ablation, *_ = grid
    fresh = tmp_path / "fresh"
    assert main(["ablate", str(file), "--dry-run", "--out", str(fresh), "--", "train.epochs=1"]) == 0
    text = capsys.readouterr().out
    assert not fresh.exists()
    assert "4 runs (4 settings x 1 seed(s))" in text
    assert text.count("visionlaunch train --config") == 4 and text.count("train.epochs=1 ") == 4
    assert text.count("not run") == 4
    assert main(["ablate", str(file), "--dry-run", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("finished, would be skipped") == 4


def test_a_changed_plan_does_not_reuse_finished_runs_of_the_old_one(grid, tmp_path, capsys):
    file, out, *_ = grid
    copy = Path(shutil.copytree(out, tmp_path / "out"))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in copy.rglob("*"))
    changed = write_ablation(tmp_path / "grid.yaml", base=FCN, overrides={**TINY, "train.epochs": 3}, grid=GRID,
                             seeds=[0])
    assert main(["ablate", str(changed), "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "finished runs of another config" in err and "train.epochs: run 2, plan 3" in err and "--rerun" in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in copy.rglob("*")) == before  # nothing ran or changed


# ---------------------------------------------------------------------------------------------------- crash + seeds


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Two settings x two seeds; the first setting asks for a batch larger than the training set, which only the
    run itself finds out (after loading the data), so its runs fail while the other setting's runs go on."""
    root = tmp_path_factory.mktemp("crash")
    fixed = {k: v for k, v in TINY.items() if k != "train.batch_size"}  # the variant sets it
    file = write_ablation(root / "crash.yaml", base=FCN, overrides=fixed, seeds=[3, 4], variants=[
        {"name": "huge-batch", "label": "batch 5000", "overrides": ["train.batch_size=5000"]},
        {"name": "base", "label": "base config"},
    ])
    with pytest.MonkeyPatch.context() as mp:
        isolate_environment(mp, root)
        code = main(["ablate", str(file), "--out", str(root / "out")])
    return code, root / "out"


def test_a_crashed_variant_is_marked_failed_while_the_others_finish(crashed):
    code, out = crashed
    assert code == 1
    for seed in (3, 4):
        status = json.loads((out / "logs" / f"huge-batch-seed{seed}.json").read_text())
        assert status["exit_code"] == 2 and "no training step fits" in status["last_line"]
        assert not (out / f"huge-batch-seed{seed}").exists()  # bad input leaves no run folder
        assert final_of(out / f"base-seed{seed}")["test_acc"] is not None
    rows = {row["setting"]: row for row in csv_rows(out / "table.csv")}
    assert rows["huge-batch"]["status"] == "failed 2 of 2" and rows["huge-batch"]["seeds_ok"] == "0"
    assert rows["huge-batch"]["final_test_acc_mean_pct"] == ""
    md = (out / "table.md").read_text()
    assert "| batch 5000 | – | – | 0/2 | – | – | failed 2 of 2 |" in md
    assert "`huge-batch-seed3`: failed (exit 2: visionlaunch: error: no training step fits" in md


def test_seeds_are_aggregated_as_mean_and_sample_std(crashed):
    _, out = crashed
    finals = [final_of(out / f"base-seed{seed}") for seed in (3, 4)]
    accs = [100 * f["test_acc"] for f in finals]
    row = {row["setting"]: row for row in csv_rows(out / "table.csv")}["base"]
    assert row["status"] == "ok" and row["seeds_ok"] == row["seeds_total"] == "2"
    assert float(row["final_test_acc_mean_pct"]) == pytest.approx(statistics.mean(accs), abs=1e-4)
    assert float(row["final_test_acc_std_pct"]) == pytest.approx(statistics.stdev(accs), abs=1e-4)
    assert float(row["time_s_mean"]) == pytest.approx(statistics.mean(f["time"] for f in finals), abs=1e-4)
    seeds = [yaml.safe_load((out / f"base-seed{s}" / "config.yaml").read_text())["train"]["seed"] for s in (3, 4)]
    assert seeds == [3, 4]
    md = (out / "table.md").read_text()
    assert f"| base config | {statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} |" in md


# ---------------------------------------------------------------------------------------------------- bad input


BAD_FILES = {
    "unknown top-level key": ({"base": FCN, "grid": GRID, "seed": [1]}, "unknown top-level key 'seed'"),
    "unknown config key": ({"base": FCN, "grid": {"optim.learning_rate": [0.1, 0.2]}},
                           "unknown key 'optim.learning_rate'"),
    "bad value in one variant": ({"base": FCN, "grid": {"train.epochs": [1, 0]}},
                                 "variant epochs-0-seed0 (epochs=0) is not a valid run"),
    "bad model argument": ({"base": FCN, "variants": [{"name": "a"}, {"name": "b", "overrides": {
        "model.args": {"hiden": [8]}}}]}, "model 'fcn' has no argument 'hiden'"),
    "empty grid": ({"base": FCN, "grid": {}}, "the grid is empty"),
    "grid key without values": ({"base": FCN, "grid": {"optim.lr": []}}, "grid key 'optim.lr' needs a non-empty"),
    "empty variants": ({"base": FCN, "variants": []}, "variants is empty"),
    "grid and variants": ({"base": FCN, "grid": GRID, "variants": [{"name": "a"}]}, "it has both"),
    "neither": ({"base": FCN, "seeds": [0]}, "it has neither"),
    "conflict fixed vs grid": ({"base": FCN, "overrides": ["optim.lr=0.1"], "grid": GRID},
                               "conflicting overrides: the fixed overrides set optim.lr=0.1"),
    "conflict inside a key": ({"base": FCN, "overrides": {"model.args": {"hidden": [8]}},
                               "grid": {"model.args.hidden": [[16], [32]]}}, "conflicting overrides"),
    "key twice in one list": ({"base": FCN, "variants": [{"name": "a", "overrides": ["optim.lr=0.1", "optim.lr=0.2"]}]},
                              "variant 'a' set optim.lr=0.1 and variant 'a' set optim.lr=0.2"),
    "seed set twice": ({"base": FCN, "overrides": ["train.seed=3"], "grid": GRID}, "comes from seeds:"),
    "output managed": ({"base": FCN, "overrides": ["output.name=x"], "grid": GRID}, "which the ablation sets"),
    "duplicate variant names": ({"base": FCN, "variants": [{"name": "a"}, {"name": "a"}]}, "share the folder"),
    "unsafe variant name": ({"base": FCN, "variants": [{"name": "../up"}]}, "cannot be a folder name"),
    "unknown variant key": ({"base": FCN, "variants": [{"name": "a", "override": []}]}, "unknown key 'override'"),
    "missing base": ({"base": "nowhere.yaml", "grid": GRID}, "base config 'nowhere.yaml' not found"),
    "no base": ({"grid": GRID}, "has no base config"),
    "bad seeds": ({"base": FCN, "grid": GRID, "seeds": []}, "seeds must be a non-empty list"),
    "repeated seed": ({"base": FCN, "grid": GRID, "seeds": [1, 1]}, "repeat a seed"),
    "repeated grid value": ({"base": FCN, "grid": {"optim.lr": [0.1, 0.1]}}, "lists a value twice"),
    "bad override form": ({"base": FCN, "overrides": ["train.epochs"], "grid": GRID}, "cannot read the override"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_ablation_files_fail_before_anything_runs(case, tmp_path, capsys):
    tree, expected = BAD_FILES[case]
    file = write_ablation(tmp_path / "bad.yaml", **tree)
    out = tmp_path / "out"
    assert main(["ablate", str(file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionlaunch: error: ablation file") and expected in err, err
    assert not out.exists()


def test_command_line_overrides_replace_fixed_ones_but_not_varied_keys(tmp_path, capsys):
    file = write_ablation(tmp_path / "a.yaml", base=FCN, overrides={"train.epochs": 2}, grid=GRID)
    ablation = load_ablation(file, extra_overrides=["train.epochs=5"])
    assert {v.config.train.epochs for v in ablation.variants} == {5}
    assert main(["ablate", str(file), "--dry-run", "--", "optim.lr=0.3"]) == 2
    assert "the command-line overrides set optim.lr=0.3 and variant 'lr-0.05_ema_decay-0.0' set optim.lr=0.05" \
        in capsys.readouterr().err


def test_not_a_file_or_not_a_mapping(tmp_path, capsys):
    assert main(["ablate", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["ablate", str(tmp_path / "list.yaml")]) == 2
    assert "must hold a mapping" in capsys.readouterr().err


def test_table_only_without_any_run_says_so(tmp_path, capsys):
    file = write_ablation(tmp_path / "a.yaml", base=FCN, grid=GRID)
    assert main(["ablate", str(file), "--table-only", "--out", str(tmp_path / "out")]) == 2
    assert "nothing to tabulate" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_base_is_found_beside_the_ablation_file_and_names_are_readable(tmp_path):
    (tmp_path / "configs" / "ablations").mkdir(parents=True)
    shutil.copy(FCN, tmp_path / "configs" / "fcn.yaml")
    file = write_ablation(tmp_path / "configs" / "ablations" / "w.yaml", base="../fcn.yaml",
                          grid={"schedule.name": ["cosine", "constant"], "model.args": [{"hidden": [8, 8]}]})
    ablation = load_ablation(file)
    assert ablation.base == tmp_path / "configs" / "fcn.yaml"
    assert ablation.name == "w" and ablation.out_dir == Path("runs/ablations/w")
    assert [v.name for v in ablation.variants] == ["schedule.name-cosine_model.args-hidden-8-8-seed0",
                                                   "schedule.name-constant_model.args-hidden-8-8-seed0"]
    assert ablation.variants[0].label == "schedule.name=cosine, model.args={hidden: [8, 8]}"


@pytest.mark.parametrize("shipped", sorted((REPO / "configs" / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_ablation_files_are_valid_plans(shipped):
    ablation = load_ablation(shipped)
    assert len(ablation.variants) >= 4 and len(ablation.seeds) >= 2
    text = shipped.read_text()
    assert text.startswith("#") and "Cost:" in text  # each says what question it answers and what it costs


# ---------------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("value", [0.1, 1e-4, "cosine", "true", True, None, [32, 64], {"hidden": [8], "dropout": 0}])
def test_format_value_parses_back_to_the_same_value(value):
    assert yaml.safe_load(format_value(value)) == value


def test_mean_std_and_mean_curve():
    assert mean_std([]) == (None, None)
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.9, 0.8, 0.7])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)
    runs = [[{"kind": "epoch", "split": "test", "epoch": e, "acc": a} for e, a in zip((1, 2), accs)]
            for accs in ((0.5, 0.7), (0.7, 0.9), (0.6,))]
    epochs, mean, std = mean_curve(runs, "test", "acc")
    assert list(epochs) == [1, 2]
    assert mean == pytest.approx([0.6, 0.8]) and std == pytest.approx([0.1, statistics.stdev([0.7, 0.9])])
    assert mean_curve(runs, "val", "acc") is None


def test_write_ablation_results_reads_only_run_folders(grid, tmp_path):
    _, out, ablation, *_ = grid
    copy = Path(shutil.copytree(out, tmp_path / "out"))
    shutil.rmtree(copy / "logs")
    shutil.rmtree(copy / ablation.variants[0].name)  # one run missing: counted as not run, the rest still tabulated
    moved = load_ablation(ablation.source, out=copy)
    paths = write_ablation_results(moved)
    assert [p.name for p in paths] == ["table.md", "table.csv", "curves.png"]
    rows = csv_rows(copy / "table.csv")
    assert [r["status"] for r in rows] == ["not run 1 of 1", "ok", "ok", "ok"]
    with pytest.raises(VisionlaunchError, match="nothing to tabulate"):
        write_ablation_results(load_ablation(ablation.source, out=tmp_path / "empty"))


def test_rerun_replaces_a_finished_run(tmp_path, capsys):
    file = write_ablation(tmp_path / "one.yaml", base=FCN, overrides=TINY, variants=[{"name": "only"}], seeds=[0])
    out = tmp_path / "out"
    assert main(["ablate", str(file), "--out", str(out)]) == 0
    run = out / "only-seed0"
    first = (run / "run.yaml").stat().st_mtime_ns
    assert main(["ablate", str(file), "--out", str(out), "--rerun"]) == 0
    assert "running" in capsys.readouterr().err
    assert (run / "run.yaml").stat().st_mtime_ns != first
    records = read_metrics(run / "metrics.jsonl")
    assert sum(r["kind"] == "final" for r in records) == 1  # a fresh run folder, not the old one continued
    assert "train.resume=none output.overwrite=true" in (out / "logs" / "only-seed0.log").read_text()


def test_only_selects_runs_or_settings(grid, crashed, tmp_path, capsys):
    file, out, *_ = grid
    assert main(["ablate", str(file), "--dry-run", "--only", "lr-0.2_ema_decay-0.9", "--only",
                 "lr-0.05_ema_decay-0.0-seed0"]) == 0
    text = capsys.readouterr().out
    assert "selected: 2 of them" in text and text.count("visionlaunch train") == 2
    assert "output.name=lr-0.2_ema_decay-0.9-seed0 " in text and "output.name=lr-0.05_ema_decay-0.0-seed0 " in text
    assert main(["ablate", str(file), "--dry-run", "--only", "lr-0.3"]) == 2
    assert "has no run or setting 'lr-0.3'" in capsys.readouterr().err
    # The exit status covers the selected runs: the finished setting is fine though the other one failed.
    _, crash_out = crashed
    copy = Path(shutil.copytree(crash_out, tmp_path / "crash"))
    crash_file = crash_out.parent / "crash.yaml"
    assert main(["ablate", str(crash_file), "--out", str(copy), "--only", "base"]) == 0
    assert capsys.readouterr().err.count("finished before, skipped") == 2
    assert main(["ablate", str(crash_file), "--out", str(copy)]) == 1
