"""ColTran: cached against reference colorizer sampling (side by side, same process), and end-to-end colorization
of a 1024x768 photo with per-stage times.

Sampler rows, at demo size and at the official size (D=512, random weights), on one intra-op thread (the thread
count the runtime gives ColTran's sampling stage: a chain of small ops per pixel):
- decoding, measured rows: both samplers decode the first ROWS rows from the same encoder output (the grayscale
  encoder runs once per image in both paths, so it is timed on its own and left out of the per-pixel rates);
  the reference path recomputes the outer decoder over the whole canvas once per row and the inner decoder over
  the whole row once per pixel, so each of its rows costs the same, and its first rows stand for all of them;
- whole 64x64 image: the cached sampler measured from the gray image to the last pixel (encoder included); the
  reference extrapolated as encoder + 64 / ROWS x its measured rows (a full reference run of the official-size
  model takes minutes on a CPU);
- official size only: the weight-streaming floor of a pixel step (the weights a step must read, the inner
  decoder's per-pixel layers plus a 64th of the per-row ones, over the measured memory bandwidth,
  tests/bench/bandwidth.py) and each timing's ratio to the floor of its own weights: fp32, and the reduced
  precisions this CPU runs (int8, and bf16 where oneDNN has bf16 kernels; engine.precision).
"""

from __future__ import annotations

import time

import torch

from engine.models.coltran import ColTranCore, CoreConfig

ROWS = 4


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _per_pixel_layers(model: ColTranCore) -> list[torch.nn.Module]:
    """The layers the cached sampler runs once per pixel (on one position): the inner decoder's projections and
    feed-forwards, and the logits."""
    layers = [model.auto_logits]
    for i in range(model.inner_decoder.num_layers):
        att, ff, _ = model.inner_decoder.layer(i)
        layers += [att.q, att.k, att.v, att.output, ff.dense_in, ff.dense_out]
    return layers


def step_weight_bytes(model: ColTranCore, bytes_per_weight: float = 4.0) -> float:
    """Weight bytes one pixel step must read: the per-pixel layers, plus the rest of the decoder (per-row work:
    the outer decoder on the finished row, the inner decoder's conditioning of the next) shared by a row's
    pixels."""
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    pixel = count(_per_pixel_layers(model))
    decoder = count([model.outer_decoder, model.inner_decoder, model.final_norm, model.auto_logits])
    width = model.config.resolution[1]
    return (pixel + (decoder - pixel) / width) * bytes_per_weight


def sampler_rows(name: str, config: CoreConfig, batch: int, target: str | None,
                 floor_gbs: float | None = None) -> list[dict]:
    """Both samplers side by side on one thread (module docstring), after one warm-up row each; `target` for
    the two ratios; with `floor_gbs` the floor rows too."""
    from engine.device import job_threads

    torch.manual_seed(0)
    model = ColTranCore(config).eval()
    height, width = config.resolution
    gray = torch.randint(0, 256, (batch, height, width), generator=torch.Generator().manual_seed(1))
    uniforms = torch.rand(gray.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with job_threads(1), torch.no_grad():
        encoded, encoder_s = _timed(lambda: model.encoder(gray))
        for sampler in (model.sample_reference, model.sample):  # first calls allocate and pick kernels
            sampler(gray, uniforms=uniforms, rows=1, encoded=encoded)
        ref_symbols, ref_s = _timed(lambda: model.sample_reference(gray, uniforms=uniforms, rows=ROWS,
                                                                   encoded=encoded))
        cached_symbols, cached_s = _timed(lambda: model.sample(gray, uniforms=uniforms, rows=ROWS, encoded=encoded))
        _, whole_s = _timed(lambda: model.sample(gray, uniforms=uniforms))
    same = bool(torch.equal(ref_symbols[:, :ROWS], cached_symbols[:, :ROWS]))
    pixels = batch * ROWS * width
    whole_ref_s = encoder_s + ref_s * height / ROWS
    setting = f"{height}x{width}, batch {batch}, 1 thread"
    rows = [
        {"name": f"coltran {name}: reference decoder", "value": pixels / ref_s, "unit": "pixels/s", "target": None,
         "note": f"{setting}, first {ROWS} rows from the same encoder output"},
        {"name": f"coltran {name}: cached decoder", "value": pixels / cached_s, "unit": "pixels/s", "target": None,
         "note": f"same rows; identical symbols: {same}"},
        {"name": f"coltran {name}: cached / reference, measured rows", "value": ref_s / cached_s, "unit": "x",
         "target": target, "note": "decoding per pixel, side by side in one process (the encoder, the same pass "
                                    f"in both, {encoder_s:.2f} s per batch, left out)"},
        {"name": f"coltran {name}: cached sampler, whole {height}x{width} image", "value": whole_s, "unit": "s",
         "target": None, "note": f"{setting}, encoder included"},
        {"name": f"coltran {name}: reference sampler, whole {height}x{width} image", "value": whole_ref_s,
         "unit": "s", "target": None,
         "note": f"extrapolated: encoder {encoder_s:.2f} s + {height}/{ROWS} x its {ROWS} measured rows"},
        {"name": f"coltran {name}: cached / reference, whole image", "value": whole_ref_s / whole_s, "unit": "x",
         "target": target, "note": "same process"},
    ]
    if floor_gbs is not None:
        rows += floor_rows(name, model, gray, uniforms, encoded, floor_gbs, cached_symbols,
                           {"reference fp32": ref_s / pixels, "cached fp32": cached_s / pixels})
    return rows


BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1, "bf16": 2, "fp16": 2}


def floor_rows(name, model, gray, uniforms, encoded, gbs, fp32_symbols, step_seconds) -> list[dict]:
    """The weight-streaming floor of a pixel step per precision, the reduced-precision cached samplers' steps
    (engine.precision, what this CPU runs), and every step's ratio to the floor of its own weights."""
    from engine.device import job_threads
    from engine.models.coltran import reduced_precision
    from engine.precision import supported
    from tests.bench.bandwidth import describe, floor_ms

    batch, width = gray.shape[0], gray.shape[2]
    pixels = batch * ROWS * width
    agreement = {}
    for precision in supported("cpu"):
        if precision == "fp32":
            continue
        reduced = reduced_precision(model, precision)
        with job_threads(1), torch.no_grad():
            reduced.sample(gray, uniforms=uniforms, rows=1, encoded=encoded)  # warm-up
            symbols, seconds = _timed(lambda: reduced.sample(gray, uniforms=uniforms, rows=ROWS, encoded=encoded))
        step_seconds[f"cached {precision}"] = seconds / pixels
        agreement[precision] = float((symbols[:, :ROWS] == fp32_symbols[:, :ROWS]).float().mean())
    rows = []
    floors = {}
    for label, seconds in step_seconds.items():
        precision = label.split()[-1]
        if precision not in floors:
            weight_bytes = step_weight_bytes(model, BYTES_PER_WEIGHT[precision])
            floors[precision] = floor_ms(weight_bytes, gbs)
            rows.append({"name": f"coltran {name}: weight-streaming floor per pixel step, {precision}",
                         "value": floors[precision], "unit": "ms", "target": None,
                         "note": f"{weight_bytes / 2**20:.1f} MiB of weights per step / {describe(gbs)}"})
        rows.append({"name": f"coltran {name}: {label} pixel step / its floor",
                     "value": seconds * 1000 / floors[precision], "unit": "x", "target": None,
                     "note": f"{seconds * 1000:.2f} ms per pixel step (batch {batch}, 1 thread)"})
    for precision, share in agreement.items():
        rows.append({"name": f"coltran {name}: cached fp32 / cached {precision} time", "unit": "x", "target": None,
                     "value": step_seconds["cached fp32"] / step_seconds[f"cached {precision}"],
                     "note": f"decoders' linear layers in {precision}; the same symbol as fp32 at {share:.0%} of the "
                             f"measured pixels (same uniforms; one different pixel changes the rest of its row)"})
    return rows


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

    colorizer.encoder.forward = timed("colorizer encoder (64x64, once per photo)", colorizer.encoder.forward)
    colorizer.sample = timed("colorizer (64x64, autoregressive)", colorizer.sample)
    upsample = pipeline.upsample_argmax  # both upsamplers run through it, one candidate channel at a time
    timed_color = timed("color upsampler (64x64)", upsample)
    timed_spatial = timed("spatial upsampler (256x256)", upsample)
    pipeline.upsample_argmax = lambda m, *a, **k: (timed_color if m is color_up else timed_spatial)(m, *a, **k)
    try:
        started = time.perf_counter()
        from engine.device import job_threads

        # the runtime's threads: one for the pixel chain, all for the encoder and the upsamplers
        images = pipeline.colorize(model, photo, [0, 1, 2], sampling_threads=lambda: job_threads(1))
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
    from app.cli import main
    from tests.bench._child import peak_rss_bytes

    started = time.perf_counter()
    code = main(["colorize", photo, "--model", "demo-coltran", "--samples", "3", "--out", out])
    return {"code": code, "seconds": time.perf_counter() - started,
            "peak_rss": peak_rss_bytes()}


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
    from tests.bench.bandwidth import measure_bandwidth_gbs

    # the target is the official size; at D=64 a pixel step is mostly the fixed cost of ~50 small ops
    # in both paths, so the demo-size ratio is a diagnostic
    rows = sampler_rows("demo size (D=64)", demo, batch=3, target=None)
    rows += sampler_rows("official size (D=512, random weights)", CoreConfig(), batch=1, target=">= 10",
                         floor_gbs=measure_bandwidth_gbs())
    return rows + end_to_end_rows() + peak_rows()


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        print(json.dumps(peak_child(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    for row in run():
        print(f"{row['name']:60s} {row['value']:10.2f} {row['unit']:10s} {row.get('target') or '':8s} {row['note']}")
