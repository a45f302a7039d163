"""Synthetic landscape throughput: scenes per second on one core at 256, 512 and 1024 pixels."""

from __future__ import annotations

import time

import cv2


def _rate(size: int, seconds: float) -> tuple[float, int]:
    from engine.data.landscapes import generate_scene

    generate_scene(0, size)  # warm-up: label tables, OpenCV and numpy first calls
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        generate_scene(1000 + count, size)
        count += 1
    return count / (time.perf_counter() - start), count


def run() -> list[dict]:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core, as a DataLoader worker runs it
    try:
        rows = []
        for size, seconds, target in ((256, 6.0, ">= 20 scenes/s"), (512, 6.0, None), (1024, 8.0, None)):
            rate, count = _rate(size, seconds)
            rows.append({"name": f"landscape scenes/s at {size}x{size}", "value": round(rate, 2), "unit": "scenes/s",
                         "target": target, "note": f"{count} scenes, one thread (cv2.setNumThreads(1))"})
        return rows
    finally:
        cv2.setNumThreads(threads)


if __name__ == "__main__":
    for row in run():
        print(row)
