"""`sgraffito colorize PHOTO [--model pixelcnn|coltran] [--samples K] [--hints hints.json] --out DIR`."""

from __future__ import annotations

import json
from pathlib import Path

from engine.commands._runner import add_runner_arguments, run_request
from engine.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "colorize",
        help="sample colourings of a gray (or colour) photo",
        description="Sample K colourings of a photo with a colorization backend (the photo's own colours, if "
        "any, are ignored). Colour hints, a JSON list of {x, y, radius, rgb} in photo pixels with rgb as "
        "[r, g, b] or \"#rrggbb\", fix the colour under each disk.",
    )
    parser.add_argument("photo", help="the photo to colour")
    parser.add_argument("--model", default="pixelcnn", metavar="BACKEND",
                        help="colorization backend, e.g. pixelcnn (default) or coltran")
    parser.add_argument("--weights", default="", metavar="NAME|DIR",
                        help="model folder name or path (default: the backend's demo model)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature; 0 gives the most likely colours (default: the backend's)")
    parser.add_argument("--hints", metavar="HINTS.json", help="colour hints")
    add_runner_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from engine.imageio import load_photo

    photo = load_photo(args.photo)
    params = {}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.hints:
        try:
            params["hints"] = json.loads(Path(args.hints).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{args.hints}: cannot read hints: {error}") from None
    return run_request(args.model, {"photo": photo.rgb, "model": args.weights, "params": params}, args)
