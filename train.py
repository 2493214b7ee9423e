"""The front door for `accelerate launch`:

    python train.py --config configs/mnist_cnn.yaml
    accelerate launch train.py --config configs/cifar10_cnn.yaml optim.lr=0.05
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py --config ...   (CPU, 2 ranks)

Same program as `visionlaunch train`; see README.md.
"""

import sys
from pathlib import Path

try:
    from visionlaunch.launch.cli import end_process, main
except ImportError:  # a checkout that was not pip-installed: use the source tree beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from visionlaunch.launch.cli import end_process, main

if __name__ == "__main__":
    end_process(main(["train", *sys.argv[1:]]))
