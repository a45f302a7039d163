"""PixelCNN colorizer: cached (Fast PixelCNN) against naive sampling, and 4 colourings of a 1024x768 photo.

Both samplers run side by side in one process on the same model, conditioning and uniforms, and must return
the same samples. The naive path re-runs the whole network once per chroma pixel, so it is timed on a smaller
chroma grid (the 1024x768 photo's grid is 32x24) to keep the benchmark short; the ratio is what matters. The
model is the shipped demo model when present, else the same architecture with random weights (sampling time
does not depend on the weight values).
"""

from __future__ import annotations

import time

import cv2
import torch

from engine.pipelines.pixelcnn import colorize, load_model, uniforms
from engine.data.landscapes import generate_scene
from engine.errors import InputError
from engine.models.pixelcnn import PixelCNNColorizer, PixelCNNConfig

DEMO_ARCH = dict(channels=32, layers=6, kernel=3, cond_channels=32, embed_channels=24)


def _model() -> tuple[PixelCNNColorizer, str]:
    try:
        return load_model(), "demo weights"
    except InputError:
        torch.manual_seed(0)
        return PixelCNNColorizer(PixelCNNConfig(**DEMO_ARCH)).eval(), "random weights, demo architecture"


def _best_of(runs: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def run() -> list[dict]:
    model, weights = _model()
    cfg = model.config
    k, (h, w) = 4, (12, 16)
    lum = torch.rand(1, 1, h * cfg.downsample, w * cfg.downsample, generator=torch.Generator().manual_seed(0)) * 100
    with torch.no_grad():
        cond, glob = model.conditioning(lum, torch.zeros(1, 3, *lum.shape[-2:]))
    cond, glob = cond.expand(k, -1, -1, -1), glob.expand(k, -1)
    u = uniforms(range(k), (h, w))
    fast_s, fast = _best_of(3, lambda: model.sample(cond, glob, u))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cached sampler uses one thread; so does the naive one, its faster setting here
    try:
        slow_s, slow = _best_of(1, lambda: model.sample_reference(cond, glob, u))
    finally:
        torch.set_num_threads(threads)
    same = bool(torch.equal(fast, slow))

    photo = cv2.cvtColor(generate_scene(7, (768, 1024)).image, cv2.COLOR_RGB2GRAY)
    e2e_s, images = _best_of(3, lambda: colorize(model, photo, [0, 1, 2, 3]))
    note = f"{weights}; CPU, sampling on 1 torch thread, the rest on {threads}"
    return [
        {"name": "pixelcnn cached sampling, 4 x 16x12 chroma", "value": fast_s, "unit": "s", "target": None,
         "note": note},
        {"name": "pixelcnn naive sampling, 4 x 16x12 chroma", "value": slow_s, "unit": "s", "target": None,
         "note": f"one full forward per pixel; same samples as cached: {same}"},
        {"name": "pixelcnn cached / naive speed-up", "value": slow_s / fast_s, "unit": "x", "target": ">= 10",
         "note": "measured side by side in one run"},
        {"name": "pixelcnn colorize 4 candidates of a 1024x768 photo", "value": e2e_s, "unit": "s",
         "target": "< 10", "note": f"{note}; gray photo -> 4 RGB images at 1024x768 ({images[0].shape}), "
                                   f"chroma sampled at 32x24, model loaded beforehand"},
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:55s} {row['value']:10.3f} {row['unit']:3s} target {row['target']}  {row['note']}")
