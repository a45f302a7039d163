"""`sgraffito colorize PHOTO [--engine pixelcnn|coltran] [--model NAME|DIR] [--samples K] [--hints H.json] --out DIR`.

A folder, a glob or several photos colour them all (engine/batch.py): DIR/<photo's path>/candidate_XX.png and
candidates.json for each, a manifest, resumable, sharded under torchrun.

Until the next release the old spellings still work, with a warning: `--model pixelcnn|coltran` (the engine)
and `--weights NAME|DIR` (the model)."""

from __future__ import annotations

from pathlib import Path

from engine.batch import add_batch_arguments, is_batch
from engine.commands._runner import (_build_request, add_engine_arguments, add_runner_arguments, check_samples,
                                     choose_engine, deprecated, run_request)
from engine.errors import InputError

DEFAULT_ENGINE = "pixelcnn"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "colorize",
        help="sample colourings of a gray (or colour) photo",
        description="Sample K colourings of a photo with a colorization engine (the photo's own colours, if "
        "any, are ignored). Colour hints, a JSON list of {x, y, radius, rgb} in photo pixels with rgb as "
        "[r, g, b] or \"#rrggbb\", fix the colour under each disk.",
    )
    parser.add_argument("photo", nargs="+", metavar="PHOTO",
                        help="the photo to colour; a folder, a glob or several photos colour them all (batch: "
                             "a folder per photo under --out, a manifest, resumable; see README)")
    add_engine_arguments(parser, "colorize", DEFAULT_ENGINE,
                         "a colorization model name from `sgraffito models` or a model folder (default: the "
                         "engine's demo model)")
    parser.add_argument("--weights", default=None, metavar="NAME|DIR", help="deprecated: use --model")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature, a finite number >= 0; 0 gives the most likely colours "
                             "(default: the engine's)")
    parser.add_argument("--hints", metavar="HINTS.json", help="colour hints")
    parser.add_argument("--precision", default=None, choices=("fp32", "int8", "bf16", "fp16", "auto"),
                        help="weights of ColTran's pixel-by-pixel decoders: fp32 (default; exact), int8 (CPU, about "
                        "1.8x faster at official size), bf16, fp16 (GPU) or auto (the fastest here, measured once)")
    add_runner_arguments(parser)
    add_batch_arguments(parser)
    parser.add_argument("--gray-only", action="store_true",
                        help="batch mode: leave photos that already have colour alone (recorded as failed) instead "
                             "of colouring them again (gray and single-tint photos, such as sepia, are coloured)")
    parser.set_defaults(run=run)


def _old_spellings(args) -> None:
    """`--model pixelcnn|coltran` meant the engine and `--weights` the model; map them, with a warning."""
    from engine import registry

    engines = {s.kind for s in registry.specs("colorize") if s.backend}
    if args.model in engines and not args.engine and not Path(args.model).is_dir():
        deprecated(f"--model {args.model} (the engine)", f"--engine {args.model}")
        args.engine, args.model = args.model, ""
    if args.weights is not None:
        deprecated(f"--weights {args.weights}", f"--model {args.weights}")
        if args.model:
            raise InputError(f"--weights {args.weights} and --model {args.model} both name the model; keep --model")
        args.model = args.weights


def run(args) -> int:
    from engine.hints import parse_hints
    from engine.imageio import load_photo
    from engine.safe_io import finite, read_json

    _old_spellings(args)
    engine = choose_engine(args, DEFAULT_ENGINE)
    params = {}
    if args.temperature is not None:  # 0 is allowed: the most likely colours
        params["temperature"] = finite(args.temperature, "--temperature", minimum=0.0)
    if args.precision is not None:
        if engine != "coltran":
            raise InputError(f"--precision applies to --engine coltran, not {engine}")
        params["precision"] = args.precision
    if is_batch(args.photo):
        return _run_batch(args, engine, params)
    args.photo = args.photo[0]
    if args.hints:  # checked before the photo is decoded and the model loaded
        hints = read_json(args.hints, "hints")
        parse_hints(hints, args.hints)
        params["hints"] = hints
    photo = load_photo(args.photo)
    args.inputs = [args.photo, args.hints]  # never written over (run_request checks --out)
    fields = {"photo": photo.rgb, "model": args.model, "mode": "colorize", "params": params}
    return run_request(engine, fields, args)


def _run_batch(args, engine: str, params: dict) -> int:
    import time

    from engine import batch, registry
    from engine.imageio import load_photo

    if args.hints:
        raise InputError("--hints are points of one photo; colour a folder without them")
    model = args.model or registry.spec(engine).default_model
    check_samples(args.samples)  # once, before the model loads

    def colour(context: batch.ItemContext) -> list[Path]:
        started = time.perf_counter()
        photo = load_photo(context.item.sources[0])
        if args.gray_only and not photo.is_grayscale:  # sepia and other single tints count as gray
            raise InputError(f"{photo.name} already has colour (--gray-only)")
        request = _build_request(engine, {"photo": photo.rgb, "model": args.model, "mode": "colorize",
                                          "params": params}, args)
        return context.write_candidates(context.run(request), started)

    items = batch.find_inputs(args.photo, args.out)
    options = batch.options_of(args, exclude=("photo", "hints", "gray_only"), engine=engine, model=model)
    return batch.run_batch(args, command="colorize", items=items, options=options, engine=engine, model=model,
                           process=colour)
