"""`sgraffito translate LABELS.png --out OUT.png`: render a label map into an image with an ASAPNet model.

It runs through the engine runtime like edit and colorize (engine/commands/_runner.py: one weight load through
the model cache, a progress bar, Ctrl+C cancels) and writes the one rendering to OUT. A folder, a glob or several
label maps render them all (engine/batch.py): --out is then a folder, DIR/<map's path without suffix>.png for each
(a folder of candidates for a sampling engine), with a manifest; resumable, sharded under torchrun."""

from __future__ import annotations

from pathlib import Path

from engine.batch import add_batch_arguments, is_batch
from engine.commands._runner import BackendBug, add_device_argument, add_engine_arguments, choose_engine, run_job
from engine.errors import InputError

DEFAULT_ENGINE = "asapnet"
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


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
    parser.add_argument("labels", nargs="+", metavar="LABELS.png",
                        help="the label map; a folder, a glob or several maps render them all (batch: --out is a "
                             "folder, a manifest, resumable; see README)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.png|DIR",
                        help="the image (ASAPNet), or for a sampling engine (taming) the folder for "
                             "candidate_XX.png and candidates.json")
    parser.add_argument("--label-set", metavar="SET", help="label set of LABELS.png (default: the model's)")
    parser.add_argument("--size", type=str, metavar="WxH", help="output size (default: the label map's size)")
    add_engine_arguments(parser, "translate", DEFAULT_ENGINE,
                         "an asapnet model name from the model list or a model folder (default: the demo model)")
    add_device_argument(parser)
    parser.add_argument("--samples", "-k", type=int, default=None, metavar="K",
                        help="candidates of a sampling engine (taming; default 4); ASAPNet renders one image")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="candidate i uses seed S + i (default 0)")
    parser.add_argument("--precision", default=None, choices=("fp32", "int8", "bf16", "fp16", "auto"),
                        help="weights of a taming transformer's linear layers: fp32 (default; exact), int8 (CPU), "
                             "bf16, fp16 (GPU) or auto (the fastest here, measured once); the VQGANs stay fp32")
    add_batch_arguments(parser)
    parser.set_defaults(run=run)


def _model_config(engine: str, model: str) -> dict:
    """The config.json of the model the request will use (its label set decides how LABELS.png is read)."""
    from engine import model_store, registry

    if model and Path(model).is_dir():
        return model_store.read_model_config(Path(model))
    return model_store.read_model_config(model_store.find_model(model or registry.spec(engine).default_model,
                                                                engine).path)


def _label_set(engine: str, args):
    """The label set LABELS.png is read in: --label-set, else the model's (they must agree)."""
    from engine.labels import load_label_set

    model_label_set = _model_config(engine, args.model).get("label_set")
    label_set = load_label_set(args.label_set or model_label_set)
    if model_label_set and label_set.name != model_label_set:
        raise InputError(f"model {args.model or 'demo'!r} reads {model_label_set} label maps, not {label_set.name}")
    return label_set


def _request(path: Path, engine: str, model: str, label_set, size, precision: str | None = None):
    """(the runtime request that renders the label map at `path`, the blank photo it is composed on)."""
    import cv2
    import numpy as np

    from engine.imageio import load_label_map
    from engine.jobs import Request

    labels = load_label_map(path, label_set)
    label_set.check_ids(labels, str(path))
    if size is not None and size != (labels.shape[1], labels.shape[0]):
        labels = cv2.resize(labels.astype(np.uint16), size, interpolation=cv2.INTER_NEAREST)
    labels = np.ascontiguousarray(labels)
    labels.flags.writeable = False  # shared by labels_before and labels_after, not copied
    blank = np.zeros((*labels.shape, 3), np.uint8)  # translate mode: no photo, the rendering is the image
    blank.flags.writeable = False
    request = Request(backend=engine, photo=blank, model=model, mode="translate", labels_before=labels,
                      labels_after=labels, label_set=label_set.name,
                      params={"max_side": max(labels.shape),  # the whole map at its full size, not a preview
                              **({"precision": precision} if precision else {})})
    return request, blank


def run(args) -> int:
    from engine.device import resolve_device

    from engine.commands._runner import write_image
    from engine.safe_io import refuse_input

    size = _size(args.size) if args.size else None
    engine = choose_engine(args, DEFAULT_ENGINE)
    sampling = engine != DEFAULT_ENGINE  # k candidates into a folder (taming); ASAPNet writes its one image
    if not sampling and getattr(args, "samples", None) not in (None, 1):
        raise InputError("ASAPNet translate writes one image per label map (--seed picks the texture of a model "
                         "with noise inputs, like the demo); --samples is for sampling engines (taming)")
    if sampling:
        args.samples = 4 if getattr(args, "samples", None) is None else args.samples
    if getattr(args, "precision", None) is not None and not sampling:
        raise InputError(f"--precision applies to sampling engines (taming), not {engine}")
    if is_batch(args.labels):
        return _run_batch(args, engine, sampling, size)
    args.labels = Path(args.labels[0])
    if sampling:
        args.inputs = [args.labels]
    elif args.out.suffix.lower() not in SUFFIXES:
        raise InputError(f"{args.out}: use a .png, .jpg, .webp or .tif output file")
    if not sampling:
        refuse_input(args.out, [args.labels], "--out")
    if not sampling and args.out.is_dir():
        raise InputError(f"--out {args.out} is a folder; give an image file name")
    device = resolve_device(args.device)
    request, blank = _request(args.labels, engine, args.model, _label_set(engine, args), size,
                              getattr(args, "precision", None))
    if sampling:
        from engine.commands._runner import run_request

        return run_request(engine, request, args)
    try:  # --seed draws the noise of a stochastic model (one with noise inputs); a deterministic one ignores it
        job = run_job(request.with_seed(args.seed), device, nothing_written=f"{args.out} not written")
    except BackendBug:
        return 1
    (candidate,) = job.candidates
    image = candidate.compose(blank)
    write_image(args.out, image)  # atomic: the previous file stays until the new one is complete
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}, {candidate.seconds * 1000:.0f} ms)")
    return 0


def _run_batch(args, engine: str, sampling: bool, size) -> int:
    import time

    from engine import batch, registry
    from engine.commands._runner import _build_request, check_samples, write_image

    if args.out.suffix.lower() in SUFFIXES:
        raise InputError(f"--out {args.out}: several label maps need a folder for their images")
    if sampling:
        check_samples(args.samples)
    label_set = _label_set(engine, args)
    model = args.model or registry.spec(engine).default_model

    def render(context: batch.ItemContext) -> list[Path]:
        started = time.perf_counter()
        request, blank = _request(context.item.sources[0], engine, args.model, label_set, size,
                                  getattr(args, "precision", None))
        if sampling:
            return context.write_candidates(context.run(_build_request(engine, request, args)), started)
        (candidate,) = context.run(request).candidates
        path = context.file(".png")
        write_image(path, candidate.compose(blank))
        return [path]

    items = batch.find_inputs(args.labels, args.out)
    options = batch.options_of(args, exclude=("labels",), engine=engine, model=model, label_set=label_set.name)
    return batch.run_batch(args, command="translate", items=items, options=options, engine=engine, model=model,
                           process=render)
