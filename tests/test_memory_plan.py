"""The memory plan (trainers/memory_plan.py): the memory a process may fill, honouring a cgroup limit (v1 or v2);
in memory when the node's copies fit half of it, else out of core with the torch backend, said in train's first
line; a loader set to tensor explicitly stops the run instead; a file that cannot be decoded out of core stops the
run naming it."""

import shutil

import numpy as np
import pytest
import torch

from tests.test_out_of_core import _args, _write_folder
from visionlaunch.config import DataConfig
from visionlaunch.datasets.folder_index import FolderSource
from visionlaunch.datasets.loaders import SourceLoader
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.cli import main
from visionlaunch.trainers import memory_plan
from visionlaunch.trainers.memory_plan import memory_available, plan_residency

GIB = 2**30


def _meminfo(tmp_path, available_kib):
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       99999999 kB\nMemFree:         1000 kB\nMemAvailable:   {available_kib} kB\n")
    return path


def test_memory_available_honours_a_cgroup_limit(tmp_path):
    meminfo = _meminfo(tmp_path, 8 * 2**20)  # 8 GiB available on the machine
    none = tmp_path / "none"
    none.mkdir()
    assert memory_available(none, meminfo)[0] == 8 * GIB
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{3 * GIB}\n")
    (v2 / "memory.current").write_text(f"{GIB}\n")
    room, where = memory_available(v2, meminfo)
    assert room == 2 * GIB and "memory.max" in where  # the limit less what the group already uses
    (v2 / "memory.max").write_text("max\n")
    assert memory_available(v2, meminfo)[0] == 8 * GIB  # v2 without a limit
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("0\n")
    assert memory_available(v1, meminfo) == (4 * GIB, "room under the cgroup memory limit (4.00 GiB, "
                                                      "memory/memory.limit_in_bytes)")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
    assert memory_available(v1, meminfo)[0] == 8 * GIB


class _Split:
    def __init__(self, n, shape=(3, 256, 256)):
        self.n, self.shape, self.labels = n, shape, np.zeros(n, dtype=np.int64)

    def __len__(self):
        return self.n


def _plan(n, processes=1, room=8 * GIB, **data):
    return plan_residency(DataConfig(**data), _Split(n), 0, processes, loader_set="loader" in data,
                          available=(room, "available memory (MemAvailable)"))


def test_auto_keeps_the_data_in_memory_when_the_node_copies_fit():
    per_image = 3 * 256 * 256
    fits = _plan(20_000)  # 3.7 GiB <= half of 8 GiB
    assert not fits.out_of_core and fits.loader == "tensor" and "data plan: in memory" in fits.lines[0]
    # Four processes on the node each hold a copy: 4 x 3.7 GiB no longer fits.
    spills = _plan(20_000, processes=4)
    assert spills.out_of_core and spills.loader == "torch"
    line = spills.lines[0]
    assert "out of core" in line and "x 4 processes" in line and "budget 4.00 GiB" in line
    assert _plan(int(4 * GIB / per_image)).out_of_core is False  # the budget itself still fits
    assert _plan(int(4 * GIB / per_image) + 1).out_of_core is True


def test_forced_residencies_and_loaders():
    assert _plan(10**6, residency="memory").out_of_core is False  # the user's choice, however large
    disk = _plan(10, residency="disk")
    assert disk.out_of_core and "data.residency=disk" in disk.lines[0] and "instead of tensor" in disk.lines[0]
    with pytest.raises(VisionlaunchError, match="data.loader=tensor holds the whole split in memory"):
        _plan(10**6, loader="tensor")
    assert _plan(10**6, loader="torch").loader == "torch"
    ffcv = _plan(10**6, loader="ffcv", num_workers=3)  # the .beton read through the page cache, in the local order
    assert ffcv.out_of_core and ffcv.loader == "ffcv"
    assert "os_cache" in ffcv.lines[0] and "3 FFCV threads" in ffcv.lines[0] and "local shuffle" in ffcv.lines[0]
    # An ImageFolder that fits is read from its .beton file too (never decoded in memory); MNIST/CIFAR stay in memory.
    small = _plan(10, loader="ffcv")
    assert small.out_of_core and small.loader == "ffcv" and "never decoded in memory" in small.lines[0]
    assert not _plan(10, residency="memory", loader="ffcv").out_of_core


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("plain") / "plain", mixed=False)


def _run_args(folder, tmp_path, name, *extra):
    args = [a for a in _args(folder, tmp_path, name, *extra) if a not in ("data.residency=disk", "data.image_size=32")]
    return [*args, "train.epochs=1"]


def test_train_reads_out_of_core_when_memory_is_short(plain, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory_plan, "memory_available", lambda: (100_000, "room under the cgroup memory limit"))
    assert main(["train", *_run_args(plain, tmp_path, "auto", "data.num_workers=0")]) == 0
    plan = [line for line in capsys.readouterr().err.splitlines() if line.startswith("data plan:")]
    assert len(plan) == 1 and "training split out of core (train 120 images decoded 0.4 MiB" in plan[0]
    assert "budget 0.0 MiB: 50% of the 0.1 MiB room under the cgroup memory limit" in plan[0]
    assert "loader torch instead of tensor" in plan[0]
    saved = (tmp_path / "auto" / "config.yaml").read_text()
    assert "residency: disk" in saved and "loader: torch" in saved  # what the run really used

    code = main(["train", *_run_args(plain, tmp_path, "forced", "data.loader=tensor")])
    err = capsys.readouterr().err
    assert code == 2 and "data.loader=tensor holds the whole split in memory" in err and "Traceback" not in err
    assert not (tmp_path / "forced").exists()


def _truncate_one(plain, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(plain, broken)
    victim = sorted((broken / "train" / "bird").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated: the header reads, the pixels do not
    return broken, victim


def test_a_file_that_a_worker_cannot_decode_is_named_without_the_workers_traceback(plain, tmp_path):
    broken, victim = _truncate_one(plain, tmp_path)
    source = FolderSource(broken, "train", image_size=32, progress=False)
    loader = SourceLoader(source, 10, device=torch.device("cpu"), num_workers=1, train=False, seed=0)
    with pytest.raises(VisionlaunchError) as caught:
        list(loader)
    assert str(caught.value).startswith(f"{victim} is not a readable image (OSError: ")
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_that_cannot_be_decoded_out_of_core_stops_the_run_naming_it(plain, tmp_path, capsys):
    broken, victim = _truncate_one(plain, tmp_path)
    code = main(["train", *_run_args(broken, tmp_path, "bad", "data.residency=disk", "data.num_workers=1",
                                     "data.image_size=32")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert f"{victim} is not a readable image" in err and "Traceback" not in err


def test_an_ablation_run_folder_matches_its_plan_whatever_auto_chose(tmp_path):
    from visionlaunch.ablation.plan import Variant
    from visionlaunch.ablation.results import plan_differences
    from visionlaunch.config import RunConfig

    variant = Variant("a-seed0", "a", 0, [], "a", {}, tmp_path / "c.yaml", tmp_path, RunConfig())
    saved = RunConfig().model_dump(mode="json")
    for where in ("memory", "disk"):  # config.yaml records where auto put the data
        saved["data"]["residency"] = where
        assert plan_differences(variant, saved) == []
    forced = Variant("b-seed0", "b", 0, [], "b", {}, tmp_path / "c.yaml", tmp_path,
                     RunConfig(data=DataConfig(residency="memory")))
    saved["data"]["residency"] = "disk"
    assert plan_differences(forced, saved) == ["data.residency: run 'disk', plan 'memory'"]


def test_an_archive_stays_in_memory_and_says_so():
    archive = _Split(10**6)
    archive.streams, archive.source = False, "ImageFolder archive /data/photos.tar.gz (train/, 4 classes)"
    plan = plan_residency(DataConfig(), archive, 0, 1, loader_set=False, available=(GIB, "available memory"))
    assert not plan.out_of_core and plan.loader == "tensor"
    assert plan.lines[0].startswith("data plan: in memory although train 1,000,000 images decoded 183.11 GiB")
    assert "an archive is read into memory; extract it" in plan.lines[0]
    with pytest.raises(VisionlaunchError, match=r"data.residency=disk cannot read ImageFolder archive "
                                                r"/data/photos.tar.gz .*: an archive is read into memory; extract it"):
        plan_residency(DataConfig(residency="disk"), archive, 0, 1, loader_set=False)


def test_a_checkpoint_from_before_the_residency_key_resumes_in_memory_only(tmp_path):
    from visionlaunch.config import RunConfig
    from visionlaunch.trainers.checkpoint import validate
    from visionlaunch.trainers.precision import Precision

    old = RunConfig().model_dump(mode="json")
    del old["data"]["residency"]  # written before data.residency existed: its data was in memory
    meta = {"config": old, "world_size": 1, "precision": "fp32"}
    now = RunConfig().model_dump(mode="json")
    now["data"]["residency"] = "disk"
    with pytest.raises(VisionlaunchError, match=r"data.residency: checkpoint 'memory', now 'disk'"):
        validate(tmp_path, meta, now, 1, Precision("fp32", "test"))
    now["data"]["residency"] = "memory"
    with pytest.raises(VisionlaunchError, match=r"is partial: trainer_state.pt"):  # the config matches: on to the files
        validate(tmp_path, meta, now, 1, Precision("fp32", "test"))
