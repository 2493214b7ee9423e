"""Training throughput for 1 and 2 processes (and, on a GPU machine, precision / channels_last / compile).

Runs the real trainer through the real launchers (`python train.py` for one process, `accelerate launch` for
several; on a CPU-only machine the README's `ACCELERATE_USE_CPU=1 ... --multi_gpu` recipe) and reads the
images/s that the trainer itself records per epoch in metrics.jsonl (global images over rank 0's epoch time).
The first epoch includes warm-up (and compiling), so the number reported is the last epoch's.

    python bench/scaling.py                                   # CPU: 1 vs 2 processes, MNIST CNN
    python bench/scaling.py --epochs 3 --train-subset 20000   # longer, steadier
    python bench/scaling.py --config configs/cifar10_cnn.yaml --data-root ../shared/data \
        -- data.name=imagefolder data.path=cifar10-jpeg/cifar10-jpeg.tar.gz

With a GPU it also times one GPU in fp32, bf16, bf16 + channels_last and bf16 + channels_last + compile, and
N GPUs when there are several. Prints one JSON object: the machine, the variants and their numbers.
Not a test: numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(processes: int, gpu: bool) -> list[str]:
    if processes == 1:
        return [sys.executable, str(REPO / "train.py")]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(_free_port()), str(REPO / "train.py")]


def _variants(gpus: int, cpu_processes: list[int]) -> list[dict]:
    if gpus == 0:
        # Threads per process = cores / processes (what torchrun sets), plus one process on one thread: on a
        # busy machine OpenMP threads that spin-wait for each other can cost more than they bring.
        cores = os.cpu_count() or 1
        out = [{"name": f"cpu x{n}", "processes": n, "gpu": False, "overrides": [], "threads": max(1, cores // n)}
               for n in cpu_processes]
        if cores > 1 and 1 in cpu_processes:
            out.insert(1, {"name": "cpu x1 1-thread", "processes": 1, "gpu": False, "overrides": [], "threads": 1})
        return out
    out = [{"name": f"1 gpu {label}", "processes": 1, "gpu": True, "overrides": o} for label, o in (
        ("fp32", ["train.precision=fp32"]), ("bf16", ["train.precision=bf16"]),
        ("bf16 channels_last", ["train.precision=bf16", "train.channels_last=true"]),
        ("bf16 channels_last compile", ["train.precision=bf16", "train.channels_last=true", "train.compile=true"]))]
    if gpus > 1:
        out.append({"name": f"{gpus} gpus bf16", "processes": gpus, "gpu": True, "overrides": ["train.precision=bf16"]})
    return out


def _run(variant: dict, args, out_dir: Path) -> dict:
    name = variant["name"].replace(" ", "_")
    cmd = [*_command(variant["processes"], variant["gpu"]), "--config", args.config, f"output.dir={out_dir}",
           f"output.name={name}", f"train.epochs={args.epochs}", "train.progress=false", "report.figures=false",
           "data.val_size=0", f"data.train_subset={args.train_subset}", "data.test_subset=1000",
           f"train.batch_size={args.batch_size}", *([f"data.root={args.data_root}"] if args.data_root else []),
           *variant["overrides"], *args.overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    if not variant["gpu"]:
        env["ACCELERATE_USE_CPU"] = "1"
        env["OMP_NUM_THREADS"] = str(variant["threads"])
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    result = {"name": variant["name"], "processes": variant["processes"], "threads_per_process":
              variant.get("threads"), "overrides": variant["overrides"],
              "command_wall_s": round(wall, 2), "exit": proc.returncode}
    if proc.returncode != 0:
        result["error"] = proc.stderr[-1500:]
        return result
    records = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines() if line]
    train = [r for r in records if r.get("kind") == "epoch" and r.get("split") == "train"]
    result.update({"images_per_s_last_epoch": train[-1]["images_per_s"],
                   "images_per_s_per_epoch": [r["images_per_s"] for r in train],
                   "epoch_seconds": [r["seconds"] for r in train],
                   "test_acc": [r for r in records if r.get("kind") == "final"][0]["test_acc"]})
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "mnist_cnn.yaml"))
    p.add_argument("--data-root", default=None,
                   help="data.root for the runs (default: the config's, else $VISIONLAUNCH_DATA)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128, help="global batch: the same work whatever the process count")
    p.add_argument("--cpu-processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run (after --)")
    args = p.parse_args()

    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    machine = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
               "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="vl-scaling-") as tmp:
        results = [_run(v, args, Path(tmp)) for v in _variants(gpus, args.cpu_processes)]
    # Speed-up against the fastest single-process variant, so that a slow thread setting flatters nothing.
    single = [r["images_per_s_last_epoch"] for r in results if r.get("exit") == 0 and r["processes"] == 1]
    base = max(single) if single else None
    for r in results:
        if base and r.get("images_per_s_last_epoch"):
            r["speedup_vs_best_single_process"] = round(r["images_per_s_last_epoch"] / base, 2)
    print(json.dumps({"benchmark": "scaling", "config": args.config, "epochs": args.epochs,
                      "train_images": args.train_subset, "global_batch": args.batch_size, "machine": machine,
                      "load_average_after": os.getloadavg(), "results": results}, indent=1))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
