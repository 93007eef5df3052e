"""Random draws that stay independent across ``DataLoader`` workers.

Each worker process gets a copy of the dataset and its transforms; a plain ``numpy`` generator would be
copied too, so every worker would draw the same augmentations. ``WorkerRandom`` hands out a generator seeded
with its seed in the main process and, inside a worker, a generator seeded from that worker's torch seed
(``get_worker_info().seed``: distinct per worker and per epoch, reproducible under ``torch.manual_seed``).
"""

from __future__ import annotations

import numpy as np
import torch.utils.data


class WorkerRandom:
    """A ``numpy.random.Generator`` per process: one seeded with ``seed`` in the main process, a fresh one per
    worker."""

    def __init__(self, seed: int | None = None) -> None:
        self._main = np.random.default_rng(seed)
        self._worker_id: int | None = None
        self._worker_rng: np.random.Generator | None = None

    @property
    def generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self._main
        if self._worker_rng is None or self._worker_id != info.id:
            self._worker_id = info.id
            self._worker_rng = np.random.default_rng(info.seed)
        return self._worker_rng
