"""The memory plan (trainers/memory_plan.py): the memory a process may fill, honouring a cgroup limit (v1 or v2);
in memory when the node's copies fit half of it, else out of core with the torch backend, said in train's first
line; a loader set to tensor explicitly stops the run instead; a file that cannot be decoded out of core is named
and replaced by the next sample, and a run of them stops the run as a damaged folder."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.run_helpers import records
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


def test_a_memory_limit_too_small_for_the_workers_stops_with_the_numbers():
    mib = 2**20
    test_bytes = 16 * mib
    room = (2 * memory_plan.WORKER_BYTES + test_bytes + mib, "room under the cgroup memory limit (0.68 GiB, x)")
    plan = plan_residency(DataConfig(residency="disk", num_workers=2), _Split(10**5), test_bytes, 1,
                          loader_set=False, available=room)
    assert plan.out_of_core and plan.loader == "torch"  # 2 workers fit, just
    with pytest.raises(VisionlaunchError) as caught:  # 4 do not: the message says how many would
        plan_residency(DataConfig(residency="disk", num_workers=4), _Split(10**5), test_bytes, 1, loader_set=False,
                       available=room)
    message = str(caught.value)
    assert message.startswith("not enough memory for the out-of-core loader: (4 DataLoader workers x at least "
                              "100.0 MiB each + the test split in memory 16.0 MiB) = 416.0 MiB, but only 217.0 MiB "
                              "is left (room under the cgroup memory limit (0.68 GiB, x))")
    assert message.endswith("Lower data.num_workers to 2 or fewer, or raise the memory limit.")
    # Two processes on the node: each has its workers and its test split.
    with pytest.raises(VisionlaunchError, match=r"2 processes x \(2 DataLoader workers .* = 432.0 MiB.*Set "
                                                r"data.num_workers=0, use a smaller test split"):
        plan_residency(DataConfig(residency="disk", num_workers=2), _Split(10**5), test_bytes, 2, loader_set=False,
                       available=room)


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


def _truncate(plain, tmp_path, count=1):
    """A copy of `plain` with `count` consecutive training images of one class truncated: the header reads, the
    pixels do not. Returns the copy and the truncated files."""
    broken = tmp_path / "data"
    shutil.copytree(plain, broken)
    victims = sorted((broken / "train" / "bird").iterdir())[5:5 + count]
    for victim in victims:
        victim.write_bytes(victim.read_bytes()[:300])
    return broken, victims


def test_a_file_a_worker_cannot_decode_is_named_once_and_its_neighbour_stands_in(plain, tmp_path, capfd):
    broken, (victim,) = _truncate(plain, tmp_path)
    source = FolderSource(broken, "train", image_size=32, progress=False)
    bad = next(i for i in range(len(source)) if Path(source.display(i)) == victim)
    loader = SourceLoader(source, 10, device=torch.device("cpu"), num_workers=1, train=False, seed=0)
    for _ in range(2):  # two passes over the same (persistent) worker: named once, never a traceback
        images, labels = map(torch.cat, zip(*loader))
        assert len(images) == len(source)
        # the next file stands in, its image and its label; every other sample is its own
        assert torch.equal(images[bad], torch.from_numpy(source.decode(bad + 1)).permute(2, 0, 1))
        assert labels[bad] == source.labels[bad + 1]
        assert torch.equal(images[bad - 1], torch.from_numpy(source.decode(bad - 1)).permute(2, 0, 1))
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1, err[-2000:]
    assert warnings[0].startswith(f"WARNING: {victim} is not a readable image (OSError: ")
    assert f"Until then sample {bad + 1} of the split (its image and label) stands in for sample {bad} wherever" \
        in warnings[0] and "Traceback" not in err


def test_an_unreadable_file_out_of_core_is_named_and_the_run_finishes(plain, tmp_path, capfd):
    broken, (victim,) = _truncate(plain, tmp_path)
    code = main(["train", *_args(broken, tmp_path, "bad", "data.residency=disk", "data.num_workers=1",
                                 "train.epochs=1")])
    err = capfd.readouterr().err
    assert code == 0, err[-2000:]
    # named by each process that meets it: the normalisation statistics' pass and the DataLoader worker
    assert err.count(f"WARNING: {victim} is not a readable image") == 2 and "Traceback" not in err
    final = [r for r in records(tmp_path / "bad") if r["kind"] == "final"]
    assert len(final) == 1 and final[0]["test_acc"] is not None


def test_a_damaged_folder_stops_the_run_with_the_first_file_named(plain, tmp_path, capfd):
    from visionlaunch.datasets.source import STAND_IN_LIMIT

    broken, victims = _truncate(plain, tmp_path, STAND_IN_LIMIT)
    code = main(["train", *_args(broken, tmp_path, "damaged", "data.residency=disk", "data.num_workers=1",
                                 "train.epochs=1")])
    err = capfd.readouterr().err
    assert code == 2, err[-2000:]
    message = err.split("visionlaunch: error:", 1)[1]
    assert f"{STAND_IN_LIMIT} images in a row cannot be decoded" in message and str(victims[0]) in message
    assert "The folder looks damaged" in message and "Traceback" not in err


@pytest.mark.parametrize("residency", ["auto", "disk"])
def test_a_folder_is_walked_once_before_the_first_step(plain, tmp_path, monkeypatch, residency):
    """The plan's index, the cache's fingerprint and the in-memory reader share one walk of the folder (a second
    walk of a million files would be minutes before step 1)."""
    from visionlaunch.datasets import imagefolder
    from visionlaunch.trainers.data import prepare_data

    walks = []

    def counted(walk):
        def walk_and_count(path, *args, **kwargs):
            walks.append(path)
            return walk(path, *args, **kwargs)
        return walk_and_count

    monkeypatch.setattr(imagefolder, "walk", counted(imagefolder.walk))
    cfg = DataConfig(name="imagefolder", path=str(plain), residency=residency, cache_dir=str(tmp_path / "cache"),
                     val_size=0)
    decisions = []

    def plan(train, test_bytes):
        decisions.append(memory_plan.plan_residency(cfg, train, test_bytes, 1, loader_set=False).out_of_core)
        return decisions[-1]

    data = prepare_data(cfg, log=lambda line: None, progress=False, plan=plan)
    assert decisions == [residency == "disk"] and len(data.train) == 120 and len(data.test) == 32
    assert walks == [plain]


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


def test_a_compressed_archive_stays_in_memory_and_says_so():
    archive = _Split(10**6)
    archive.streams, archive.source = False, "ImageFolder archive /data/photos.tar.gz (train/, 4 classes)"
    plan = plan_residency(DataConfig(), archive, 0, 1, loader_set=False, available=(GIB, "available memory"))
    assert not plan.out_of_core and plan.loader == "tensor"
    assert plan.lines[0].startswith("data plan: in memory although train 1,000,000 images decoded 183.11 GiB")
    assert "a compressed tar can only be read from its start, so it is read into memory; decompress it" in plan.lines[0]
    with pytest.raises(VisionlaunchError, match=r"data.residency=disk cannot read ImageFolder archive "
                                                r"/data/photos.tar.gz .*: a compressed tar .* `gunzip data.tar.gz` "
                                                r"gives data.tar, which is read out of core"):
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


def test_memory_available_reads_the_limit_of_the_process_own_cgroup(tmp_path):
    """A SLURM job or a container runs in a group below the mount's root: its limit (or a tighter one above it)
    counts, not the root's."""
    meminfo = _meminfo(tmp_path, 8 * 2**20)
    mount = tmp_path / "cgroup"
    job = mount / "memory" / "slurm" / "job_7"
    job.mkdir(parents=True)
    (mount / "memory" / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # the root: no limit
    (job / "memory.limit_in_bytes").write_text(f"{3 * GIB}\n")
    (job / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    own = tmp_path / "self-cgroup"
    own.write_text("5:devices:/\n4:memory:/slurm/job_7\n0::/\n")
    assert memory_available(mount, meminfo, own) == (2 * GIB, "room under the cgroup memory limit (3.00 GiB, "
                                                               "memory/slurm/job_7/memory.limit_in_bytes)")
    (mount / "memory" / "slurm" / "memory.limit_in_bytes").write_text(f"{GIB}\n")  # a tighter limit above the job
    assert memory_available(mount, meminfo, own)[0] == GIB
    v2 = tmp_path / "v2"
    (v2 / "user.slice" / "job").mkdir(parents=True)
    (v2 / "user.slice" / "job" / "memory.max").write_text(f"{GIB}\n")
    own.write_text("0::/user.slice/job\n")
    assert memory_available(v2, meminfo, own) == (GIB, "room under the cgroup memory limit (1.00 GiB, "
                                                       "user.slice/job/memory.max)")
