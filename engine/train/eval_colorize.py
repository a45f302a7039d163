"""The colorizers' acceptance evaluation on real photos (issue 20), for a model card:

    python -m engine.train.eval_colorize MODEL_DIR [--photos held-out|mate|both] [--size 128] [--limit N]

Photos: the held-out split of the real photo cache (engine.data.photos, `sgraffito data photos`: photos no model
trains on) and Debian's mate-backgrounds nature photos (/usr/share/backgrounds/mate/nature/*.jpg, evaluation
only), brought to `size` px on the long side, taken in file-name order (`limit`: the first N of each set). The
model sees each photo's BT.601 gray version, as the pipelines make it, and colours it `samples` times (seeds 0,
1, 2, ...). Criteria, each on the mean over a set's photos:

  (a) chroma PSNR of one sample (seed 0) above the gray baseline's. Chroma PSNR: PSNR of the CIELAB a*, b*
      channels against the original, peak 255 (engine.metrics.chroma_psnr); the gray baseline is the gray photo
      itself (a* = b* = 0), what a colorizer that adds no colour scores.
  (b) best-of-`samples` chroma PSNR (the best sample per photo) at least 1 dB above the gray baseline.
  (c) colourfulness (Hasler and Suesstrunk, engine.metrics.colorfulness) of the samples within 25 % of the
      originals'.
  (d) a colour hint moves the hinted region's mean colour at least halfway to the hint
      (engine.metrics.hint_progress >= 0.5, on CIELAB a*b*). Per photo one hint: a disk of radius a tenth of the
      long side, centred on whichever of nine grid points (a quarter, half, three quarters across and down) has
      the mid-grayest disk (most room for colour); its colour has the disk's mean luma and the chroma, among 8
      hues at 70 % of the largest in-gamut saturation, farthest from the unhinted sample's (seed 0) mean colour
      there; the hinted run uses the same seed. Both pipelines keep the photo's luminance, so a hint can only
      move hue and saturation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from engine.errors import InputError
from engine.hints import Hint
from engine.metrics import chroma_psnr, colorfulness, hint_progress, lab_chroma
from engine.pipelines.coltran import to_gray  # BT.601 luma: the gray both pipelines and transfer_chroma use

PHOTO_SETS = ("held-out", "mate")
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
PASS_BEST_MARGIN_DB = 1.0
PASS_COLOURFULNESS_TOLERANCE = 0.25
PASS_HINT_PROGRESS = 0.5

Colorize = Callable[[np.ndarray, list[int], list[Hint]], list[np.ndarray]]


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    scale = size / max(rgb.shape[:2])
    if scale >= 1:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def evaluation_photos(which: str, size: int = 128, limit: int | None = None,
                      cache: Path | None = None) -> list[tuple[str, np.ndarray]]:  # fmt: skip
    """[(name, (h, w, 3) uint8)] of a photo set at `size` px on the long side, in file-name order."""
    if which == "held-out":
        from engine.data.photos import load_photos

        photos = load_photos("held-out", cache)
    elif which == "mate":
        from engine.imageio import load_photo

        paths = sorted(MATE_NATURE.glob("*.jpg"))
        if not paths:
            raise InputError(f"no mate-backgrounds photos in {MATE_NATURE}: `apt-get install mate-backgrounds`")
        photos = [(f"mate-backgrounds/nature/{p.name}", load_photo(p).rgb) for p in paths]
    else:
        raise InputError(f"photo set must be one of {', '.join(PHOTO_SETS)}, not {which!r}")
    return [(name, _fit(rgb, size)) for name, rgb in photos[:limit]]


def load_colorizer(model_dir: str | Path, device: str = "cpu") -> tuple[str, Colorize]:
    """(kind, colorize(gray, seeds, hints) -> one RGB image per seed) of a ColTran or PixelCNN model folder."""
    folder = Path(model_dir)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"{folder}: not a model folder (no config.json)")
    kind = json.loads(config_file.read_text()).get("kind")
    if kind == "coltran":
        from engine.pipelines import coltran as pipeline
    elif kind == "pixelcnn":
        from engine.pipelines import pixelcnn as pipeline
    else:
        raise InputError(f"{folder}: a {kind!r} model, not a colorizer (coltran or pixelcnn)")
    model = pipeline.load_folder_model(folder, device)

    def colorize(gray: np.ndarray, seeds: list[int], hints: list[Hint]) -> list[np.ndarray]:
        return pipeline.colorize(model, gray, seeds, temperature=1.0, hints=hints, device=device)

    return kind, colorize


def disk(shape: tuple[int, int], x: float, y: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]]
    return (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= radius**2


def hint_region(gray: np.ndarray) -> tuple[float, float, float]:
    """(x, y, radius) of the evaluation hint: the grid point whose disk is closest to mid-gray on average."""
    h, w = gray.shape
    radius = max(3.0, 0.1 * max(h, w))
    points = [(fx * w, fy * h) for fy in (0.25, 0.5, 0.75) for fx in (0.25, 0.5, 0.75)]
    x, y = min(points, key=lambda p: abs(float(gray[disk(gray.shape, *p, radius)].mean()) - 127.5))
    return x, y, radius


def hint_colour(luma: float, avoid_rgb: np.ndarray) -> tuple[int, int, int]:
    """A colour of luma `luma`: among 8 hues at 70 % of the largest in-gamut saturation, the one whose CIELAB
    a*b* is farthest from `avoid_rgb`'s (the region's colour without the hint)."""
    # RGB offsets of a unit chroma step (B - Y, R - Y), as engine.composite.transfer_chroma moves colour
    to_offsets = np.array([[0, 1], [-0.114 / 0.587, -0.299 / 0.587], [1, 0]])
    avoid = lab_chroma(np.asarray(avoid_rgb, np.uint8).reshape(1, 1, 3))[0, 0]
    best, best_distance = (int(round(luma)),) * 3, -1.0
    for angle in np.arange(8) * np.pi / 4:
        offsets = to_offsets @ np.array([np.cos(angle), np.sin(angle)])
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(offsets > 0, (255 - luma) / offsets, np.where(offsets < 0, -luma / offsets, np.inf))
        rgb = np.clip(np.rint(luma + 0.7 * min(float(room.min()), 200.0) * offsets), 0, 255).astype(np.uint8)
        distance = float(np.linalg.norm(lab_chroma(rgb.reshape(1, 1, 3))[0, 0] - avoid))
        if distance > best_distance:
            best, best_distance = tuple(int(v) for v in rgb), distance
    return best


def evaluate_photo(colorize: Colorize, truth: np.ndarray, samples: int = 3) -> dict:
    """One photo's numbers: chroma PSNR of the gray baseline, of each sample, colourfulness, hint progress."""
    gray = to_gray(truth)
    images = colorize(gray, list(range(samples)), [])
    x, y, radius = hint_region(gray)
    region = disk(gray.shape, x, y, radius)
    before = images[0]
    colour = hint_colour(float(gray[region].mean()), before[region].mean(axis=0))
    hinted = colorize(gray, [0], [Hint(x, y, radius, colour)])[0]
    return {"chroma_psnr_gray": chroma_psnr(np.repeat(gray[:, :, None], 3, axis=2), truth),
            "chroma_psnr_samples": [chroma_psnr(image, truth) for image in images],
            "colourfulness_samples": [colorfulness(image) for image in images],
            "colourfulness_original": colorfulness(truth),
            "hint": {"x": x, "y": y, "radius": radius, "rgb": list(colour)},
            "hint_progress": hint_progress(before, hinted, colour, region)}


def summarise(rows: list[dict]) -> dict:
    """A set's means and the four criteria, pass or fail (see the module docstring)."""
    gray = float(np.mean([r["chroma_psnr_gray"] for r in rows]))
    one = float(np.mean([r["chroma_psnr_samples"][0] for r in rows]))
    best = float(np.mean([max(r["chroma_psnr_samples"]) for r in rows]))
    colour_samples = float(np.mean([np.mean(r["colourfulness_samples"]) for r in rows]))
    colour_originals = float(np.mean([r["colourfulness_original"] for r in rows]))
    ratio = colour_samples / colour_originals if colour_originals > 0 else float("nan")
    progress = [r["hint_progress"] for r in rows if not math.isnan(r["hint_progress"])]
    hint_mean = float(np.mean(progress)) if progress else float("nan")
    return {
        "chroma_psnr_gray": gray, "chroma_psnr_one_sample": one, "chroma_psnr_best": best,
        "colourfulness_samples": colour_samples, "colourfulness_originals": colour_originals,
        "colourfulness_ratio": ratio, "hint_progress_mean": hint_mean,
        "hint_progress_min": float(min(progress)) if progress else float("nan"),
        "pass": {"one_sample_above_gray": one > gray,
                 "best_at_least_1dB_above_gray": best >= gray + PASS_BEST_MARGIN_DB,
                 "colourfulness_within_25pct": abs(ratio - 1) <= PASS_COLOURFULNESS_TOLERANCE,
                 "hint_moves_halfway": hint_mean >= PASS_HINT_PROGRESS},
    }


def evaluate(model_dir: str | Path, photo_sets=PHOTO_SETS, size: int = 128, limit: int | None = None,
             samples: int = 3, device: str = "cpu", cache: Path | None = None, log=print) -> dict:  # fmt: skip
    """The evaluation of one model folder on the named photo sets: {"model", "kind", "size", "samples", "sets":
    {name: summary + "photos" (names) + "per_photo" + "seconds_per_photo"}, "passed"}."""
    if samples < 1:
        raise InputError("samples must be at least 1")
    kind, colorize = load_colorizer(model_dir, device)
    result = {"model": str(model_dir), "kind": kind, "size": size, "samples": samples, "sets": {}}
    for which in photo_sets:
        photos = evaluation_photos(which, size, limit, cache)
        rows, started = [], time.perf_counter()
        for n, (name, truth) in enumerate(photos):
            rows.append({"photo": name, **evaluate_photo(colorize, truth, samples)})
            log(f"{which} {n + 1}/{len(photos)} {name}: sample {rows[-1]['chroma_psnr_samples'][0]:.2f} dB, gray "
                f"{rows[-1]['chroma_psnr_gray']:.2f} dB, hint {rows[-1]['hint_progress']:.2f}")
        result["sets"][which] = {**summarise(rows), "photos": [r["photo"] for r in rows], "per_photo": rows,
                                 "seconds_per_photo": (time.perf_counter() - started) / max(1, len(rows))}
    result["passed"] = all(all(s["pass"].values()) for s in result["sets"].values())
    return result


def markdown(result: dict) -> str:
    """The model card's block: one table per photo set, pass or fail per criterion."""
    n = result["samples"]
    out = [f"### Real photos ({result['kind']}, {result['size']} px long side, {n} samples per photo)", "",
           "Chroma PSNR: CIELAB a*b*, peak 255, against the original; gray baseline: the gray photo (zero chroma). "
           "Colourfulness: Hasler and Suesstrunk. Hint: one hint per photo, progress = 1 - |after - hint| / "
           "|before - hint| of the region's mean a*b* (`python -m engine.train.eval_colorize`).", ""]
    mark = {True: "pass", False: "**fail**"}
    for which, s in result["sets"].items():
        p = s["pass"]
        out += [f"{which}: {len(s['photos'])} photos ({', '.join(Path(x).name for x in s['photos'])})", "",
                "| criterion | value | target | result |", "|---|---|---|---|",
                f"| chroma PSNR, one sample | {s['chroma_psnr_one_sample']:.2f} dB | > gray "
                f"{s['chroma_psnr_gray']:.2f} dB | {mark[p['one_sample_above_gray']]} |",
                f"| chroma PSNR, best of {n} | {s['chroma_psnr_best']:.2f} dB | >= "
                f"{s['chroma_psnr_gray'] + PASS_BEST_MARGIN_DB:.2f} dB | {mark[p['best_at_least_1dB_above_gray']]} |",
                f"| colourfulness, samples / originals | {s['colourfulness_samples']:.1f} / "
                f"{s['colourfulness_originals']:.1f} = {s['colourfulness_ratio']:.2f} | 0.75-1.25 | "
                f"{mark[p['colourfulness_within_25pct']]} |",
                f"| hint progress, mean (min) | {s['hint_progress_mean']:.2f} ({s['hint_progress_min']:.2f}) | "
                f">= {PASS_HINT_PROGRESS} | {mark[p['hint_moves_halfway']]} |", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train.eval_colorize", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="a ColTran or PixelCNN model folder")
    parser.add_argument("--photos", choices=[*PHOTO_SETS, "both"], default="both", help="photo set (default both)")
    parser.add_argument("--size", type=int, default=128, help="long side in px (default 128)")
    parser.add_argument("--limit", type=int, help="only the first N photos of each set (file-name order)")
    parser.add_argument("--samples", type=int, default=3, help="samples per photo (default 3: best of 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cache", help="the photo cache (default: engine.data.photos.photo_dir())")
    parser.add_argument("--json", dest="json_out", help="write the result dict here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sets = PHOTO_SETS if args.photos == "both" else (args.photos,)
    try:
        result = evaluate(args.model_dir, sets, args.size, args.limit, args.samples, args.device,
                          Path(args.cache) if args.cache else None, log=lambda m: print(m, file=sys.stderr))
    except InputError as error:
        print(f"eval_colorize: {error}", file=sys.stderr)
        return 2
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
