"""Under a real 2-process gloo group, every backend's seeded epoch gives each rank a disjoint shard: training
shards together cover the epoch (trimmed to equal length, at most world-1 samples left out), evaluation shards
cover every sample exactly once, and the three backends agree rank by rank."""

import json

import numpy as np
import pytest

from tests.conftest import REPO, require_ffcv
from tests.run_helpers import run, two_process_launcher

pytestmark = pytest.mark.timeout(400)


def test_each_rank_sees_its_own_shard_with_every_backend(tmp_path):
    require_ffcv()
    from visionlaunch.ffcv_builders import write_beton

    n = 1001
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    write_beton(images, np.arange(n), tmp_path / "idx.beton", num_classes=n, dataset="indices", split="train",
                progress=False)
    proc = run([*two_process_launcher(REPO / "tests" / "ddp_loader_check.py"), str(tmp_path / "idx.beton"),
                str(tmp_path / "seen.json")], timeout=360)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    for kind in ("tensor", "torch", "ffcv"):
        train, evaluation = seen[f"{kind}-train"], seen[f"{kind}-eval"]
        assert len(train) == len(evaluation) == 2
        assert not set(train[0]) & set(train[1]) and len(train[0]) == len(train[1]) == 500 // 16 * 16
        assert sorted(evaluation[0] + evaluation[1]) == list(range(n))  # nothing repeated, nothing missed
        assert train == seen["tensor-train"] and evaluation == seen["tensor-eval"]
