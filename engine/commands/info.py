"""`sgraffito info FILE`: check a photo, label map or project the way the editor would, and describe it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="check and describe a photo, a label map or a .sgraffito project",
        description="Open FILE with the editor's checks (damage, size limits, unknown ids) and describe it. "
                    "Exits with status 2 and a message when the editor would refuse the file.")
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--labels", type=Path, metavar="MAP.png", help="also check this label map against FILE")
    parser.add_argument("--label-set", default=None, metavar="SET",
                        help="label set of label maps (default: coco-stuff-182)")
    parser.add_argument("--as-labels", action="store_true", help="read FILE as a label map, not as a photo")
    parser.set_defaults(run=run)


def _describe_labels(labels: np.ndarray, label_set) -> str:
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)[:6]
    parts = [f"{label_set.name_of(int(ids[i]))} {100 * counts[i] / labels.size:.1f}%" for i in order]
    return f"{labels.shape[1]}x{labels.shape[0]} {label_set.name} label map: " + ", ".join(parts)


def run(args) -> int:
    from engine.imageio import load_label_map, load_photo
    from engine.labels import DEFAULT_SET, load_label_set
    from engine.project import SUFFIX, load_project

    label_set = load_label_set(args.label_set or DEFAULT_SET)
    if args.file.suffix.lower() == SUFFIX:
        project = load_project(args.file)
        photo = project.photo
        print(f"{args.file.name}: Sgraffito project, mode {project.mode}, saved by {project.app_version or '?'} "
              f"on {project.modified or '?'}")
        print(f"  photo: {photo.name} ({photo.format}, {photo.size[0]}x{photo.size[1]})" if photo else "  no photo")
        edited = int((project.edited_labels != project.original_labels).sum())
        print(f"  labels: {_describe_labels(project.edited_labels, load_label_set(project.label_set))}; "
              f"{edited} px edited")
        pinned = sum(candidate.pinned for candidate in project.candidates)
        print(f"  {len(project.candidates)} candidates ({pinned} pinned), {len(project.history)} applied, "
              f"{len(project.hints)} colour hints, result {'stored' if project.result is not None else 'unchanged'}")
        return 0
    if args.as_labels:
        print(f"{args.file.name}: {_describe_labels(load_label_map(args.file, label_set), label_set)}")
        return 0
    photo = load_photo(args.file)
    depth = f"{photo.bit_depth}-bit float" if photo.floating else f"{photo.bit_depth}-bit"
    details = [photo.format, f"{photo.size[0]}x{photo.size[1]}", depth,
               "grayscale (colorize mode)" if photo.is_grayscale else "colour"]
    if photo.orientation != 1:
        details.append(f"EXIF orientation {photo.orientation} applied")
    if photo.icc_converted:
        details.append("ICC profile converted to sRGB")
    print(f"{args.file.name}: " + ", ".join(details))
    if args.labels:
        labels = load_label_map(args.labels, label_set, size=photo.size)
        print(f"{args.labels.name}: {_describe_labels(labels, label_set)}")
    return 0
