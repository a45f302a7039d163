"""`sgraffito segment` of a 1024x768 photo: the demo segmenter (target < 3 s) and DeepLab-v2 ResNet-101 MSC at the
official width with random weights (target < 30 s; the speed does not depend on the weights), plus each run's peak
memory.

Each model runs in a fresh process that calls the real command (app.cli.run_command: runtime, model load, network,
edge snapping, PNG written); the figure is the command's time after Python's start-up and the imports every command
pays for once (torch, cv2, the engine; their time is in the note). Peak memory is the process's maximum resident
set size. The photo is a held-out synthetic landscape (EVAL_SEEDS). The DeepLab model folder is written with random
weights into a temporary user data folder, as `sgraffito import deeplab` would write the official one. Each
command runs once to warm the file cache, then once measured, on the runtime's default thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
started = time.perf_counter()
from tests.bench._child import peak_rss_bytes
from app.cli import run_command
import cv2, torch, PIL.Image  # the libraries every command pays for once per process, timed apart
import engine.commands.segment, engine.jobs, engine.pipelines.segment
imported = time.perf_counter()
rc = run_command(["segment", sys.argv[1], "--out", sys.argv[2], "--model", sys.argv[3], "--device", "cpu"])
done = time.perf_counter()
print(json.dumps({"rc": rc, "import_s": imported - started, "command_s": done - imported,
                  "peak_mib": peak_rss_bytes() / 2 ** 20}))
"""


def _run(photo: Path, out: Path, model: str, env: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(photo), str(out), model], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"segment with {model} failed: {result.stderr[-2000:]}")
    return json.loads(lines[-1])


def _deeplab_folder(data: Path) -> str:
    import torch

    from engine.model_store import save_model_dir
    from engine.models.deeplab import MSC, DeepLabConfig

    torch.manual_seed(0)
    cfg = DeepLabConfig()
    model = MSC(cfg)
    config = {"kind": "deeplab", "title": "DeepLab-v2 (random weights, bench)", "label_set": "coco-stuff-182",
              "network": cfg.to_dict(), "class_ids": list(range(cfg.n_classes))}
    save_model_dir(data / "models" / "deeplab-random", {"model": model.state_dict()}, config)
    return "deeplab-random"


def run() -> list[dict]:
    from PIL import Image

    from engine.data.landscapes import EVAL_SEEDS, generate_scene

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "photo.png"
        Image.fromarray(generate_scene(EVAL_SEEDS[3], (768, 1024)).image).save(photo)
        env = dict(os.environ, SGRAFFITO_DATA=str(tmp / "data"))
        env.pop("SGRAFFITO_THREADS", None)  # the runtime's default thread count, as a user gets it
        deeplab = _deeplab_folder(tmp / "data")
        for name, model, target, limit in (("demo", "demo-segmenter-landscape", "< 3", 3.0),
                                           ("deeplab", deeplab, "< 30", 30.0)):
            _run(photo, tmp / "warm.png", model, env)  # warm the file cache (weights, shared libraries)
            r = _run(photo, tmp / f"{name}.png", model, env)
            load = os.getloadavg()[0]
            verdict = "meets" if r["command_s"] < limit else "MISSES"
            rows.append({"name": f"segment_{name}_1024x768_s", "value": round(r["command_s"], 2), "unit": "s",
                         "target": target,
                         "note": f"{verdict} the target; fresh process, after the imports ({r['import_s']:.1f} s): "
                                 f"model load + network + edge snapping + PNG; load avg {load:.1f}"})
            rows.append({"name": f"segment_{name}_1024x768_peak_mib", "value": round(r["peak_mib"]), "unit": "MiB",
                         "target": None, "note": "maximum resident set size of that process"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:34s} {row['value']:>8} {row['unit']:4s} {row['target'] or '':5s} {row['note']}")
