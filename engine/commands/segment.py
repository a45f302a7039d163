"""`sgraffito segment PHOTO --out LABELS.png [--model NAME|DIR] [--engine KIND] [--label-set SET]`: label a photo
automatically (engine/pipelines/segment.py) and write its label map as an indexed PNG at the photo's size.

It runs through the engine runtime like the other commands (engine/commands/_runner.py: a progress bar, Ctrl+C
cancels, device handling). Without --model it uses an imported DeepLab model when there is one (the network that
made the label maps ASSET's official models were trained on), else the shipped demo segmenter. The PNG's palette
indices are the label ids and its palette the label set's colours, so `sgraffito edit --labels LABELS.png` and
the editor read it back as is. `segment_photo` is the same thing for other commands (`edit` without --labels).
A folder, a glob or several photos segment them all (engine/batch.py): --out is then a folder, DIR/<photo's path
without suffix>.png for each, with a manifest; resumable, sharded under torchrun.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.batch import add_batch_arguments, is_batch
from engine.commands._runner import BackendBug, add_device_argument, add_engine_arguments, model_kind, run_job
from engine.errors import InputError

DEFAULT_ENGINE = "segmenter"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="label a photo automatically (writes a label map for edit and the editor)",
        description="Segment a photo into a label map of the model's label set, at the photo's size, its edges "
                    "snapped to the photo (a colour-guided filter; --no-snap for the plain upsampled result). "
                    "Without --model: an imported DeepLab model if there is one (`sgraffito import deeplab`), else "
                    "the demo segmenter (trained on synthetic landscapes; sky, clouds, mountains, water, grass, "
                    "trees, ...). The output is an indexed PNG whose indices are the label ids.")
    parser.add_argument("photo", nargs="+", metavar="PHOTO",
                        help="the photo; a folder, a glob or several photos segment them all (batch: --out is a "
                             "folder, a manifest, resumable; see README)")
    parser.add_argument("--out", type=Path, required=True, metavar="LABELS.png|DIR")
    add_engine_arguments(parser, "segment", DEFAULT_ENGINE,
                         "a segmenter or deeplab model name from `sgraffito models`, or a model folder "
                         "(default: an imported DeepLab model, else demo-segmenter-landscape)")
    parser.add_argument("--label-set", metavar="SET",
                        help="write ids of this label set (labels matched by name; default: the model's)")
    parser.add_argument("--no-snap", action="store_true", help="do not snap label edges to the photo")
    add_device_argument(parser)
    add_batch_arguments(parser)
    parser.set_defaults(run=run)


def default_model() -> tuple[str, str]:
    """(engine, model) when the user names none: the first imported DeepLab model, else the demo segmenter."""
    from engine import model_store, registry

    deeplab = model_store.list_models("deeplab")
    if deeplab:
        return "deeplab", deeplab[0].name
    return DEFAULT_ENGINE, registry.spec(DEFAULT_ENGINE).default_model


def choose(model: str = "", engine: str | None = None) -> tuple[str, str]:
    """(engine, model) for --model / --engine as given (see `default_model` when both are empty)."""
    if not model and not engine:
        return default_model()
    return engine or model_kind(model) or DEFAULT_ENGINE, model


def segment_photo(photo: np.ndarray, *, model: str = "", engine: str | None = None, label_set: str | None = None,
                  device: str | None = None, snap: bool = True, what: str = "nothing written"):
    """Segment `photo` (H, W, 3) uint8 RGB through the runtime (progress bar on stderr, Ctrl+C cancels).
    Returns (labels (H, W) uint16, label set name, engine.jobs.Candidate); raises BackendBug on a backend bug."""
    from engine.device import resolve_device

    request = segment_request(photo, model=model, engine=engine, label_set=label_set, snap=snap)
    return job_labels(run_job(request, resolve_device(device), nothing_written=what))


def segment_request(photo: np.ndarray, *, model: str = "", engine: str | None = None, label_set: str | None = None,
                    snap: bool = True):
    """The runtime request that segments `photo` (H, W, 3) uint8 RGB (a gray (H, W) one is made RGB)."""
    from engine.jobs import Request
    from engine.labels import load_label_set

    engine, model = choose(model, engine)
    params = {"snap": snap}
    if label_set:
        params["label_set"] = load_label_set(label_set).name  # an unknown set fails here, before any work
    if photo.ndim == 2:
        photo = np.repeat(photo[:, :, None], 3, 2)
    return Request(backend=engine, photo=photo, model=model, mode="segment", params=params)


def job_labels(job):
    """(labels (H, W) uint16, label set name, Candidate) of a finished segmentation job."""
    from engine.labels import load_label_set
    from engine.pipelines.segment import candidate_labels

    (candidate,) = job.candidates
    target = load_label_set(candidate.info["label_set"])
    return candidate_labels(candidate, target), target.name, candidate


def write_label_png(labels: np.ndarray, label_set, path: Path) -> None:
    """An indexed PNG (indices = ids, palette = the set's colours) for ids < 256, else a 16-bit id PNG."""
    from PIL import Image

    if int(labels.max(initial=0)) < 256:
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        image.putpalette(label_set.lookup_table()[:256].reshape(-1).tolist())
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    from engine.safe_io import atomic_write

    try:
        with atomic_write(path) as handle:  # a full disk or a crash never leaves half a map
            image.save(handle, format="PNG")
    except ValueError as error:
        raise InputError(f"{path}: cannot write ({error})") from None


def run(args) -> int:
    from engine.imageio import load_photo
    from engine.labels import load_label_set

    from engine.safe_io import refuse_input

    if is_batch(args.photo):
        return _run_batch(args)
    args.photo = Path(args.photo[0])
    if args.out.suffix.lower() != ".png":
        raise InputError(f"{args.out}: a label map is written as a .png file")
    refuse_input(args.out, [args.photo], "--out")
    photo = load_photo(args.photo)
    rgb = photo.rgb if photo.rgb.ndim == 3 else np.repeat(photo.rgb[:, :, None], 3, 2)
    try:
        labels, set_name, candidate = segment_photo(rgb, model=args.model, engine=args.engine,
                                                    label_set=args.label_set, device=args.device,
                                                    snap=not args.no_snap, what=f"{args.out} not written")
    except BackendBug:
        return 1
    write_label_png(labels, load_label_set(set_name), args.out)
    shares = sorted(candidate.info["labels"].items(), key=lambda item: -item[1])
    summary = ", ".join(f"{name} {share:.0%}" for name, share in shares[:6])
    print(f"wrote {args.out} ({labels.shape[1]}x{labels.shape[0]}, {set_name}, {candidate.seconds:.1f} s): {summary}")
    return 0


def _run_batch(args) -> int:
    from engine import batch, registry
    from engine.imageio import load_photo
    from engine.labels import load_label_set

    if args.out.suffix.lower() == ".png":
        raise InputError(f"--out {args.out}: several photos need a folder for their label maps")
    engine, model = choose(args.model, args.engine)
    if args.label_set:
        load_label_set(args.label_set)  # an unknown set fails before the model loads

    def segment(context: batch.ItemContext) -> list[Path]:
        photo = load_photo(context.item.sources[0])
        request = segment_request(photo.rgb, model=model, engine=engine, label_set=args.label_set,
                                  snap=not args.no_snap)
        labels, set_name, _ = job_labels(context.run(request))
        path = context.file(".png")
        write_label_png(labels, load_label_set(set_name), path)
        return [path]

    items = batch.find_inputs(args.photo, args.out)
    options = batch.options_of(args, exclude=("photo",), engine=engine, model=model)
    return batch.run_batch(args, command="segment", items=items, options=options, engine=engine,
                           model=model or registry.spec(engine).default_model, process=segment)
