"""Median wall time of a callable: CUDA events on a GPU, perf_counter elsewhere.

On a GPU the events bracket each call on an idle device (synchronised after every call), so a time is the
call's latency from its first launch to its last kernel's end: it includes launch gaps and any host work the
call waits for between its kernels. Ops that move a few MB take microseconds on the device, and their times
(and GB/s) then mostly show that per-call overhead; the large shapes measure the kernels."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def times_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median milliseconds per call of ``fn`` after ``warmup`` untimed calls."""
    return statistics.median(times_ms(fn, device, iters, warmup))
