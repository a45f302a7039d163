"""Photo I/O at camera resolution: open a 24-MP JPEG, peak memory with it open, project save/load, export.

The test photo is the summer-palace sample upscaled to 6000x4000 with grain added, so the JPEG decoder sees
camera-like detail (a smooth upscale would decode unrealistically fast)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.export import export_image
from engine.imageio import load_label_map, load_photo, new_label_map
from engine.labels import load_label_set
from engine.paths import assets_dir
from engine.project import Project, load_project, save_project

SIZE = (6000, 4000)
RUNS = 5

_RSS_SCRIPT = """
import json, sys
from engine.imageio import load_photo
from tests.bench._child import peak_rss_bytes

photo = load_photo(sys.argv[1]) if sys.argv[1] != "-" else None
print(json.dumps({"peak": peak_rss_bytes()}))
"""


def make_photo(folder: Path) -> Path:
    source = Image.open(assets_dir() / "samples" / "summer-palace.jpg").convert("RGB")
    big = np.asarray(source.resize(SIZE, Image.Resampling.BICUBIC)).astype(np.int16)
    big += np.random.default_rng(0).normal(0, 6, big.shape[:2])[..., None].astype(np.int16)
    path = folder / "camera-24mp.jpg"
    Image.fromarray(big.clip(0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def _median_seconds(action, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss(path: str) -> dict:
    output = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, path], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2]).stdout
    return json.loads(output)


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = make_photo(folder)
        megabytes = path.stat().st_size / 1e6
        open_s = _median_seconds(lambda: load_photo(path))
        rows.append({"name": "open 24-MP JPEG (load_photo)", "value": round(open_s, 3), "unit": "s", "target": "< 2",
                     "note": f"6000x4000, {megabytes:.1f} MB file, decode + EXIF + ICC check + grayscale test; "
                             f"median of {RUNS}"})
        memory = _rss(str(path))
        bare = _rss("-")
        rows.append({"name": "peak RSS with a 24-MP photo open", "value": round(memory["peak"] / 2**20), "unit": "MiB",
                     "target": "< 1536",
                     "note": f"fresh process; {bare['peak'] / 2**20:.0f} MiB of it is Python + numpy + Pillow + "
                             "OpenCV imports"})

        photo = load_photo(path)
        coco = load_label_set("coco-stuff-182")
        labels = new_label_map(photo.size, coco)
        labels[: SIZE[1] // 2] = coco.id_of("sky-other")
        edited = labels.copy()
        edited[3000:3500, 1000:4000] = coco.id_of("sea")
        coloured = folder / "labels-colour.png"
        Image.fromarray(coco.colorize(edited)).save(coloured, compress_level=1)
        map_s = _median_seconds(lambda: load_label_map(coloured, coco, size=photo.size), runs=3)
        rows.append({"name": "load 24-MP colour-coded label map", "value": round(map_s, 3), "unit": "s",
                     "target": None, "note": "RGB PNG mapped through the set's colours, ids checked; median of 3"})
        project = Project(photo, coco.name, labels, edited)
        target = folder / "work.sgraffito"
        save_s = _median_seconds(lambda: save_project(target, project), runs=3)
        load_s = _median_seconds(lambda: load_project(target), runs=3)
        rows.append({"name": "save 24-MP project", "value": round(save_s, 3), "unit": "s", "target": None,
                     "note": f"photo bytes + 2 label maps, atomic; {target.stat().st_size / 1e6:.1f} MB; median of 3"})
        rows.append({"name": "load 24-MP project", "value": round(load_s, 3), "unit": "s", "target": None,
                     "note": "validate, decode photo and label maps; median of 3"})
        for suffix in ("jpg", "png"):
            out = folder / f"export.{suffix}"
            seconds = _median_seconds(lambda: export_image(out, photo.rgb, metadata={"seeds": [1]}, generated=True),
                                      runs=3)
            rows.append({"name": f"export 24-MP {suffix.upper()}", "value": round(seconds, 3), "unit": "s",
                         "target": None, "note": f"{out.stat().st_size / 1e6:.1f} MB; median of 3"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:40s} {row['value']:>10} {row['unit']:4s} target {row['target']}  ({row['note']})")
