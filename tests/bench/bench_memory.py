"""Memory bandwidth: the figure every official-size benchmark divides by to get its weight-streaming floor
(tests/bench/bandwidth.py says how it is counted)."""

from __future__ import annotations

import time

from tests.bench.bandwidth import describe, measure_bandwidth_gbs


def _read_bandwidth_gbs(size_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """torch.sum over a large buffer with torch's threads: the read-only traffic a weight-streaming step does."""
    import torch

    buffer = torch.ones(size_bytes // 4)
    buffer.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return size_bytes / best / 1e9


def run() -> list[dict]:
    import torch

    copy_gbs = measure_bandwidth_gbs()
    read_gbs = _read_bandwidth_gbs()
    return [
        {"name": "memory_bandwidth_gbs", "value": copy_gbs, "unit": "GB/s", "target": None,
         "note": describe(copy_gbs) + "; the floors of the official-size benchmarks use this figure"},
        {"name": "memory_read_bandwidth_gbs", "value": read_gbs, "unit": "GB/s", "target": None,
         "note": f"torch.sum over 1 GiB, {torch.get_num_threads()} torch threads, bytes read, best of 3 (for comparison)"},
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:30s} {row['value']:8.1f} {row['unit']:5s} {row['note']}")
