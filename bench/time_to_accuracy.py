"""Wall-clock time until a training command first prints a test accuracy >= a target.

Measures any command the same way: start the process, timestamp each output line, match the test-accuracy
line with a regex, stop at the end of the command. Used for docs/results.md's speed anchor (time-to-99% on MNIST)
so that visionlaunch and the pytorch/examples MNIST script are timed identically.

    python bench/time_to_accuracy.py --target 99 -- visionlaunch train --config configs/mnist_cnn.yaml
    python bench/time_to_accuracy.py --target 99 --pattern 'Accuracy: \\d+/\\d+ \\(([\\d.]+)%\\)' -- python main.py
    python bench/time_to_accuracy.py --target 60 --target 70 --timeout 300 -- python train.py --config ...

Prints one JSON object: target, time to target (null if never reached; with several --target, the first one's,
and `time_to_targets_s` for each), final accuracy, total wall time, the accuracy trajectory with timestamps, and
the machine. --timeout stops the command (SIGTERM to its process group, SIGKILL 10 s later) and still prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time

OURS = r"test loss [\d.]+ acc\s+([\d.]+)%"  # visionlaunch's per-epoch line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, action="append", required=True,
                   help="test accuracy in percent, e.g. 99; repeat it for several targets")
    p.add_argument("--timeout", type=float, help="seconds after which the command is stopped")
    p.add_argument("--pattern", default=OURS, help="regex whose group 1 is the test accuracy in percent")
    p.add_argument("--log", help="also write the command's output here")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command to time after --")
    pattern = re.compile(args.pattern)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass

    timer = threading.Timer(args.timeout, stop) if args.timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    targets = sorted(set(args.target), key=args.target.index)
    trajectory, reached = [], {t: None for t in targets}
    log = open(args.log, "w", buffering=1) if args.log else None  # line-buffered: follow it live
    for line in proc.stdout:
        now = time.perf_counter() - start
        if log:
            log.write(f"{now:9.2f} {line}")
        m = pattern.search(line)
        if m:
            acc = float(m.group(1))
            trajectory.append({"time_s": round(now, 2), "acc": acc})
            for t in targets:
                if reached[t] is None and acc >= t:
                    reached[t] = round(now, 2)
    code = proc.wait()
    if timer:
        timer.cancel()
    total = round(time.perf_counter() - start, 2)
    print(json.dumps({
        "command": " ".join(cmd), "exit_code": code, "timed_out": timed_out.is_set(), "target_acc": targets[0],
        "time_to_target_s": reached[targets[0]], "time_to_targets_s": {f"{t:g}": reached[t] for t in targets},
        "final_acc": trajectory[-1]["acc"] if trajectory else None,
        "best_acc": max((t["acc"] for t in trajectory), default=None), "total_wall_s": total,
        "trajectory": trajectory, "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
    }, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
