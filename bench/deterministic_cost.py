"""The cost of `train.deterministic=true`: seconds per training epoch of the same small real MNIST run with and
without it, alternating (off, on, off, on, ...) so that changes in machine load fall on both alike.

    python bench/deterministic_cost.py --data ../shared/data            # mnist_cnn, 4,000 images, 2 epochs, 2 pairs
    python bench/deterministic_cost.py --data ../shared/data --pairs 3 --train-subset 8000

Prints one JSON object: per setting the train-epoch seconds of every run (from metrics.jsonl) and their median,
the processor, the device and the load average before and after. Not a test: numbers depend on the machine and on
whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from visionlaunch.launch.cli import main
from visionlaunch.runfolder import read_metrics

REPO = Path(__file__).resolve().parents[1]


def processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data root holding mnist/raw")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vl-det-") as tmp:
        for pair in range(args.pairs):
            for setting in ("off", "on"):
                name = f"{setting}-{pair}"
                code = main(["train", "--config", str(REPO / "configs" / "mnist_cnn.yaml"), f"data.root={args.data}",
                             f"output.dir={tmp}", f"output.name={name}", f"data.train_subset={args.train_subset}",
                             "data.val_size=500", "data.test_subset=1000", f"train.epochs={args.epochs}",
                             "train.progress=false", "report.figures=false",
                             f"train.deterministic={'true' if setting == 'on' else 'false'}"])
                if code:
                    raise SystemExit(code)
                seconds[setting] += [r["seconds"] for r in read_metrics(Path(tmp) / name / "metrics.jsonl")
                                     if r.get("kind") == "epoch" and r.get("split") == "train"]
    torch.use_deterministic_algorithms(False)
    print(json.dumps({
        "config": "configs/mnist_cnn.yaml", "train_subset": args.train_subset, "epochs": args.epochs,
        "pairs": args.pairs, "seconds_per_epoch": seconds,
        "median_s": {k: statistics.median(v) for k, v in seconds.items()},
        "ratio_on_off": statistics.median(seconds["on"]) / statistics.median(seconds["off"]),
        "processor": processor(), "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }, indent=1))


if __name__ == "__main__":
    main_bench()
