"""Our FFCV pipeline operations. FFCV's own Cutout keeps the square inside the image; ours follows the meaning
of BatchAugment (the centre is uniform over the image and the square is clipped at the borders), so the ffcv
backend augments like the tensor and torch backends."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation


class ClippedCutout(Operation):
    """Zero one `size` x `size` square per image of an (N, H, W, C) uint8 batch, centred at a uniform pixel."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def generate_code(self):
        parallel_range = Compiler.get_iterator()
        size = self.size

        def cutout(images, *_):
            n, h, w = images.shape[0], images.shape[1], images.shape[2]
            for i in parallel_range(n):
                y0 = np.random.randint(0, h) - size // 2
                x0 = np.random.randint(0, w) - size // 2
                images[i, max(y0, 0):min(y0 + size, h), max(x0, 0):min(x0 + size, w)] = 0
            return images

        cutout.is_parallel = True
        return cutout

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=True), None  # in place: no new memory
