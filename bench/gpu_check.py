"""One command that proves the GPU paths and measures the GPU numbers, within 8 minutes on one H100/H200-class GPU.

    python bench/gpu_check.py OUTDIR [--data DIR] [--wheels DIR] [--budget-s 470]
    python bench/gpu_check.py OUTDIR --quick        # the same code paths on the CPU in under a minute (a test runs it)

Writes OUTDIR/gpu_check.json and OUTDIR/gpu_check.md (rewritten after every part, so a run cut short still leaves
the parts it finished) and prints the table. Parts, in this order, each with a time cap inside the overall budget:

  set-up   makes `visionlaunch` importable: installs wheels of missing dependencies from --wheels (default .whl/,
           filled by bench/gpu_prepare.sh on a machine with network), then `pip install --no-deps
           --no-build-isolation -e .`; if that fails, the source tree is put on the path. Optional packages that
           are missing (ffcv, wandb, timm) are listed, and the parts that need them are skipped, saying so.
  tests    `pytest -m gpu` (tests/test_gpu.py): loader, bf16/fp16, loss scaling, channels_last, compile, resume,
           evaluate, FFCV ToDevice. Each test's outcome is a row.
  overhead images/s of the trainer against a bare PyTorch loop, ResNet-18, bf16, channels_last, batch 512
           (bench/overhead.py); goal: ratio >= 0.95.
  loaders  bench/loaders.py's backends on the GPU (tensor, torch, ffcv if installed), 50,000 CIFAR-shaped images;
           loading time as a share of a ResNet-18 training step (the bare loop's rate above); goal: <= 5%.
  imagenet images/s of the ImageNet ResNet-50 preset's step (configs/imagenet_rn50.yaml: BlurPool, bf16,
           channels_last, batch 256) fed by the ffcv loader's random-resized crop at 160 and 192 px, the two sizes
           of its progressive resizing, on 4,096 generated 400x400 JPEG photos (bench/imagenet_speed.py); beside
           FFCV's published ~24,000 images/s on 8 A100s (~3,000 per GPU) for the same recipe. Needs ffcv.
  accuracy time from process start to 94% test accuracy on CIFAR-10 (JPEG data, configs/cifar10_fast_gpu.yaml)
           and to 60% and 70% on CIFAR-100 (configs/cifar100_fast_gpu.yaml), by bench/time_to_accuracy.py. The
           decoded-data cache is filled first (its time reported apart), as for the README's CPU timings.

--data is the data root (default ../shared/data): mnist/raw/*.gz for the tests, cifar10-jpeg/cifar10-jpeg.tar.gz,
cifar-100-python/; what is absent is skipped, saying so. Exit status 0 when every part that ran met its goal and
every test passed or skipped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# Imported by visionlaunch itself (pyproject's dependencies); pip's name where it differs from the module's.
REQUIRED = {"torch": "torch", "torchvision": "torchvision", "accelerate": "accelerate", "numpy": "numpy",
            "PIL": "pillow", "sklearn": "scikit-learn", "threadpoolctl": "threadpoolctl",
            "matplotlib": "matplotlib", "tqdm": "tqdm", "yaml": "pyyaml", "pydantic": "pydantic",
            "annotated_types": "annotated-types", "torchinfo": "torchinfo"}
OPTIONAL = {"ffcv": "the ffcv loader rows and FFCV's ToDevice test", "wandb": "nothing here (W&B logging)",
            "timm": "nothing here (timm models)", "pytest": "the GPU tests"}

# Seconds: each part's cap (the budget left caps it too). Full run, then --quick.
CAPS = {"setup": 90, "tests": 150, "overhead": 45, "loaders": 35, "imagenet": 60, "cifar10": 90, "cifar100": 110}
# --quick: only the overall budget bounds the parts (a busy CPU can be many times slower than a quiet one).
QUICK_CAPS = dict.fromkeys(CAPS, 600)


def missing_modules(names) -> list[str]:
    return [m for m in names if importlib.util.find_spec(m) is None]


class Check:
    """The report: rows, parts, machine; written as JSON and Markdown after every part."""

    def __init__(self, out: Path, quick: bool, budget: float):
        self.out, self.quick = out, quick
        self.start = time.monotonic()
        self.deadline = self.start + budget
        self.data = {"command": shlex.join([Path(PY).name, *sys.argv]), "quick": quick, "budget_s": budget,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine(),
                     "notes": [], "parts": {}, "rows": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, part: str) -> float:
        return max(0.0, min((QUICK_CAPS if self.quick else CAPS)[part], self.left()))

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"NOTE: {text}", file=sys.stderr, flush=True)

    def row(self, part: str, check: str, result: str, goal: str = "", verdict: str = "info") -> None:
        """verdict: pass, FAIL, skipped, info (a number without a goal), not judged (--quick)."""
        self.data["rows"].append({"part": part, "check": check, "result": result, "goal": goal, "verdict": verdict})

    def judge(self, met: bool) -> str:
        """The verdict on a measured goal; --quick measures a tiny model on a CPU, so it judges nothing."""
        if self.quick:
            return "not judged (--quick)"
        return "pass" if met else "FAIL"

    def part(self, name: str, payload: dict, seconds: float) -> None:
        self.data["parts"][name] = {"seconds": round(seconds, 1), **payload}
        self.write()

    def ok(self) -> bool:
        return not any(r["verdict"] == "FAIL" for r in self.data["rows"])

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.data["machine"]["load_average_now"] = [round(x, 2) for x in os.getloadavg()]
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(self.markdown())

    def markdown(self) -> str:
        m = self.data["machine"]
        lines = [f"GPU check{' (--quick, CPU)' if self.quick else ''}: {m.get('gpu') or 'no GPU'}, "
                 f"{m['processor']} ({m['cpus']} CPUs), torch {m['torch']}, CUDA {m.get('cuda')}, driver "
                 f"{m.get('driver')}; `{self.data['command']}`, {self.data['elapsed_s']} s of a "
                 f"{self.data['budget_s']:.0f} s budget; started {self.data['started']}.", "",
                 "| part | check | result | goal | verdict |", "|---|---|---|---|---|"]
        for r in self.data["rows"]:
            lines.append(f"| {r['part']} | {r['check']} | {r['result']} | {r['goal']} | {r['verdict']} |")
        if self.data["notes"]:
            lines += ["", *[f"- {n}" for n in self.data["notes"]]]
        return "\n".join(lines) + "\n"


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        gpus=torch.cuda.device_count())
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the set-up part says what is wrong
        info["torch"] = f"not importable: {exc}"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def child_env(cache: Path) -> dict:
    # The source tree on the path too: children import visionlaunch (and tests.*) even if the install failed.
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
            "MPLBACKEND": "Agg", "VISIONLAUNCH_CACHE": str(cache)}


# ------------------------------------------------------------------------------------------------------ set-up
def setup(check: Check, wheels: Path | None) -> bool:
    t0 = time.monotonic()
    payload = {"actions": []}
    missing = missing_modules(REQUIRED)
    if missing and wheels and wheels.is_dir() and list(wheels.glob("*.whl")):
        cmd = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               *map(str, sorted(wheels.glob("*.whl")))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=check.cap("setup"))
        payload["actions"].append({"command": shlex.join(cmd), "exit": proc.returncode, "stderr": proc.stderr[-2000:]})
        importlib.invalidate_caches()
        missing = missing_modules(REQUIRED)
    if missing:
        names = ", ".join(REQUIRED[m] for m in missing)
        check.row("set-up", "dependencies", f"missing: {names}", "all importable", "FAIL")
        check.note(f"visionlaunch needs {names}, which this Python lacks and cannot download: on a machine with "
                   "network run `bash bench/gpu_prepare.sh` (wheels into .whl/), carry .whl, then run this again.")
        check.part("setup", payload, time.monotonic() - t0)
        return False
    if importlib.util.find_spec("visionlaunch") is None:
        # No build isolation: the isolated build environment would have to download setuptools.
        cmd = [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=check.cap("setup"))
            code, err = proc.returncode, proc.stderr[-2000:]
        except subprocess.TimeoutExpired:
            code, err = None, "timed out"
        payload["actions"].append({"command": shlex.join(cmd), "exit": code, "stderr": err})
        importlib.invalidate_caches()
        if code != 0 or importlib.util.find_spec("visionlaunch") is None:
            check.note(f"`{shlex.join(cmd)}` failed ({err.strip()[-300:]}); using the source tree (src/) instead.")
    sys.path.insert(0, str(REPO / "src"))  # the checkout's code, whichever way it was installed
    sys.path.insert(0, str(REPO / "bench"))
    import visionlaunch
    payload["visionlaunch"] = str(Path(visionlaunch.__file__).parent)
    absent = missing_modules(OPTIONAL)
    payload["optional_missing"] = absent
    for name in absent:
        check.note(f"{name} is not installed here: skipped {OPTIONAL[name]}.")
    check.row("set-up", "visionlaunch importable", payload["visionlaunch"], "", "pass")
    check.part("setup", payload, time.monotonic() - t0)
    return True


# ------------------------------------------------------------------------------------------------------- tests
def run_tests(check: Check, data: Path, cache: Path) -> None:
    t0 = time.monotonic()
    if importlib.util.find_spec("pytest") is None:
        check.row("tests", "pytest -m gpu", "pytest is not installed", "", "skipped")
        check.part("tests", {"skipped": "no pytest"}, 0)
        return
    xml = check.out / "gpu_tests.xml"
    cmd = [PY, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "-o", "addopts=-ra",
           f"--junitxml={xml}", str(REPO / "tests" / "test_gpu.py")]
    env = {**child_env(cache), "VISIONLAUNCH_TEST_DATA": str(data)}
    cap = check.cap("tests")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, cwd=REPO, env=env)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:  # its output is bytes whatever text= says
        raw = exc.stdout or b""
        code, output = None, (raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
        output += f"\n[stopped after {cap:.0f} s]"
    (check.out / "gpu_tests.log").write_text(output[-20000:])
    # The JUnit file is written only at the end; a run stopped at its cap leaves pytest -v's lines.
    cases = junit_cases(xml) if code is not None and xml.is_file() else verbose_cases(output)
    for case in cases:
        verdict = {"passed": "pass", "failed": "FAIL", "skipped": "skipped"}[case["outcome"]]
        result = (case["outcome"] + (f": {case['message'][:160]}" if case["message"] else "")
                  + (f" ({case['time']:.1f} s)" if case["time"] else ""))
        check.row("tests", case["name"], result.replace("|", "/").replace("\n", " "), "passes", verdict)
    if code is None or not cases:
        what = f"stopped at its {cap:.0f} s cap" if code is None else f"exit {code}"
        check.row("tests", "pytest -m gpu", f"no complete result ({what}); see gpu_tests.log", "passes", "FAIL")
    check.part("tests", {"command": shlex.join(cmd), "exit": code, "cases": cases}, time.monotonic() - t0)


def verbose_cases(output: str) -> list[dict]:
    outcomes = {"PASSED": "passed", "FAILED": "failed", "ERROR": "failed", "SKIPPED": "skipped"}
    cases = []
    for line in output.splitlines():
        m = re.match(r"\S+::(\S+) (PASSED|FAILED|ERROR|SKIPPED)", line)
        if m:
            cases.append({"name": m.group(1), "outcome": outcomes[m.group(2)], "message": "", "time": 0.0})
    return cases


def junit_cases(path: Path) -> list[dict]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", child.get("message") or ""
            elif child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        cases.append({"name": case.get("name"), "outcome": outcome, "message": message,
                      "time": float(case.get("time") or 0)})
    return cases


# ---------------------------------------------------------------------------------------------------- overhead
def run_overhead(check: Check) -> float | None:
    """Trainer / bare loop; returns the bare loop's median images/s (a ResNet-18 step's speed), for the loaders."""
    t0 = time.monotonic()
    import overhead
    if check.quick:  # a tiny ResNet-18 (width 4) through the same code, bf16 on the CPU
        kwargs = dict(steps=3, epochs=2, repeats=2, device="cpu",
                      extra=["model.args={width: 4}", "train.batch_size=32"])
    else:
        kwargs = dict(steps=40, epochs=3, repeats=5, device="cuda")
    cap = check.cap("overhead")
    if cap < 10:
        check.row("overhead", "trainer / bare loop", "not run: time budget spent", ">= 0.95", "skipped")
        check.part("overhead", {"skipped": "time budget spent"}, 0)
        return None
    try:
        row = overhead.compare("resnet18_gpu", deadline=time.monotonic() + cap, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a failed part is a row, the next parts still run
        check.row("overhead", "trainer / bare loop", f"error: {type(exc).__name__}: {exc}"[:300], ">= 0.95", "FAIL")
        check.part("overhead", {"error": repr(exc)}, time.monotonic() - t0)
        return None
    r = row["ratio"]
    what = (f"{row['model']} {row['precision']} channels_last={row['channels_last']} batch {row['batch']}, "
            f"{len(row['pairs'])} pairs")
    check.row("overhead", f"trainer / bare loop images/s ({what})",
              f"median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}); trainer "
              f"{row['trainer_images_per_s']['median']:,.0f}, bare {row['bare_images_per_s']['median']:,.0f} img/s",
              ">= 0.95", check.judge(r["median"] >= 0.95))
    check.part("overhead", row, time.monotonic() - t0)
    return row["bare_images_per_s"]["median"]


# ----------------------------------------------------------------------------------------------------- loaders
def run_loaders(check: Check, step_rate: float | None, missing: list[str]) -> None:
    t0 = time.monotonic()
    import loaders
    import torch
    device = torch.device("cpu" if check.quick else "cuda")
    backends = ["tensor", "torch"] + ([] if "ffcv" in missing or check.quick else ["ffcv"])
    if check.quick and "ffcv" not in missing:
        check.note("--quick leaves the ffcv loader out (numba compiles its pipeline for 10 s or more).")
    n = 2048 if check.quick else 50_000
    args = argparse.Namespace(batch_size=64 if check.quick else 512, workers=0 if check.quick else min(8, os.cpu_count() or 1),
                              epochs=2 if check.quick else 3)
    spec = loaders.SHAPES["cifar"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *spec["shape"]), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vl-gpu-loaders-") as tmp:
        for kind in backends:
            if check.left() < 5 or time.monotonic() - t0 > check.cap("loaders"):
                check.row("loaders", f"{kind} loader", "not run: time budget spent", "<= 5% of a step", "skipped")
                continue
            beton = None
            try:
                if kind == "ffcv":
                    from visionlaunch.ffcv_builders import write_beton
                    beton = Path(tmp) / "cifar.beton"
                    write_beton(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), beton, num_classes=10,
                                dataset="cifar", split="train", num_workers=args.workers, progress=False)
                result = loaders.bench_backend(kind, images, labels, spec, args, device, beton)
            except Exception as exc:  # noqa: BLE001
                check.row("loaders", f"{kind} loader", f"error: {type(exc).__name__}: {exc}"[:300], "", "FAIL")
                continue
            rows.append(result)
            rate = result["steady_images_per_s"]
            if step_rate:
                share = step_rate / rate  # per image: loading time / training-step time
                check.row("loaders", f"{kind} loader, {n:,} CIFAR-shaped images, batch {args.batch_size}, crop + flip",
                          f"{rate:,.0f} img/s = {100 * share:.1f}% of a ResNet-18 step ({step_rate:,.0f} img/s)",
                          "<= 5% of a step", check.judge(share <= 0.05))
            else:
                check.row("loaders", f"{kind} loader", f"{rate:,.0f} img/s (no step time: overhead part missing)")
    check.part("loaders", {"device": str(device), "images": n, "batch": args.batch_size, "workers": args.workers,
                           "step_images_per_s": step_rate, "results": rows}, time.monotonic() - t0)


# ---------------------------------------------------------------------------------------------------- imagenet
# FFCV's ImageNet table: ResNet-50, 16 epochs, 8 A100s, about 24,000 training images/s in all.
FFCV_RN50_PER_GPU = 3000


def run_imagenet(check: Check, missing: list[str]) -> None:
    """The ResNet-50 preset's step at each size of its progressive resizing; informative (FFCV's A100 beside)."""
    t0 = time.monotonic()
    goal = f"FFCV: ~{FFCV_RN50_PER_GPU:,}/GPU (A100)"
    if "ffcv" in missing:
        check.row("imagenet", "ResNet-50 preset step, ffcv loader", "not run: ffcv is not installed", goal, "skipped")
        check.part("imagenet", {"skipped": "ffcv is not installed"}, 0)
        return
    if check.cap("imagenet") < 20:
        check.row("imagenet", "ResNet-50 preset step, ffcv loader", "not run: time budget spent", goal, "skipped")
        check.part("imagenet", {"skipped": "time budget spent"}, 0)
        return
    import imagenet_speed
    try:
        with tempfile.TemporaryDirectory(prefix="vl-gpu-imagenet-") as tmp:
            args = ["--quick"] if check.quick else []
            imagenet_speed.main([str(Path(tmp) / "speed.json"), *args])
            result = json.loads((Path(tmp) / "speed.json").read_text())
    except Exception as exc:  # noqa: BLE001 - a failed part is a row, the next parts still run
        check.row("imagenet", "ResNet-50 preset step, ffcv loader", f"error: {type(exc).__name__}: {exc}"[:300], goal,
                  "FAIL")
        check.part("imagenet", {"error": repr(exc)}, time.monotonic() - t0)
        return
    what = (f"{result['model']}{' (width 4, --quick)' if check.quick else ''}, {result['precision']} channels_last, "
            f"batch {result['batch']}, {result['images']:,} generated {result['photo_side']} px JPEGs")
    for size, rate in result["images_per_s"].items():
        check.row("imagenet", f"{what}, {size} px", f"{rate:,.0f} img/s", goal,
                  "not judged (--quick)" if check.quick else "info")
    check.part("imagenet", result, time.monotonic() - t0)


# ---------------------------------------------------------------------------------------------------- accuracy
def accuracy_jobs(check: Check, data: Path) -> list[dict]:
    if check.quick:  # the embedded MNIST sample, a few steps, low targets: the same commands and parsing
        tiny = ["data.name=mnist_sample", "data.path=null", "data.verify=true", "data.train_subset=512",
                "data.test_subset=256", "train.epochs=1", "train.max_steps_per_epoch=8", "train.batch_size=64",
                "model.args={widths: [4, 8, 8, 8]}", "augment.flip=false", "train.tta_flip=false"]
        return [{"part": "cifar10", "name": "quick_a", "config": "configs/cifar10_fast_gpu.yaml", "targets": [5],
                 "overrides": tiny, "dataset": ("mnist_sample", None), "needs": None},
                {"part": "cifar100", "name": "quick_b", "config": "configs/cifar100_fast_gpu.yaml", "targets": [5, 8],
                 "overrides": tiny, "dataset": ("mnist_sample", None), "needs": None}]
    jpeg = "cifar10-jpeg/cifar10-jpeg.tar.gz"
    return [{"part": "cifar10", "name": "cifar10_fast_gpu", "config": "configs/cifar10_fast_gpu.yaml", "targets": [94],
             "overrides": ["data.name=imagefolder", f"data.path={jpeg}"], "dataset": ("imagefolder", jpeg),
             "needs": data / jpeg},
            # The canonical-format rebuild of CIFAR-100 has other md5 sums than the official archive's files.
            {"part": "cifar100", "name": "cifar100_fast_gpu", "config": "configs/cifar100_fast_gpu.yaml",
             "targets": [60, 70], "overrides": ["data.verify=false"], "dataset": ("cifar100", None),
             "needs": data / "cifar-100-python"}]


def fill_cache(name: str, path: str | None, data: Path, cache: Path, verify: bool) -> float:
    """Decode the dataset into the cache once, before timing (as the README's CPU timings had it on disk)."""
    from visionlaunch.datasets import load_dataset
    t0 = time.monotonic()
    for split in ("train", "test"):
        load_dataset(name, split, root=data, path=path, cache_dir=cache, progress=False, verify=verify)
    return time.monotonic() - t0


def run_accuracy(check: Check, data: Path, cache: Path, runs: Path) -> None:
    for job in accuracy_jobs(check, data):
        part, t0 = job["part"], time.monotonic()
        label = f"{job['name']}: time to {', '.join(f'{t:g}%' for t in job['targets'])} test accuracy"
        goal = "reached, from process start"
        if job["needs"] is not None and not job["needs"].exists():
            check.row(part, label, f"not run: {job['needs']} not found (--data)", goal, "skipped")
            check.part(part, {"skipped": f"{job['needs']} not found"}, 0)
            continue
        try:
            verify = "data.verify=false" not in job["overrides"]
            fill = fill_cache(*job["dataset"], data, cache, verify)
        except Exception as exc:  # noqa: BLE001
            check.row(part, label, f"data error: {exc}"[:300], goal, "FAIL")
            continue
        cap = check.cap(part)
        if cap < 20:
            check.row(part, label, "not run: time budget spent", goal, "skipped")
            check.part(part, {"skipped": "time budget spent"}, 0)
            continue
        log = check.out / f"{job['name']}.log"
        cmd = [PY, str(REPO / "bench" / "time_to_accuracy.py"), *[a for t in job["targets"] for a in ("--target", str(t))],
               "--timeout", str(int(cap)), "--log", str(log), "--",
               PY, str(REPO / "train.py"), "--config", str(REPO / job["config"]), f"data.root={data}",
               f"output.dir={runs}", f"output.name={job['name']}", "output.overwrite=true", "train.progress=false",
               "report.figures=false", *job["overrides"]]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=child_env(cache), timeout=cap + 30)
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError:
            check.row(part, label, f"no result (exit {proc.returncode}): {proc.stderr[-200:]}", goal, "FAIL")
            continue
        times = result["time_to_targets_s"]
        reached = all(v is not None for v in times.values())
        text = ", ".join(f"{k}%: {'%.1f s' % v if v is not None else 'not reached'}" for k, v in times.items())
        epochs = len(result["trajectory"])
        text += (f"; final {result['final_acc']}% after {epochs} epochs, {result['total_wall_s']:.0f} s in all"
                 f"{' (stopped at the time cap)' if result['timed_out'] else ''}; cache fill {fill:.1f} s before")
        if result["exit_code"] != 0 and not result["timed_out"]:  # the run itself failed, whatever it reached
            check.row(part, label, f"{text}; exit {result['exit_code']}, see {log.name}", goal, "FAIL")
        else:
            check.row(part, label, text, goal, check.judge(reached))
        check.part(part, {"command": shlex.join(cmd), "cache_fill_s": round(fill, 1), "result": result},
                   time.monotonic() - t0)


def release_gpu_memory() -> None:
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path)
    p.add_argument("--quick", action="store_true", help="CPU, tiny model and data, seconds: the same code paths")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="data root")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl",
                   help="wheels of missing dependencies to install offline (bench/gpu_prepare.sh makes them)")
    p.add_argument("--budget-s", type=float, default=None, help="overall time budget (default 470; --quick 240)")
    args = p.parse_args()
    budget = args.budget_s or (240 if args.quick else 470)
    check = Check(args.outdir.resolve(), args.quick, budget)
    data = args.data.resolve()
    check.data["data"] = str(data)
    check.write()
    if not args.quick:
        import torch
        if not torch.cuda.is_available():
            check.row("set-up", "CUDA", "torch sees no GPU", "a GPU", "FAIL")
            check.note("no CUDA device: run with --quick on a CPU machine.")
            check.write()
            print(check.markdown())
            return 1
    if setup(check, args.wheels):
        missing = check.data["parts"]["setup"].get("optional_missing", [])
        with tempfile.TemporaryDirectory(prefix="vl-gpu-check-") as tmp:
            cache, runs = Path(tmp) / "cache", Path(tmp) / "runs"
            run_tests(check, data, cache)
            step_rate = run_overhead(check)
            run_loaders(check, step_rate, missing)
            release_gpu_memory()
            run_imagenet(check, missing)
            release_gpu_memory()  # the training runs below are other processes: leave them the whole GPU
            run_accuracy(check, data, cache, runs)
    check.write()
    print(check.markdown())
    return 0 if check.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
