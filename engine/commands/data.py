"""`sgraffito data preview|check`: look at the synthetic training scenes, or check a dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="preview synthetic training scenes, or check a dataset folder")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    preview = sub.add_parser("preview", help="write scenes, their label maps and a contact sheet")
    preview.add_argument("--n", type=int, default=16, help="number of scenes (default 16)")
    preview.add_argument("--size", type=int, default=256, help="scene size in pixels, 64..2048 (default 256)")
    preview.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    preview.add_argument("--eval", action="store_true", help="take seeds from the held-out evaluation split")
    preview.add_argument("--out", required=True, metavar="DIR", help="output folder")
    check = sub.add_parser("check", help="recognise a dataset folder's layout and pair its files")
    check.add_argument("root", help="COCO-Stuff, ADE20K, Cityscapes, images/+labels/ or a photo folder")
    check.add_argument("--split", help="only this split (e.g. train2017, training, train)")
    check.add_argument("--photos", action="store_true", help="read it as a colorization photo folder")
    parser.set_defaults(run=run)


def contact_sheet(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    """Tiles of equal size on a grid, white gutters."""
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    gap = 4
    sheet = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = tile
    return sheet


def _preview(args) -> int:
    from engine.data.landscapes import EVAL_SEEDS, LABEL_SET, generate_scene
    from engine.errors import InputError
    from engine.labels import load_label_set

    if args.n < 1:
        raise InputError("--n must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label_set = load_label_set(LABEL_SET)
    first = EVAL_SEEDS[0] + args.seed if args.eval else args.seed
    tiles, metas = [], []
    for seed in range(first, first + args.n):
        scene = generate_scene(seed, args.size)
        colour = label_set.colorize(scene.labels)
        Image.fromarray(scene.image).save(out / f"{seed}.png")
        Image.fromarray(scene.labels).save(out / f"{seed}_labels.png")  # ids, as load_label_map reads them
        Image.fromarray(colour).save(out / f"{seed}_labels_color.png")
        tiles.append(np.concatenate([scene.image, colour], axis=0))
        metas.append(scene.meta)
    Image.fromarray(contact_sheet(tiles, min(8, args.n))).save(out / "contact_sheet.png")
    (out / "scenes.json").write_text(json.dumps(metas, indent=1) + "\n")
    print(f"{args.n} scenes ({args.size}px) and contact_sheet.png written to {out}")
    return 0


def _check(args) -> int:
    from engine.data.datasets import PhotoFolder, find_pairs

    if args.photos:
        photos = PhotoFolder(args.root)
        print(f"{args.root}: {len(photos)} colour photos, {len(photos.skipped_gray)} grayscale files skipped")
        return 0
    pairs, layout, label_set = find_pairs(args.root, args.split)
    print(f"{args.root}: {layout} layout, {len(pairs)} image/label pairs, label set {label_set}")
    return 0


def run(args) -> int:
    return _preview(args) if args.data_command == "preview" else _check(args)
