"""The commands that README.md and docs/*.md show work when pasted: every ```bash block marked with
`<!-- example: NAME -->` runs here, as text taken from the page, in a fresh folder (a newcomer's checkout: configs/
and train.py, no data, no runs), cut down by a few overrides appended to each training command (tiny subsets, one
epoch, no progress bars or figures) so that the whole file stays short on a CPU."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import require_shared_data
from tests.run_helpers import free_port
from visionlaunch.runfolder import final_record, read_metrics

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- example: ([a-z0-9-]+) -->\s*$")
# Appended to every training command of an example: the same job, small enough for the test suite.
SMALL = ("data.train_subset=600", "data.test_subset=200", "data.val_size=100", "train.epochs=1",
         "train.progress=false", "report.figures=false")


def marked_blocks() -> dict[str, tuple[str, str]]:
    """NAME -> (page, the commands of the ```bash block right after its marker)."""
    found: dict[str, tuple[str, str]] = {}
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = MARKER.match(line)
            if not m:
                continue
            where = f"{page.relative_to(REPO)}:{i + 1}"
            assert lines[i + 1:i + 2] == ["```bash"], f"{where}: the marker must stand right above a ```bash block"
            end = lines.index("```", i + 2)
            assert m.group(1) not in found, f"{where}: example {m.group(1)!r} is marked twice"
            found[m.group(1)] = (where, "\n".join(lines[i + 2:end]))
    return found


def commands(block: str) -> list[str]:
    """One command per line, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def is_training(command: str) -> bool:
    return bool(re.search(r"(^|\s)(\S*visionlaunch train|\S*train\.py)(\s|$)", command))


@dataclass
class Example:
    """How to run one marked block: what the folder needs first, what the page's text may not be run as is (and
    what it becomes), extra overrides, and what the run must have produced."""
    prepare: Callable[[Path], None] = lambda work: None
    replace: dict[str, str] = field(default_factory=dict)  # page text -> text run; {work}: the folder, {port}: a free one
    overrides: tuple[str, ...] = SMALL
    check: Callable[[Path], None] = lambda work: None
    after: str | None = None  # the example whose commands run first, in the same folder


def finished_run(run: Path, processes: int = 1) -> None:
    assert (run / "weights" / "last.pt").is_file() and (run / "report.html").is_file(), sorted(run.glob("*"))
    final = final_record(read_metrics(run / "metrics.jsonl"))
    assert final is not None and final["test_acc"] is not None
    assert yaml.safe_load((run / "run.yaml").read_text())["processes"] == processes


def photo_folder(work: Path) -> None:
    """A folder of real photos in mixed sizes: CIFAR-10 JPEGs of 4 classes, rescaled to 40-96 px."""
    tarball = require_shared_data() / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    want = {"train": 20, "test": 5}
    classes = ("airplane", "automobile", "bird", "cat")
    count: dict[tuple[str, str], int] = {}
    rng = np.random.default_rng(0)
    with tarfile.open(tarball, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[1] not in classes:
                continue
            split, cls = parts[0], parts[1]
            if count.get((split, cls), 0) >= want[split]:
                if all(count.get((s, c), 0) >= n for s, n in want.items() for c in classes):
                    break
                continue
            image = Image.open(tar.extractfile(member)).convert("RGB")
            side = int(rng.integers(40, 97))
            dest = work / "photos" / split / cls / parts[2]
            dest.parent.mkdir(parents=True, exist_ok=True)
            image.resize((side, int(side * rng.uniform(0.75, 1.33)))).save(dest)
            count[(split, cls)] = count.get((split, cls), 0) + 1


def sample_digits(work: Path) -> None:
    """Three real digits (from the MNIST sample inside the package) as PNG files in my-images/."""
    import visionlaunch.datasets as datasets
    sample = np.load(Path(datasets.__file__).parent / "sample" / "mnist_sample.npz")
    (work / "my-images").mkdir()
    for i in range(3):
        Image.fromarray(sample["test_images"][i]).save(work / "my-images" / f"digit{i}.png")


def exported_and_predicted(work: Path) -> None:
    finished_run(work / "runs" / "first")
    assert (work / "runs" / "first" / "export" / "last.torchscript.pt").is_file()
    rows = (work / "predictions.csv").read_text().splitlines()
    assert len(rows) == 4 and all("digit" in row for row in rows[1:]), rows


EXAMPLES = {
    # README: the set-up part (venv, pip install) is what scripts/test.sh does for this suite already; the training
    # command runs as written, without the network (a test must not download MNIST): it trains on the sample.
    "main-job": Example(
        replace={"python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/visionlaunch": "visionlaunch"},
        overrides=(*SMALL, "data.download=false"),
        check=lambda work: finished_run(next((work / "runs").glob("mnist_cnn-*")))),
    "quick-first-run": Example(overrides=("train.progress=false", "report.figures=false"),
                               check=lambda work: finished_run(work / "runs" / "first")),
    "after-training": Example(after="quick-first-run", prepare=sample_digits, check=exported_and_predicted),
    # The folder is small already (80 training photos): its own validation share stays, no subsets.
    "own-photos": Example(prepare=photo_folder, replace={"/path/to/photos": "{work}/photos"},
                          overrides=("train.epochs=1", "train.progress=false", "report.figures=false"),
                          check=lambda work: finished_run(work / "runs" / "my-photos")),
    # The default port 29500 may be held by another job on a shared machine.
    "two-processes": Example(replace={"accelerate launch": "accelerate launch --main_process_port {port}"},
                             check=lambda work: finished_run(work / "runs" / "two-procs", processes=2)),
}


def test_every_marked_example_is_run_here():
    assert set(marked_blocks()) == set(EXAMPLES), (
        "a ```bash block marked <!-- example: NAME --> needs an entry in EXAMPLES (and an entry needs its block): "
        f"marked {sorted(marked_blocks())}, runners {sorted(EXAMPLES)}")


def script_for(name: str, work: Path) -> str:
    where, block = marked_blocks()[name]
    example = EXAMPLES[name]
    for old, new in example.replace.items():
        assert old in block, f"{where}: the example no longer contains {old!r}; update EXAMPLES[{name!r}]"
        block = block.replace(old, new.format(work=shlex.quote(str(work)), port=free_port()))
    lines = [c + "".join(f" {shlex.quote(o)}" for o in example.overrides) if is_training(c) else c
             for c in commands(block)]
    assert any(is_training(c) for c in lines) or example.after, f"{where}: no training command found"
    return "\n".join(lines)


# An example that another one runs first (its `after`) is run there, not a second time on its own.
RUN_ALONE = sorted(set(EXAMPLES) - {e.after for e in EXAMPLES.values()})


@pytest.mark.parametrize("name", RUN_ALONE)
def test_example_runs_as_the_page_shows(name, tmp_path):
    work = tmp_path / "checkout"
    work.mkdir()
    for item in ("configs", "train.py"):  # a checkout's files; runs/ and data/ start empty
        (work / item).symlink_to(REPO / item)
    chain = [name]
    while EXAMPLES[chain[0]].after:
        chain.insert(0, EXAMPLES[chain[0]].after)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    for step in chain:
        EXAMPLES[step].prepare(work)
        script = script_for(step, work)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (f"example {step} ({marked_blocks()[step][0]}) failed, exit {done.returncode}:\n"
                                      f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        EXAMPLES[step].check(work)
