"""Does memory stay flat as the dataset grows? Conversion and training on ImageFolders of 10k, 100k and 1M real photos.

    python bench/data_scale.py --work /scratch/vl-scale --sizes 10000 100000 1000000 --plot scale.png
    python bench/data_scale.py --work /tmp/vl-scale --sizes 2000 --steps 20      # a smoke check

For each N it builds (once, kept under --work) an ImageFolder of N training photos (and --test-images test photos):
distinct copies of the CIFAR-10 JPEGs, each re-cropped and rescaled to 96-320 px (bench/scale_photos.py). Then,
for each backend:
- ffcv: `visionlaunch prepare ffcv` (the .beton files written streaming from the files, data.num_workers writer
  processes; --ffcv-encoding raw or jpeg), then training from them (data.loader=ffcv, out of core through the page cache);
- torch: training out of core (data.residency=disk: DataLoader workers decode one photo per item); no conversion;
- tensor: training in memory (data.residency=memory: the split decoded into one tensor at the stored size first),
  only where that tensor fits in half the available memory (else a line says it was skipped and why).
Each phase runs as a child process; its whole process tree (workers included) is sampled from /proc every 0.2 s
for the peak PSS, its anonymous part (what the processes hold, without the page cache of mapped files: a .beton
read or written through a memory map) and RSS (bench/tree_memory.py), its CPU time is the tree's (getrusage of the waited children).
Training: 2 epochs of --steps steps (train.max_steps_per_epoch) at data.image_size=--image-size with the
random-resized crop, a small fully connected model so that loading dominates; images/s of the second epoch (the
first includes start-up and FFCV's compilation). One JSON line per (N, backend, phase), with the processor (lscpu
Model name), the core count and the load average when the line was written: numbers depend on the machine and on
whatever else runs on it. --plot writes the peaks and speeds against N (log x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from scale_photos import build_photo_folder, read_pool  # noqa: E402
from tree_memory import PeakSampler  # noqa: E402

ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
MIB = 2**20


def processor() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; wall time, the CPU time and peak memory of its process tree, and the end of its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    with PeakSampler(child.pid) as sampler:
        output, _ = child.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {child.returncode}:\n{output[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_pss_mib": round(sampler.peak_pss / MIB, 1),
            "peak_anon_pss_mib": round(sampler.peak_held / MIB, 1), "peak_rss_sum_mib": round(sampler.peak_rss / MIB, 1),
            "peak_processes": sampler.peak_processes,
            "samples": sampler.samples, "output": output}


def data_args(args, folder: Path) -> list[str]:
    return [f"data.path={folder}", f"data.image_size={args.image_size}", f"data.val_size={args.val_size}",
            f"data.num_workers={args.workers}", f"data.ffcv_encoding={args.ffcv_encoding}",
            f"data.ffcv_dir={folder.parent / (folder.name + '-' + args.ffcv_encoding + '-betons')}"]


def train_command(args, folder: Path, backend: str, run_dir: Path) -> list[str]:
    where = {"ffcv": ["data.loader=ffcv"], "torch": ["data.loader=torch", "data.residency=disk"],
             "tensor": ["data.loader=tensor", "data.residency=memory"]}[backend]
    return [sys.executable, "-m", "visionlaunch", "train", "--config", str(REPO / "configs" / "mnist_fcn.yaml"),
            "data.name=imagefolder", *data_args(args, folder), *where,
            "model.args={hidden: [128], batch_norm: true, dropout: 0}", "augment.crop_padding=0", "augment.flip=true",
            f"train.batch_size={args.batch_size}", "train.epochs=2", f"train.max_steps_per_epoch={args.steps}",
            "train.progress=false", "report.figures=false", "train.resume=none", f"output.dir={run_dir.parent}",
            f"output.name={run_dir.name}", "output.overwrite=true"]


def train_speed(run_dir: Path) -> dict:
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in epochs if r.get("kind") == "epoch" and r.get("split") == "train"]
    return {"steps": train[-1]["step"], "images_per_epoch": train[-1]["n"],
            "images_per_s_epoch1": train[0]["images_per_s"], "images_per_s": train[-1]["images_per_s"]}


def tensor_fits(args, n: int) -> tuple[bool, str]:
    stored = round(args.image_size / 0.875)
    need = (n + args.test_images) * 3 * stored * stored
    available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    why = f"{need / MIB:,.0f} MiB decoded at {stored} px vs half of {available / MIB:,.0f} MiB available"
    return need <= available / 2, why


def measure_size(args, n: int, pool, emit) -> None:
    folder = args.work / f"photos-{n}"
    if not folder.exists():
        start = time.perf_counter()
        build_photo_folder(ARCHIVE, folder, {"train": n, "test": args.test_images}, min_side=96, max_side=320,
                           seed=0, jobs=args.jobs, pool=pool)
        emit({"n": n, "phase": "build", "wall_s": round(time.perf_counter() - start, 2)})
    env = {**os.environ, "VISIONLAUNCH_CACHE": str(args.work / "cache"), "WANDB_MODE": "disabled",
           "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                           os.environ.get("PYTHONPATH")]))}
    for backend in args.backends:
        if backend == "tensor":
            fits, why = tensor_fits(args, n)
            if not fits:
                emit({"n": n, "backend": backend, "phase": "train", "skipped": f"does not fit in memory: {why}"})
                continue
        if backend == "ffcv" and not args.no_convert:
            cmd = [sys.executable, "-m", "visionlaunch", "prepare", "ffcv", "--dataset", "imagefolder",
                   *data_args(args, folder), "--out", str(folder.parent / (folder.name + '-' + args.ffcv_encoding +
                                                                          '-betons')), "--overwrite"]
            m = measured(cmd, env)
            m.pop("output")
            emit({"n": n, "backend": backend, "phase": "convert", "ffcv_encoding": args.ffcv_encoding, **m,
                  "images_per_s": round((n + args.test_images) / m["wall_s"], 1),
                  "images_per_cpu_s": round((n + args.test_images) / max(m["cpu_s"], 1e-9), 1)})
        run_dir = args.work / "runs" / f"{backend}-{n}"
        m = measured(train_command(args, folder, backend, run_dir), env)
        m.pop("output")
        speed = train_speed(run_dir)
        emit({"n": n, "backend": backend, "phase": "train", **m, **speed,
              **({"ffcv_encoding": args.ffcv_encoding} if backend == "ffcv" else {}),
              "images_per_s_per_core": round(speed["images_per_s"] / (os.cpu_count() or 1), 1)})


def plot(lines: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, speed) = plt.subplots(1, 2, figsize=(11, 4))
    for backend in ("ffcv", "torch", "tensor"):
        for phase, style in (("convert", "--"), ("train", "-")):
            rows = sorted((r for r in lines if r.get("backend") == backend and r.get("phase") == phase
                           and "peak_anon_pss_mib" in r), key=lambda r: r["n"])
            if rows:
                mem.plot([r["n"] for r in rows], [r["peak_anon_pss_mib"] for r in rows], style, marker="o",
                         label=f"{backend} {phase}")
                key = "images_per_cpu_s" if phase == "convert" else "images_per_s"
                speed.plot([r["n"] for r in rows], [r[key] for r in rows], style, marker="o",
                           label=f"{backend} {phase} ({'per CPU-s' if phase == 'convert' else 'per s'})")
    for ax, label in ((mem, "peak anonymous PSS of the process tree (MiB)"), (speed, "images/s")):
        ax.set_xscale("log")
        ax.set_xlabel("training images (N)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    cpu = next((r["processor"] for r in lines if "processor" in r), "")
    fig.suptitle(f"bench/data_scale.py on {cpu}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the photos, .beton files and runs (kept)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--backends", nargs="+", choices=["ffcv", "torch", "tensor"], default=["ffcv", "torch", "tensor"])
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=100, help="training steps per epoch (2 epochs)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="data.num_workers")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes building the photos")
    p.add_argument("--ffcv-encoding", choices=["raw", "jpeg"], default="raw",
                   help="data.ffcv_encoding of the .beton files (raw photos of 1M images need ~55 GB of disk at "
                        "--image-size 112, JPEG ~8 GB)")
    p.add_argument("--no-convert", action="store_true",
                   help="measure training only, from the .beton files an earlier run wrote (train checks that they "
                        "are current, and writes them when they are not)")
    p.add_argument("--plot", type=Path, help="write a plot of the results here (PNG)")
    args = p.parse_args(argv)
    if not ARCHIVE.is_file():
        print(f"the CIFAR-10 JPEG tarball is not at {ARCHIVE}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    machine = {"processor": processor(), "cores": os.cpu_count()}
    lines: list[dict] = []

    def emit(record: dict) -> None:
        record = {**record, **machine, "load_avg": load_average()}
        lines.append(record)
        print(json.dumps(record), flush=True)

    pool = None if all((args.work / f"photos-{n}").exists() for n in args.sizes) else read_pool(ARCHIVE)
    for n in args.sizes:
        measure_size(args, n, pool, emit)
    if args.plot:
        plot(lines, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
