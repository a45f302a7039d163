"""Synthetic landscape throughput at 256, 512 and 1024 pixels, on one thread.

The value is scenes per CPU-second of this process (what one core delivers, e.g. to one DataLoader worker), which
stays meaningful on a shared machine; the note adds the wall-clock rate seen during the run.
"""

from __future__ import annotations

import time

import cv2


def _rate(size: int, seconds: float) -> tuple[float, float, int]:
    from engine.data.landscapes import generate_scene

    generate_scene(0, size)  # warm-up: label tables, OpenCV and numpy first calls
    count, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds or count < 3:
        generate_scene(1000 + count, size)
        count += 1
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall), count


def run() -> list[dict]:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        rows = []
        for size, seconds, target in ((256, 6.0, ">= 20"), (512, 6.0, None), (1024, 8.0, None)):
            per_cpu, per_wall, count = _rate(size, seconds)
            rows.append({"name": f"landscape scenes/s at {size}x{size}", "value": round(per_cpu, 2),
                         "unit": "scenes per CPU-second", "target": target,
                         "note": f"{count} scenes on one thread; wall-clock {per_wall:.2f} scenes/s"})  # fmt: skip
        return rows
    finally:
        cv2.setNumThreads(threads)


if __name__ == "__main__":
    for row in run():
        print(row)
