"""Batch colorize of a folder (engine/batch.py): items per second of PixelCNN colorize (the demo model, default 4
candidates) over gray 1024x768 JPEG scans, one process with two torch threads against two torchrun processes of
one thread each, and the scaling ratio.

Each run is the real command in a fresh process (`python -m app colorize DIR --out OUT`, or
`python -m torch.distributed.run --nproc_per_node 2 -m app colorize ...`); the figure is the rate the command's
own summary line reports (items done / time from the first item to the merged manifest, the model loads
included, Python's start-up and imports not), the whole command's wall time is in the note. The photos are
synthetic landscapes in gray (an old scan is gray), each saved under several names: different keys, so
different seeds and different work. Both runs see the same photos on the same machine one after the other;
the load average is in the note (other jobs share the 2 cores, and the ratio is what the machine had free).

Photos: 64, as the issue asks (about 3 minutes for the single process on the 2-core machine, 2 for the pair);
BENCH_BATCH_PHOTOS=N measures fewer (the rate does not depend on the count once the model is loaded). Most of an
item's time here is writing its four 1024x768 PNGs (Pillow's default compression: ~0.45 s each under load),
not sampling (~1 s for the four colourings).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = int(os.environ.get("BENCH_BATCH_PHOTOS", "64"))
DISTINCT = 4  # distinct scenes, each saved PHOTOS / DISTINCT times
RATE = re.compile(r"colorize: (\d+) done, .* ([0-9.]+) items/s")


def _photos(folder: Path) -> None:
    from PIL import Image

    from engine.data.landscapes import EVAL_SEEDS, generate_scene

    folder.mkdir(parents=True)
    scenes = [Image.fromarray(generate_scene(EVAL_SEEDS[i], (768, 1024)).image).convert("L") for i in range(DISTINCT)]
    for index in range(PHOTOS):
        scenes[index % DISTINCT].save(folder / f"scan{index:03d}.jpg", quality=90)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], threads: int) -> tuple[float, float, str]:
    """(items/s from the summary line, wall seconds, the summary line)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), SGRAFFITO_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    match = RATE.search(done.stderr)
    if done.returncode != 0 or not match or int(match[1]) != PHOTOS:
        raise RuntimeError(f"{' '.join(command[:8])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return float(match[2]), wall, match[0]


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _photos(tmp / "scans")
        app = ["-m", "app", "colorize", str(tmp / "scans"), "--device", "cpu"]
        load_before = os.getloadavg()[0]
        one, one_wall, _ = _run([sys.executable, *app, "--out", str(tmp / "one")], threads=2)
        two, two_wall, _ = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *app,
                                 "--out", str(tmp / "two")], threads=1)
        load_after = os.getloadavg()[0]
    scope = (f"{PHOTOS} gray 1024x768 JPEGs, 4 candidates each" if PHOTOS == 64 else
             f"{PHOTOS} (not 64: time) gray 1024x768 JPEGs, 4 candidates each; 64 take about 64/{PHOTOS} as long")
    load = f"load average {load_before:.2f} before, {load_after:.2f} after, {os.cpu_count()} cores"
    rows.append({"name": "batch colorize, 1 process x 2 threads", "value": round(one, 3), "unit": "items/s",
                 "target": None, "note": f"{scope}; wall {one_wall:.0f} s with start-up; {load}"})
    rows.append({"name": "batch colorize, torchrun 2 processes x 1 thread", "value": round(two, 3),
                 "unit": "items/s", "target": None, "note": f"{scope}; wall {two_wall:.0f} s with start-up; {load}"})
    rows.append({"name": "batch colorize scaling, 2 processes / 1", "value": round(two / one, 2), "unit": "x",
                 "target": None,
                 "note": "PixelCNN samples on one thread whatever the count (tiny matmuls), so a second process "
                         "is what uses a second core; on a GPU machine run `torchrun --nproc_per_node <GPUs> -m app "
                         "colorize ...`: one rank per GPU (cuda:LOCAL_RANK, nccl), never two ranks on one GPU; "
                         f"{load}"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
