"""`sgraffito export PROJECT.sgraffito OUT`: write a project's current result (and label map) without the GUI."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a project's result at full resolution (PNG, JPEG, TIFF, WebP)",
        description="Write the current result of a .sgraffito project at the photo's native size, with the "
                    "metadata the editor writes (models, seeds; IPTC DigitalSourceType once a generated "
                    "candidate was applied).")
    parser.add_argument("project", type=Path, metavar="PROJECT.sgraffito")
    parser.add_argument("out", type=Path, metavar="OUT", help="output file; the suffix picks the format")
    parser.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality 1..100 (default 95)")
    parser.add_argument("--labels", type=Path, metavar="MAP.png",
                        help="also write the edited label map as an indexed PNG")
    parser.set_defaults(run=run)


def run(args) -> int:
    from engine.errors import InputError
    from engine.export import export_format, export_image, export_label_map
    from engine.labels import load_label_set
    from engine.project import load_project

    from engine.safe_io import refuse_input

    export_format(args.out)  # an unknown suffix fails before the project is read
    refuse_input(args.out, [args.project], "output")
    if args.labels:
        refuse_input(args.labels, [args.project, args.out], "--labels")
    if args.labels and args.labels.resolve() == args.out.resolve():
        raise InputError(f"--labels {args.labels} is the image output too; give two file names")
    if not 1 <= args.quality <= 100:
        raise InputError(f"--quality must be between 1 and 100, got {args.quality}")
    project = load_project(args.project)
    image = project.result if project.result is not None else (project.photo.rgb if project.photo else None)
    if image is None:
        raise InputError(f"{args.project.name} has no photo and no result to export; use --labels for its map")
    metadata = {"Source": project.photo.name if project.photo else args.project.name,
                "LabelSet": project.label_set}
    if project.history:
        from engine.export import history_models

        metadata["Models"] = history_models(project.history)
        metadata["History"] = project.history
    export_image(args.out, image, quality=args.quality, metadata=metadata, generated=bool(project.history),
                 source=project.photo)
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]})")
    if args.labels:
        export_label_map(args.labels, project.edited_labels, load_label_set(project.label_set))
        print(f"wrote {args.labels}")
    return 0
