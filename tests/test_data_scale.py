"""The building blocks of bench/data_scale.py at a tiny size: the photo folder (distinct real photos at mixed sizes,
the same for the same seed) and the peak memory of a process tree (a child's workers counted)."""

import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from tests.conftest import REPO, require_shared_data


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # worker processes unpickle its functions
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scale_photos():
    return _bench("scale_photos")


def test_the_photo_folder_holds_distinct_real_photos_at_mixed_sizes(scale_photos, tmp_path):
    archive = require_shared_data() / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    pool = scale_photos.read_pool(archive)
    assert [len(pool[s]) for s in ("train", "test")] == [50_000, 10_000]
    # 25 copies of the first 10 images (one per class: the pool interleaves the classes)
    small = {"train": pool["train"][:10], "test": pool["test"][:10]}
    counts = {"train": 250, "test": 20}
    out = scale_photos.build_photo_folder(archive, tmp_path / "a", counts, min_side=96, max_side=320, jobs=2,
                                          pool=small)
    files = sorted(out.rglob("*.jpg"))
    assert len(files) == 270 and len({p.parent.name for p in files}) == 10
    assert len({p.parent.name for p in (out / "train").rglob("*.jpg")}) == 10
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert len(digests) == 270  # no two files equal, although each source image is used 25 times
    sizes = []
    for p in files:
        with Image.open(p) as im:
            sizes.append(im.size)
            assert im.mode == "RGB" and all(96 <= s <= 320 for s in im.size)
    assert len(set(sizes)) > 100
    assert scale_photos.decoded_bytes(out) == sum(w * h * 3 for w, h in sizes)
    again = scale_photos.build_photo_folder(archive, tmp_path / "b", counts, min_side=96, max_side=320, jobs=1,
                                            pool=small)
    assert [p.read_bytes() for p in sorted(again.rglob("*.jpg"))] == [p.read_bytes() for p in files]
    with pytest.raises(FileExistsError):
        scale_photos.build_photo_folder(archive, out, counts, pool=small)


def test_the_peak_memory_of_a_tree_counts_the_workers():
    tree_memory = _bench("tree_memory")
    # a parent and two children, each filling 100 MiB of its own for a second
    code = textwrap.dedent("""
        import os, time
        for _ in range(2):
            if os.fork() == 0:
                break
        block = bytearray(os.urandom(1)) * (100 * 2**20)
        time.sleep(1.5)
    """)
    child = subprocess.Popen([sys.executable, "-c", code])
    with tree_memory.PeakSampler(child.pid, interval=0.1) as sampler:
        child.wait()
    assert sampler.peak_processes >= 3
    assert sampler.peak_pss >= 3 * 100 * 2**20
    assert sampler.peak_held >= 3 * 100 * 2**20  # their own memory: anonymous
    assert sampler.peak_rss >= sampler.peak_pss


def test_the_pages_of_a_mapped_file_count_in_pss_but_not_in_what_the_tree_holds(tmp_path):
    """A .beton read through a memory map is page cache: in PSS, not in the anonymous part."""
    tree_memory = _bench("tree_memory")
    data = tmp_path / "file.bin"
    data.write_bytes(os.urandom(1 << 20) * 128)  # 128 MiB
    code = textwrap.dedent(f"""
        import mmap, time
        with open({str(data)!r}, "rb") as f:
            view = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            total = sum(view[i] for i in range(0, len(view), 4096))  # every page touched
            time.sleep(1.5)
    """)
    child = subprocess.Popen([sys.executable, "-c", code])
    with tree_memory.PeakSampler(child.pid, interval=0.1) as sampler:
        child.wait()
    assert sampler.peak_pss >= 128 * 2**20
    assert sampler.peak_held < 64 * 2**20
