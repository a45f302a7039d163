"""The machine's memory bandwidth and the weight-streaming floor it sets for one token step.

A token step of an autoregressive decoder at batch 1 must read every weight of the decoder once, so no step can
be faster than decoder bytes / memory bandwidth; official-size benchmarks report their step time as a ratio to
that floor.

    from tests.bench.bandwidth import measure_bandwidth_gbs, floor_ms
    gbs = measure_bandwidth_gbs()              # GB/s (1e9 bytes/s), best of a few large copies
    floor_ms(weight_bytes, gbs)                # ms to stream weight_bytes once at gbs

How the figure is counted: a copy of `size_bytes` (default 1 GiB) from one buffer into another, timed with
numpy's single-threaded memcpy after one untimed copy (which faults the destination's pages in); each copy reads
size_bytes and writes size_bytes, so the figure is 2 x size_bytes / seconds. The write-allocate reads a CPU may do
on the destination are not counted (so the true traffic is up to 1.5x higher). bench_memory.py reports a
read-only figure (torch.sum over the same size) next to it; on this 2-core machine the two are within about 20 %
of each other, in either order from run to run.
"""

from __future__ import annotations

import time

import numpy as np

GIB = 1 << 30


def measure_bandwidth_gbs(size_bytes: int = GIB, repeats: int = 3) -> float:
    """Best of `repeats` copies of `size_bytes`, counting the bytes read plus the bytes written, in GB/s."""
    source = np.ones(size_bytes // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault every page in before timing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


def floor_ms(weight_bytes: int | float, gbs: float) -> float:
    """Milliseconds to read `weight_bytes` once at `gbs` GB/s: the lower bound of one token step."""
    if gbs <= 0:
        raise ValueError(f"bandwidth must be positive, got {gbs} GB/s")
    return weight_bytes / (gbs * 1e9) * 1000


def describe(gbs: float) -> str:
    """One line for benchmark notes: how the bandwidth figure was taken."""
    return f"{gbs:.1f} GB/s (1 GiB numpy copy, read + written bytes, best of 3)"
