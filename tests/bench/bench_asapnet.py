"""ASAPNet speed: ms per image at 256..2048 px split into the low-res stream (convolutions that predict the per-pixel
MLPs) and the high-res stream (the MLPs at every pixel); side by side with a SPADE-style generator of about the
same parameter count (tests/bench/spade_reference.py); and the live preview's latency from the end of a stroke to
the updated canvas for a 512 px document (offscreen Qt, in a child process).

The model is the shipped demo (assets/models/demo-asapnet-landscape) when present, else the same architecture with
random weights (the speed does not depend on the weights). Inputs are held-out synthetic landscape label maps.
Both generators run on the renderer's torch thread count (1 by default, see ASAPNetRenderer); each note gives the
load average, because the development box (2 cores) is shared with other jobs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

RESOLUTIONS = (256, 512, 1024, 2048)
SPADE_RESOLUTIONS = (256, 512, 1024)  # 2048 would take minutes per image on a 2-core CPU
REPEATS = {256: 5, 512: 3, 1024: 2, 2048: 1}


def _renderer():
    from engine.errors import CheckpointError
    from engine.errors import InputError
    from engine.models.asapnet import ASAPNetConfig, ASAPNetsGenerator, dataset_preset, model_config
    from engine.pipelines.asapnet import ASAPNetRenderer

    try:
        return ASAPNetRenderer.load(), "demo weights"
    except (InputError, CheckpointError):
        preset = dataset_preset("landscape")
        cfg = ASAPNetConfig(in_channels=preset.encoding.channels, downsampling=16, lr_width=16, lr_max_width=256,
                            lr_depth=4, hr_width=32, hr_depth=5)
        return ASAPNetRenderer(model_config(cfg, preset, "bench"), ASAPNetsGenerator(cfg).state_dict()), \
            "random weights (demo model not found)"


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN kernels, positional-code cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _asapnet_rows(renderer, source: str, labels: dict[int, np.ndarray]) -> tuple[list[dict], dict[int, float]]:
    from engine.device import job_threads
    from engine.pipelines.asapnet import ASAPNetBackend

    with job_threads(ASAPNetBackend.threads):  # the thread count the runtime gives ASAPNet jobs
        return _asapnet_rows_timed(renderer, source, labels)


def _asapnet_rows_timed(renderer, source: str, labels: dict[int, np.ndarray]) -> tuple[list[dict], dict[int, float]]:
    rows, totals = [], {}
    for res in RESOLUTIONS:
        f = renderer.lr_factor(res, res)
        renderer.render_timed(labels[res])
        runs = [renderer.render_timed(labels[res]) for _ in range(REPEATS[res])]
        lr = statistics.median(r[1] for r in runs) * 1000
        hr = statistics.median(r[2] for r in runs) * 1000
        total = statistics.median(r[1] + r[2] for r in runs) * 1000
        totals[res] = total
        note = (f"{source}; LR stream on {res // f} px (grid {res // f // renderer.multiple}^2), MLPs at {res} px; "
                f"{torch.get_num_threads()} thread(s), load avg {os.getloadavg()[0]:.1f}")
        rows += [
            {"name": f"asapnet_{res}_ms", "value": total, "unit": "ms", "target": None, "note": note},
            {"name": f"asapnet_{res}_lowres_ms", "value": lr, "unit": "ms", "target": None, "note": "LR stream"},
            {"name": f"asapnet_{res}_highres_ms", "value": hr, "unit": "ms", "target": None,
             "note": "per-pixel MLPs incl. one-hot encoding"},
        ]
    runs = [renderer.render_timed(labels[1024], lr_factor=1) for _ in range(2)]
    rows.append({"name": "asapnet_1024_fullres_lowres_ms", "value": statistics.median(r[1] + r[2] for r in runs) * 1000,
                 "unit": "ms", "target": None,
                 "note": "1024 px with the LR stream also at 1024 px (upstream's fixed-S inference)"})
    return rows, totals


def _spade_rows(renderer, labels: dict[int, np.ndarray]) -> tuple[list[dict], dict[int, float]]:
    from tests.bench.spade_reference import SPADEGenerator

    torch.manual_seed(0)
    channels = renderer.encoding.channels
    spade = SPADEGenerator(channels, ngf=12, hidden=32).eval()
    n_spade = sum(p.numel() for p in spade.parameters())
    n_asap = sum(p.numel() for p in renderer.model.parameters())
    from engine.device import job_threads
    from engine.pipelines.asapnet import ASAPNetBackend

    rows, totals = [], {}
    with job_threads(ASAPNetBackend.threads):  # the same thread count as ASAPNet's jobs
        for res in SPADE_RESOLUTIONS:
            totals[res], row = _spade_row(spade, renderer, labels, res, n_spade, n_asap)
            rows.append(row)
    return rows, totals


def _spade_row(spade, renderer, labels, res, n_spade, n_asap):
    x = renderer.encoding.encode(labels[res])
    with torch.inference_mode():
        total = _median_ms(lambda: spade(x), 1 if res >= 1024 else 2)
    return total, {"name": f"spade_{res}_ms", "value": total, "unit": "ms", "target": None,
                   "note": f"SPADE-style generator, {n_spade / 1e6:.2f} M parameters "
                           f"(ASAPNet {n_asap / 1e6:.2f} M), random weights, {torch.get_num_threads()} thread(s)"}


def _preview_child() -> None:
    """In a child process: a 512 px label-map document, 5 strokes, seconds from each commit to the new image."""
    from PySide6.QtWidgets import QApplication

    from app.canvas import Canvas
    from app.document import Document
    from app.live_preview import LivePreview
    from engine.data.landscapes import EVAL_SEEDS, generate_scene
    from engine.labels import load_label_set

    app = QApplication.instance() or QApplication([])
    renderer, source = _renderer()
    label_set = load_label_set("coco-stuff-182")
    document = Document()
    document.load(label_set=label_set, labels=generate_scene(EVAL_SEEDS[1], 512).labels)
    canvas = Canvas(document)
    canvas.resize(800, 800)
    canvas.show()
    from tests.fake_backend import register_renderer

    # the runtime's live-preview path: the real ASAPNet backend on the demo weights, else the random-weight renderer
    backend = "asapnet" if source == "demo weights" else register_renderer("bench-asapnet", lambda: renderer)
    preview = LivePreview(document, canvas, backend=backend)
    quick, full = [], []
    preview.rendered.connect(lambda seconds, is_full: (full if is_full else quick).append(seconds))

    def wait_for(count):
        deadline = time.perf_counter() + 60
        while len(full) < count and time.perf_counter() < deadline:
            app.processEvents()
            time.sleep(0.001)

    preview.set_enabled(True)
    wait_for(1)  # loads the model and warms up
    for i in range(5):
        edit = document.edit("Brush")
        yy, xx = np.mgrid[-30:31, -30:31]
        edit.paint(100 + 60 * i, 300, (yy ** 2 + xx ** 2) <= 900, label_set.id_of("sea"))
        edit.commit()
        wait_for(2 + i)
    preview.shutdown()
    print(json.dumps({"quick": quick[1:], "full": full[1:], "source": source, "debounce_ms": preview._timer.interval()}))


def _preview_rows() -> list[dict]:
    child = subprocess.run([sys.executable, "-c", "from tests.bench.bench_asapnet import _preview_child; _preview_child()"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    if child.returncode != 0:
        raise RuntimeError(f"live preview child failed: {child.stderr[-2000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    quick, full = ([v * 1000 for v in result[k]] for k in ("quick", "full"))
    common = (f"512 px document, median of {len(full)} strokes, incl. {result['debounce_ms']} ms debounce; "
              f"{result['source']}; load avg {os.getloadavg()[0]:.1f}")
    return [
        {"name": "live_preview_512_latency_ms", "value": statistics.median(quick), "unit": "ms", "target": "< 300",
         "note": f"end of stroke -> updated view (quick pass rendered at 256 px, scaled to 512; max "
                 f"{max(quick):.0f} ms); {common}"},
        {"name": "live_preview_512_full_latency_ms", "value": statistics.median(full), "unit": "ms", "target": None,
         "note": f"end of stroke -> the full 512 px rendering replaces it (max {max(full):.0f} ms); {common}"},
    ]


def run() -> list[dict]:
    from engine.data.landscapes import EVAL_SEEDS, generate_scene

    renderer, source = _renderer()
    labels = {res: generate_scene(EVAL_SEEDS[0], res).labels for res in RESOLUTIONS}
    rows, asap = _asapnet_rows(renderer, source, labels)
    spade_rows, spade = _spade_rows(renderer, labels)
    rows += spade_rows
    for res in SPADE_RESOLUTIONS:
        rows.append({"name": f"speedup_vs_spade_{res}", "value": spade[res] / asap[res], "unit": "x",
                     "target": ">= 5" if res == 1024 else None,
                     "note": "SPADE-style ms / ASAPNet ms, measured side by side in this run"})
    rows += _preview_rows()
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:34s} {row['value']:10.1f} {row['unit']:3s} {row['target'] or '':8s} {row['note']}")
