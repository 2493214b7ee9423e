"""Where a training step's time goes, in the trainer and in a bare PyTorch loop: milliseconds per step of each part.

    python bench/step_profile.py                               # cifar10_fast (ResNet-9), 30 measured steps a side
    python bench/step_profile.py --model mnist_cnn --steps 60
    python bench/step_profile.py --set train.precision=fp32

The same set-up as bench/overhead.py (its presets, synthetic in-memory data, augmentation off, the same model,
optimizer, schedule and precision on both sides). Each part is timed with a wall clock around the call that does
it, on the CPU, where every operation has finished when its call returns (on a GPU the times would be launch
times). Parts: batch (the loader's next batch), inputs (normalise, layout), forward, loss, backward, metrics (the
running loss and accuracy totals), optimizer, zero_grad, schedule, preemption check; "other" is the step's wall time
less the parts (Python, autocast entry, the step record). A warm-up epoch is run first and not counted; the two
sides alternate epochs (trainer, bare, trainer, bare) as in bench/overhead.py, and each side's numbers are the
medians over its measured epochs. Prints the processor, a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (bench/overhead.py: the shared set-up)

from visionlaunch.trainers.precision import resolve_precision  # noqa: E402

PARTS = ("batch", "inputs", "forward", "loss", "backward", "metrics", "optimizer", "zero_grad", "schedule",
         "preemption check", "other")


class Clock:
    """Seconds per part, summed over the current epoch."""

    def __init__(self):
        self.epochs: list[dict] = []
        self.now: defaultdict[str, float] = defaultdict(float)

    def timed(self, part: str, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.now[part] += time.perf_counter() - t0
        return call

    def end_epoch(self, seconds: float, steps: int) -> None:
        parts = {p: 1000 * self.now[p] / steps for p in PARTS if p != "other"}
        parts["other"] = 1000 * seconds / steps - sum(parts.values())
        parts["step"] = 1000 * seconds / steps
        self.epochs.append(parts)
        self.now = defaultdict(float)


class TimedIterable:
    """A loader whose batches are timed (set_epoch and every other attribute go to the loader)."""

    def __init__(self, loader, clock: Clock):
        self._loader, self._clock = loader, clock

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __iter__(self):
        it = iter(self._loader)
        return iter(self._clock.timed("batch", lambda: next(it)), object())


class TimedScheduler:
    def __init__(self, scheduler, clock: Clock):
        self.step = clock.timed("schedule", scheduler.step)


def instrument_trainer(trainer, clock: Clock):
    """Wrap the calls of Trainer._optimizer_step in timers (instance attributes, and the trainer module's Totals
    until the returned function puts it back)."""
    from visionlaunch.trainers import trainer as trainer_module
    trainer.train_loader = TimedIterable(trainer.train_loader, clock)
    trainer.pipeline.train_targets = clock.timed("inputs", trainer.pipeline.train_targets)
    trainer.forward_model = clock.timed("forward", trainer.forward_model)
    trainer.criterion = clock.timed("loss", trainer.criterion)
    trainer.accelerator.backward = clock.timed("backward", trainer.accelerator.backward)
    trainer.optimizer.step = clock.timed("optimizer", trainer.optimizer.step)
    trainer.optimizer.zero_grad = clock.timed("zero_grad", trainer.optimizer.zero_grad)
    trainer.scheduler = TimedScheduler(trainer.scheduler, clock)  # a proxy: the checkpoint pickles the real one
    trainer._preemption_requested = clock.timed("preemption check", trainer._preemption_requested)
    totals = trainer_module.Totals

    class TimedTotals(totals):
        add = clock.timed("metrics", totals.add)

    trainer_module.Totals = TimedTotals
    return lambda: setattr(trainer_module, "Totals", totals)


def timed_bare_epoch(bare: overhead.BareLoop, clock: Clock) -> None:
    """One epoch of bench/overhead.py's bare loop, each part of a step timed from the end of the part before."""
    last = [0.0]

    def lap(part: str | None) -> None:
        now = time.perf_counter()
        if part is not None:
            clock.now[part] += now - last[0]
        last[0] = now

    rate = bare.epoch(lap)
    clock.end_epoch(bare.steps * bare.batch / rate, bare.steps)


def profile(setup: str, steps: int, epochs: int, extra: list[str]) -> dict:
    from visionlaunch.runfolder import read_metrics
    from visionlaunch.trainers.trainer import Trainer

    cfg, data = overhead.make_config(setup, steps, epochs, "cpu", extra)
    device = torch.device("cpu")
    trainer_clock, bare_clock = Clock(), Clock()
    bare = overhead.BareLoop(cfg, data, device)
    with tempfile.TemporaryDirectory(prefix="vl-step-profile-") as tmp:
        output = cfg.output.model_copy(update={"dir": tmp, "name": "run", "overwrite": True})
        cfg = cfg.model_copy(update={"output": output})
        with Trainer(cfg, data=data, argv=["bench/step_profile.py"]) as trainer:
            restore_totals = instrument_trainer(trainer, trainer_clock)
            end_epoch = trainer._end_epoch

            def then_bare(stats):  # the trainer's epoch is closed from its own record, then a bare epoch runs
                trainer_clock.end_epoch(stats["seconds"], steps)
                end_epoch(stats)
                timed_bare_epoch(bare, bare_clock)

            trainer._end_epoch = then_bare
            try:
                trainer.fit()
            finally:
                restore_totals()
        records = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
    rates = [r["images_per_s"] for r in records if r.get("kind") == "epoch" and r.get("split") == "train"]
    measured = {"trainer": trainer_clock.epochs[1:], "bare": bare_clock.epochs[1:]}  # the first epoch: warm-up
    medians = {side: {p: round(statistics.median(e[p] for e in eps), 2) for p in (*PARTS, "step")}
               for side, eps in measured.items()}
    return {"setup": setup, "model": cfg.model.name, "batch": cfg.train.batch_size, "steps_per_epoch": steps,
            "measured_epochs": epochs - 1, "precision": resolve_precision(cfg.train.precision, device).name,
            "channels_last": cfg.train.channels_last, "ms_per_step": medians,
            "trainer_images_per_s": rates[1:], "epochs": measured}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=[s for s in overhead.SETUPS if s != "resnet18_gpu"], default="cifar10_fast")
    p.add_argument("--steps", type=int, default=30, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3, help="epochs per side; the first is warm-up")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for both sides")
    args = p.parse_args()
    # The timers wrap optimizer.step after the scheduler was built, which torch warns about: the order is unchanged.
    warnings.filterwarnings("ignore", message="Seems like `optimizer.step()` has been overridden")
    m = overhead.machine()
    print(f"processor: {m['processor']} ({m['cpus']} CPUs, {m['torch_threads']} torch threads), load average "
          f"{m['load_average']}", file=sys.stderr, flush=True)
    result = profile(args.model, args.steps, args.epochs, args.set)
    t, b = result["ms_per_step"]["trainer"], result["ms_per_step"]["bare"]
    print(f"\n{result['model']} batch {result['batch']}, {result['precision']}, channels_last "
          f"{result['channels_last']}: median ms/step over {result['measured_epochs']} epochs of "
          f"{result['steps_per_epoch']} steps\n", file=sys.stderr)
    print("| part | trainer ms/step | bare ms/step | trainer - bare |\n|---|---|---|---|", file=sys.stderr)
    for part in (*PARTS, "step"):
        print(f"| {part} | {t[part]:.1f} | {b[part]:.1f} | {t[part] - b[part]:+.1f} |", file=sys.stderr)
    print(json.dumps({"benchmark": "step_profile", "command": " ".join(["python", *sys.argv]),
                      "machine": {**m, "load_average_after": overhead.machine()["load_average"]}, **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
