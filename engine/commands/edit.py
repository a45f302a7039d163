"""`sgraffito edit PHOTO --labels L.png --new-labels L2.png [--samples K] [--model NAME|DIR] [--engine KIND]
--out DIR`."""

from __future__ import annotations

from engine.commands._runner import add_engine_arguments, add_runner_arguments, choose_engine, run_request

DEFAULT_ENGINE = "asset"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="resample the part of a photo whose labels you changed (ASSET)",
        description="Sample K versions of a photo in which the pixels whose label differs between --labels and "
        "--new-labels are regenerated (ASSET; ASAPNet with --engine asapnet), everything else kept. Label maps: "
        "id PNGs, indexed PNGs or colour-coded PNGs of the label set, at the photo's size.",
    )
    parser.add_argument("photo", help="the photo to edit")
    parser.add_argument("--labels", metavar="L.png",
                        help="the photo's label map (default: segment the photo as `sgraffito segment` does and "
                        "write that map to DIR/labels.png)")
    parser.add_argument("--new-labels", required=True, metavar="L2.png", help="the edited label map")
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
    add_runner_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from engine.errors import InputError
    from engine.imageio import load_label_map, load_photo
    from engine.labels import load_label_set
    from engine.safe_io import finite

    if args.top_k < 1:
        raise InputError("--top-k must be at least 1")
    args.temperature = finite(args.temperature, "--temperature", positive=True)
    photo = load_photo(args.photo)
    label_set = load_label_set(args.label_set)
    size = (photo.rgb.shape[1], photo.rgb.shape[0])
    if args.labels:
        before = load_label_map(args.labels, label_set, size)
    else:  # segment the photo itself (an imported DeepLab model, else the demo segmenter)
        from engine.commands._runner import BackendBug
        from engine.commands.segment import segment_photo

        try:
            before = segment_photo(photo.rgb, label_set=label_set.name, device=args.device,
                                   what="nothing written")[0]
        except BackendBug:
            return 1
    after = load_label_map(args.new_labels, label_set, size)
    label_set.check_ids(after, args.new_labels)
    if (before == after).all():
        raise InputError(f"{args.labels or 'the segmented photo'} and {args.new_labels} are identical: nothing to "
                         "edit")
    params = {"top_k": args.top_k, "temperature": args.temperature,
              "token_mask": "reference" if args.reference_token_mask else "cover",
              "decode_margin": args.decode_margin}
    args.inputs = [args.photo, args.labels, args.new_labels]  # never written over (run_request checks --out)
    request = {"photo": photo.rgb, "labels_before": before, "labels_after": after, "model": args.model,
               "mode": "edit", "label_set": label_set.name, "params": params}
    status = run_request(choose_engine(args, DEFAULT_ENGINE), request, args)
    if not args.labels and status == 0:
        import sys
        from pathlib import Path

        from engine.commands.segment import write_label_png
        from engine.safe_io import refuse_input

        target = Path(args.out) / "labels.png"  # the segmented map, reusable as --labels
        try:
            refuse_input(target, [args.photo, args.new_labels], "the segmented label map")
            write_label_png(before, label_set, target)
        except InputError as error:
            print(f"sgraffito: warning: {error}", file=sys.stderr)
    return status
