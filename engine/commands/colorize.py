"""`sgraffito colorize PHOTO [--model pixelcnn|coltran] [--samples K] [--hints hints.json] --out DIR`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "colorize",
        help="sample colourings of a gray (or colour) photo",
        description="Sample K colourings of a photo with a colorization backend and write them as PNGs. "
        "Colour hints (a JSON list of {x, y, radius, rgb} in photo pixels) fix the colour under each disk.",
    )
    parser.add_argument("photo", help="the photo to colour (its colours, if any, are ignored)")
    parser.add_argument("--model", default="pixelcnn", metavar="BACKEND",
                        help="colorization backend: pixelcnn (default) or coltran")
    parser.add_argument("--weights", default="", metavar="NAME|DIR",
                        help="model folder name or path (default: the backend's demo model)")
    parser.add_argument("--samples", "-k", type=int, default=4, metavar="K", help="number of colourings (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default 0)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature; 0 gives the most likely colours (default: the backend's)")
    parser.add_argument("--hints", metavar="HINTS.json", help="colour hints")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created if missing)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from PIL import Image

    from engine.errors import InputError, SgraffitoError
    from engine.imageio import load_photo
    from engine.jobs import JobState, Request, Runtime, backend_names, discover_backends

    photo = load_photo(args.photo)
    params = {}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.hints:
        try:
            params["hints"] = json.loads(Path(args.hints).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"{args.hints}: cannot read hints: {error}") from None
    discover_backends()
    if args.model not in backend_names():
        raise InputError(f"no colorization backend {args.model!r} (available: {', '.join(backend_names())})")
    request = Request(backend=args.model, photo=photo.rgb, model=args.weights, k=args.samples, seed=args.seed,
                      params=params)
    runtime = Runtime(device=args.device)
    shown = {"stage": ""}

    def report(event) -> None:
        if event.stage != shown["stage"] and event.kind == "progress":
            shown["stage"] = event.stage
            print(f"\r{event.fraction:4.0%} {event.stage:60.60s}", end="", file=sys.stderr, flush=True)

    runtime.add_listener(report)
    job = runtime.submit(request)
    try:
        job.wait()
    except KeyboardInterrupt:
        runtime.cancel_all()
        job.wait(10)
        raise
    finally:
        runtime.shutdown()
    print(file=sys.stderr)
    if job.state is JobState.FAILED:
        if job.traceback:
            print(job.traceback, file=sys.stderr)
        raise SgraffitoError(job.error)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.photo).stem
    for candidate in job.candidates:
        path = out / f"{stem}-{args.model}-{candidate.seed}.png"
        Image.fromarray(candidate.compose(photo.rgb)).save(path)
        print(path)
    print(f"{len(job.candidates)} colourings in {job.seconds:.1f} s", file=sys.stderr)
    return 0
