"""ColTran: cached against reference colorizer sampling (side by side, same process), and end-to-end colorization
of a 1024x768 photo with per-stage times.

The reference path recomputes the outer decoder over the whole canvas once per row and the inner decoder over the
whole row once per pixel, so each of its rows costs the same: we time its first rows and compare pixels per
second with the cached decoder over the same rows (a full 64x64 reference run of the official-size model takes
many minutes on a CPU).
"""

from __future__ import annotations

import time

import torch

from engine.models.coltran import ColTranCore, CoreConfig

ROWS = 4


def _pixels_per_second(model, gray, rows, cached):
    """Both paths on one intra-op thread: the thread count the runtime gives ColTran's sampling stage
    (engine.pipelines.coltran: a chain of tiny ops per pixel)."""
    from engine.device import job_threads

    with job_threads(1):
        return _timed(model, gray, rows, cached)


def _timed(model, gray, rows, cached):
    sampler = model.sample if cached else model.sample_reference
    uniforms = torch.rand(gray.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    symbols = sampler(gray, uniforms=uniforms, rows=rows)
    seconds = time.perf_counter() - started
    return gray.shape[0] * rows * gray.shape[2] / seconds, symbols[:, :rows]


def sampler_rows(name: str, config: CoreConfig, batch: int) -> list[dict]:
    torch.manual_seed(0)
    model = ColTranCore(config).eval()
    gray = torch.randint(0, 256, (batch, 64, 64), generator=torch.Generator().manual_seed(1))
    reference, ref_symbols = _pixels_per_second(model, gray, ROWS, cached=False)
    cached, cached_symbols = _pixels_per_second(model, gray, ROWS, cached=True)
    same = bool(torch.equal(ref_symbols, cached_symbols))
    return [
        {"name": f"coltran {name}: reference sampler", "value": reference, "unit": "pixels/s", "target": None,
         "note": f"64x64, batch {batch}, first {ROWS} rows"},
        {"name": f"coltran {name}: cached sampler", "value": cached, "unit": "pixels/s", "target": None,
         "note": f"same rows; identical symbols: {same}"},
        {"name": f"coltran {name}: cached / reference", "value": cached / reference, "unit": "x",
         "target": ">= 10", "note": "measured side by side in one process"},
    ]


def end_to_end_rows() -> list[dict]:
    from engine.model_store import list_models
    from engine.pipelines.coltran import load_model
    from engine.paths import assets_dir
    from engine.imageio import load_photo

    if not any(m.name == "demo-coltran" for m in list_models("coltran")):
        raise FileNotFoundError("no demo-coltran model folder: the end-to-end figures cannot be measured")
    import cv2

    import engine.pipelines.coltran as pipeline

    photo = load_photo(assets_dir() / "samples" / "camera.jpg").rgb
    photo = cv2.resize(photo, (1024, 768), interpolation=cv2.INTER_CUBIC)
    model = load_model()
    stages: dict[str, float] = {}
    colorizer, color_up = model.colorizer, model.color_upsampler

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - started
            return out
        return wrapper

    colorizer.sample = timed("colorizer (64x64, autoregressive)", colorizer.sample)
    upsample = pipeline.upsample_argmax  # both upsamplers run through it, one candidate channel at a time
    timed_color = timed("color upsampler (64x64)", upsample)
    timed_spatial = timed("spatial upsampler (256x256)", upsample)
    pipeline.upsample_argmax = lambda m, *a, **k: (timed_color if m is color_up else timed_spatial)(m, *a, **k)
    try:
        started = time.perf_counter()
        images = pipeline.colorize(model, photo, [0, 1, 2])
        total = time.perf_counter() - started
    finally:
        pipeline.upsample_argmax = upsample
    rows = [{"name": f"coltran end-to-end: {name}", "value": seconds, "unit": "s", "target": None,
             "note": "3 candidates, demo weights"} for name, seconds in stages.items()]
    rows.append({"name": "coltran end-to-end, 3 candidates of 1024x768", "value": total, "unit": "s",
                 "target": "< 60", "note": f"rest (resizing, chroma transfer): "
                                           f"{total - sum(stages.values()):.2f} s; {len(images)} images"})
    return rows


PEAK_SIZE = (548, 342)  # the small photo of issue 17's walk


def peak_child(photo: str, out: str) -> dict:
    """`sgraffito colorize --model demo-coltran` in this (fresh) process; its peak RSS."""
    import resource

    from app.cli import main

    started = time.perf_counter()
    code = main(["colorize", photo, "--model", "demo-coltran", "--samples", "3", "--out", out])
    return {"code": code, "seconds": time.perf_counter() - started,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def peak_rows() -> list[dict]:
    """Peak memory of a whole `sgraffito colorize` run on a small photo, in a child process of its own."""
    import os
    import sys
    import tempfile
    from pathlib import Path

    from PIL import Image

    from engine.paths import assets_dir
    from tests.bench._child import last_json, run_child

    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "small.jpg"
        Image.open(assets_dir() / "samples" / "camera.jpg").convert("L").resize(PEAK_SIZE).save(photo)
        result = last_json(run_child([sys.executable, "-m", "tests.bench.bench_coltran", "--peak", str(photo),
                                      str(Path(folder) / "out")], cwd=root, env={**os.environ}))
    if result["code"] != 0:
        raise RuntimeError(f"sgraffito colorize exited {result['code']}")
    width, height = PEAK_SIZE
    return [{"name": f"coltran peak RSS, sgraffito colorize {width}x{height}, 3 candidates",
             "value": round(result["peak_rss"] / 2 ** 20), "unit": "MiB", "target": "< 1024",
             "note": f"whole process (Python, torch, model, sampling, upsamplers one candidate channel at a time: "
                     f"3.5 GB when batched); {result['seconds']:.1f} s"}]


def run() -> list[dict]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    demo = CoreConfig(hidden_size=64, ff_size=128, num_heads=2, num_encoder_layers=2, num_outer_layers=1,
                      num_inner_layers=1)
    rows = sampler_rows("demo size (D=64)", demo, batch=3)
    rows += sampler_rows("official size (D=512, random weights)", CoreConfig(), batch=1)
    return rows + end_to_end_rows() + peak_rows()


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        print(json.dumps(peak_child(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    for row in run():
        print(f"{row['name']:60s} {row['value']:10.2f} {row['unit']:10s} {row.get('target') or '':8s} {row['note']}")
