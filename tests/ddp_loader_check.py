"""Launched as 2 gloo processes by tests/test_ffcv_ddp.py: every backend reads one seeded epoch (train and
eval) on its rank; rank 0 gathers what each rank saw and writes it as JSON. Labels are sample indices."""

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from visionlaunch.trainers.data import make_loader

beton, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")  # the launcher sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
rank, world = dist.get_rank(), dist.get_world_size()
assert world == 2, world
n = 1001
images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
labels = torch.arange(n)
seen = {}
for kind in ("tensor", "torch", "ffcv"):
    for train in (True, False):
        loader = make_loader(kind, images.contiguous(), labels, 16, train=train, seed=11, device=torch.device("cpu"),
                             rank=rank, world=world, num_workers=1, beton=beton)
        loader.set_epoch(2)
        mine = []
        for x, y in loader:
            assert torch.equal(x.cpu(), images[y.cpu()]), "a label came with another sample's image"
            mine += y.tolist()
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        seen[f"{kind}-{'train' if train else 'eval'}"] = gathered
if rank == 0:
    with open(out, "w") as f:
        json.dump(seen, f)
dist.barrier()
dist.destroy_process_group()
