"""`sgraffito translate LABELS.png --out OUT.png`: render a label map into an image with an ASAPNet model."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from engine.errors import InputError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 512x384") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise InputError(f"--size {text!r}: each side must be between 16 and 8192 pixels")
    return w, h


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "translate", help="render a label map into an image (ASAPNet)",
        description="Render a label map (id PNG, indexed PNG or colour-coded PNG) into a photo-like image with an "
                    "ASAPNet model. The model runs at the label map's size (or --size) padded to its tile size.")
    parser.add_argument("labels", type=Path, metavar="LABELS.png")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.png")
    parser.add_argument("--label-set", metavar="SET", help="label set of LABELS.png (default: the model's)")
    parser.add_argument("--size", type=str, metavar="WxH", help="output size (default: the label map's size)")
    parser.add_argument("--model", default="", metavar="NAME",
                        help="an asapnet model name from the model list or a model folder (default: the demo model)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from engine.device import resolve_device
    from engine.imageio import load_label_map
    from engine.labels import load_label_set
    from engine.models.asapnet import ASAPNetRenderer

    size = _size(args.size) if args.size else None
    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"):
        raise InputError(f"{args.out}: use a .png, .jpg, .webp or .tif output file")
    renderer = ASAPNetRenderer.load(args.model, resolve_device(args.device))
    label_set = load_label_set(args.label_set or renderer.label_set)
    if renderer.label_set and label_set.name != renderer.label_set:
        raise InputError(f"model {args.model or 'demo'!r} reads {renderer.label_set} label maps, "
                         f"not {label_set.name}")
    labels = load_label_map(args.labels, label_set)
    started = time.perf_counter()
    image = renderer.render(labels, size, source=str(args.labels))
    seconds = time.perf_counter() - started
    try:
        Image.fromarray(image).save(args.out)
    except OSError as error:
        raise InputError(f"{args.out}: cannot write ({error})") from None
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}, {seconds * 1000:.0f} ms)")
    return 0
