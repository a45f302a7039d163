"""`sgraffito edit PHOTO --labels L.png --new-labels L2.png [--samples K] [--model NAME|DIR] [--engine KIND]
--out DIR`.

`sgraffito edit ROWS.csv --out DIR` (or ROWS.json) edits every row's photo (engine/batch.py): rows of photo, labels
(may be empty: the photo is segmented) and new labels, relative to the list's folder; DIR/<photo's path>/ gets each
row's candidates, with a manifest; resumable, sharded under torchrun."""

from __future__ import annotations

from pathlib import Path

from engine.batch import add_batch_arguments
from engine.commands._runner import add_engine_arguments, add_runner_arguments, choose_engine, run_request
from engine.errors import InputError

ROW_LISTS = (".csv", ".json")

DEFAULT_ENGINE = "asset"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="resample the part of a photo whose labels you changed (ASSET)",
        description="Sample K versions of a photo in which the pixels whose label differs between --labels and "
        "--new-labels are regenerated (ASSET; ASAPNet with --engine asapnet), everything else kept. Label maps: "
        "id PNGs, indexed PNGs or colour-coded PNGs of the label set, at the photo's size.",
    )
    parser.add_argument("photo", help="the photo to edit, or a .csv/.json list of rows photo,labels,new_labels "
                                      "(batch: a folder per row under --out, a manifest, resumable; see README)")
    parser.add_argument("--labels", metavar="L.png",
                        help="the photo's label map (default: segment the photo as `sgraffito segment` does and "
                        "write that map to DIR/labels.png)")
    parser.add_argument("--new-labels", metavar="L2.png", help="the edited label map (required for one photo)")
    add_engine_arguments(parser, "edit", DEFAULT_ENGINE,
                         "a model name from `sgraffito models` or a model folder (default: the engine's demo)")
    parser.add_argument("--label-set", default="coco-stuff-182", metavar="SET",
                        help="label set of both maps (default coco-stuff-182)")
    parser.add_argument("--top-k", type=int, default=100, metavar="N", help="sample among the N likeliest tokens")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--reference-token-mask", action="store_true",
                        help="resample only 16x16 cells whose top-left pixel changed, as the official ASSET code "
                        "(default: every cell the edit touches)")
    parser.add_argument("--decode-margin", default="4", metavar="N|full",
                        help="tokens of context decoded around the edit (default 4); 'full' decodes the whole "
                        "image as the official code does (slower; the decoder's attention then also sees the far parts of the "
                        "image, so the edit's pixels can differ slightly)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8", "bf16", "fp16", "auto"),
                        help="weights of ASSET's token-by-token sampling: fp32 (default; exact), int8 (CPU, about 3x "
                        "faster), bf16, fp16 (GPU) or auto (the fastest on this machine, measured once)")
    add_runner_arguments(parser)
    add_batch_arguments(parser)
    parser.set_defaults(run=run)


def _request(args, label_set, photo_path, labels_path, new_labels_path, segment) -> dict:
    """The request fields of one edit; `segment(rgb)` gives the label map when `labels_path` is None."""
    from engine.imageio import load_label_map, load_photo

    photo = load_photo(photo_path)
    size = (photo.rgb.shape[1], photo.rgb.shape[0])
    if labels_path:
        before = load_label_map(labels_path, label_set, size)
    else:  # segment the photo itself (an imported DeepLab model, else the demo segmenter)
        before = segment(photo.rgb)
    after = load_label_map(new_labels_path, label_set, size)
    label_set.check_ids(after, str(new_labels_path))
    if (before == after).all():
        raise InputError(f"{labels_path or 'the segmented photo'} and {new_labels_path} are identical: nothing to "
                         "edit")
    params = {"top_k": args.top_k, "temperature": args.temperature,
              "token_mask": "reference" if args.reference_token_mask else "cover",
              "decode_margin": args.decode_margin, "precision": args.precision}
    return {"photo": photo.rgb, "labels_before": before, "labels_after": after, "model": args.model,
            "mode": "edit", "label_set": label_set.name, "params": params}


def run(args) -> int:
    from engine.commands._runner import BackendBug
    from engine.commands.segment import segment_photo
    from engine.labels import load_label_set
    from engine.safe_io import finite

    if args.top_k < 1:
        raise InputError("--top-k must be at least 1")
    args.temperature = finite(args.temperature, "--temperature", positive=True)
    label_set = load_label_set(args.label_set)
    if Path(args.photo).suffix.lower() in ROW_LISTS:
        return _run_batch(args, label_set)
    if not args.new_labels:
        raise InputError("--new-labels is required: the edited label map of the photo")

    def segment(rgb):
        return segment_photo(rgb, label_set=label_set.name, device=args.device, what="nothing written")[0]

    try:
        request = _request(args, label_set, args.photo, args.labels, args.new_labels, segment)
    except BackendBug:
        return 1
    before = request["labels_before"]
    args.inputs = [args.photo, args.labels, args.new_labels]  # never written over (run_request checks --out)
    status = run_request(choose_engine(args, DEFAULT_ENGINE), request, args)
    if not args.labels and status == 0:
        import sys

        from engine.commands.segment import write_label_png
        from engine.safe_io import refuse_input

        target = Path(args.out) / "labels.png"  # the segmented map, reusable as --labels
        try:
            refuse_input(target, [args.photo, args.new_labels], "the segmented label map")
            write_label_png(before, label_set, target)
        except InputError as error:
            print(f"sgraffito: warning: {error}", file=sys.stderr)
    return status


def _run_batch(args, label_set) -> int:
    import time

    from engine import batch, registry
    from engine.commands._runner import _build_request, check_samples
    from engine.commands.segment import job_labels, segment_request, write_label_png

    if args.labels or args.new_labels:
        raise InputError(f"{args.photo} lists the label maps of every row; leave out --labels and --new-labels")
    check_samples(args.samples)
    engine = choose_engine(args, DEFAULT_ENGINE)
    model = args.model or registry.spec(engine).default_model

    def edit(context: batch.ItemContext) -> list[Path]:
        started = time.perf_counter()
        photo, labels, new_labels = context.item.sources

        def segment(rgb):
            return job_labels(context.run(segment_request(rgb, label_set=label_set.name)))[0]

        fields = _request(args, label_set, photo, labels, new_labels, segment)
        files = context.write_candidates(context.run(_build_request(engine, fields, args)), started)
        if labels is None:  # the segmented map, reusable as a row's labels
            files.append(context.folder() / "labels.png")
            write_label_png(fields["labels_before"], label_set, files[-1])
        return files

    items = batch.read_edit_rows(args.photo)
    options = batch.options_of(args, exclude=("photo", "labels", "new_labels"), engine=engine, model=model)
    return batch.run_batch(args, command="edit", items=items, options=options, engine=engine, model=model,
                           process=edit)
