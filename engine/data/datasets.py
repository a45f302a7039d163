"""Torch datasets: synthetic landscapes, users' image + label map folders, and photo folders for colorization.

Every item is a dict: "image" a (3, H, W) tensor (float in [-1, 1], or uint8 with `dtype="uint8"`) and, for
labelled data, "labels" a (H, W) int64 tensor of ids in the dataset's `label_set` (after any remapping).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from engine.data.landscapes import LABEL_SET, TRAIN_SEEDS, generate_scene
from engine.errors import InputError
from engine.labels import LabelSet, load_label_set

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}


class SeededStream(torch.utils.data.IterableDataset):
    """Base of the endless (iterable) training streams: each worker draws from one generator seeded from
    (config seed, rank, worker, start step), so DDP ranks never draw the same batches and a resumed run goes on
    with new draws instead of replaying the ones it has seen.

    The training loop calls `place(seed, rank, world, start)` before it iterates the stream; it restarts the
    stream (with `start` the current step) at every checkpoint it writes, and a resumed run restarts it at the
    checkpoint's step, so an interrupted and resumed run sees exactly the data an uninterrupted one does.
    Subclasses draw all their randomness from `self.rng()` (once per `__iter__`) and pick scenes with
    `self.train_seed(rng)`, which never gives two ranks the same scene.
    """

    seed, rank, world, start = 0, 0, 1, 0

    def place(self, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> SeededStream:
        self.seed, self.rank, self.world, self.start = int(seed), int(rank), max(1, int(world)), int(start)
        return self

    def rng(self) -> np.random.Generator:
        """The generator of this worker's share of the stream."""
        info = torch.utils.data.get_worker_info()
        return np.random.default_rng([self.seed % 2**64, self.rank, info.id if info else 0, self.start])

    def train_seed(self, rng: np.random.Generator, seeds: Sequence[int] = TRAIN_SEEDS) -> int:
        """A random member of `seeds` from this rank's share (every world-th one, offset by rank): ranks draw
        disjoint scenes."""
        share = len(seeds) // self.world
        return int(seeds[int(rng.integers(share)) * self.world + self.rank])


class PhotoCrops(SeededStream):
    """Endless random square crops of real colour photos, rescaled to `size` (the colorizer tasks' crop) and
    flipped at random: by default the train split of the photo cache (engine.data.photos, `sgraffito data
    photos`; never its held-out photos). A crop's side is a random fraction `scale` of the photo's short side, so
    one photo gives crops at several scales. Each rank draws from its own share of the photos (every world-th
    one), as SeededStream.train_seed does for scenes; seeded from (config seed, rank, worker, start step)."""

    def __init__(self, size: int, photos: list[np.ndarray] | None = None, *, cache: str | Path | None = None,
                 scale: tuple[float, float] = (0.6, 1.0), dtype: str = "float"):  # fmt: skip
        if photos is None:
            from engine.data.photos import load_photos

            photos = [rgb for _, rgb in load_photos("train", Path(cache) if cache else None)]
        if not photos:
            raise InputError("no training photos: run `sgraffito data photos` first")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be fractions 0 < low <= high <= 1 of the short side, not {scale}")
        self.size, self.photos, self.scale, self.dtype = int(size), photos, scale, dtype

    def draw(self, rng: np.random.Generator, owner: SeededStream | None = None) -> np.ndarray:
        """One (size, size, 3) uint8 crop from `rng`, from the photos of `owner`'s rank (a stream that mixes
        these crops into its own draws passes itself; default this stream)."""
        owner = owner or self
        if len(self.photos) < owner.world:
            raise InputError(f"{len(self.photos)} training photos cannot give each of {owner.world} ranks its own")
        photo = self.photos[owner.train_seed(rng, range(len(self.photos)))]
        h, w = photo.shape[:2]
        side = max(1, round(min(h, w) * rng.uniform(*self.scale)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[y: y + side, x: x + side]
        crop = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA if side >= self.size
                          else cv2.INTER_CUBIC)  # fmt: skip
        return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)

    def __iter__(self):
        rng = self.rng()
        while True:
            yield to_item(self.draw(rng), None, self.dtype)


def to_item(image: np.ndarray, labels: np.ndarray | None = None, dtype: str = "float") -> dict:
    """(H,W,3) uint8 and (H,W) ids -> the item dict described in the module docstring."""
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    item = {"image": chw if dtype == "uint8" else chw.float() / 127.5 - 1.0}
    if labels is not None:
        item["labels"] = torch.from_numpy(labels.astype(np.int64))
    return item


@dataclass(frozen=True)
class PairTransform:
    """Random crop (resizing first so the short side is at least `crop`, and at most `resize_short`) and flip."""

    crop: int | None = None
    flip: bool = True
    resize_short: int | None = None  # scale the short side to this first (None: only upscale when too small)

    def __call__(self, rng: np.random.Generator, image: np.ndarray, labels: np.ndarray | None = None):
        h, w = image.shape[:2]
        short = self.resize_short or (max(self.crop, min(h, w)) if self.crop else None)
        if short and short != min(h, w):
            scale = short / min(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            if labels is not None:
                labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
            h, w = image.shape[:2]
        if self.crop:
            y, x = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
            image = image[y : y + self.crop, x : x + self.crop]
            labels = None if labels is None else labels[y : y + self.crop, x : x + self.crop]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            labels = None if labels is None else labels[:, ::-1]
        return np.ascontiguousarray(image), None if labels is None else np.ascontiguousarray(labels)


# Names the shipped sets use for the same stuff. A label without a namesake in the target maps to the first
# name of its group that the target has (ADE20K "sky" -> COCO-Stuff "sky-other", Cityscapes "vegetation" -> "tree").
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("sky-other", "sky"),
    ("water-other", "water", "lake"),
    ("dirt", "earth", "land", "ground", "dirt track"),
    ("grass", "field", "terrain"),
    ("tree", "vegetation", "palm"),
    ("plant-other", "plant"),
    ("road", "path"),
    ("pavement", "sidewalk"),
    ("building-other", "building"),
    ("wall-other", "wall"),
    ("floor-other", "floor"),
    ("ceiling-other", "ceiling"),
    ("window-other", "windowpane"),
    ("boat", "ship"),
    ("person", "rider"),
    ("street sign", "traffic sign", "signboard"),
)


class LabelRemap:
    """Maps ids of one label set to another by label name, then by SYNONYMS; labels left without a counterpart
    become `target.unlabeled`. `extra` adds or overrides name pairs {source name: target name}."""

    def __init__(self, source: str | LabelSet, target: str | LabelSet, extra: dict[str, str] | None = None):
        self.source = load_label_set(source) if isinstance(source, str) else source
        self.target = load_label_set(target) if isinstance(target, str) else target
        self.table = np.full(65536, self.target.unlabeled, np.uint16)
        for label in self.source.labels:
            group = next((g for g in SYNONYMS if label.name in g), ())
            name = next((n for n in (label.name, *group) if n in self.target.by_name), None)
            if name is not None:
                self.table[label.id] = self.target.by_name[name].id
        for src, dst in (extra or {}).items():
            self.table[self.source.id_of(src)] = self.target.id_of(dst)
        self.mapped = {
            label.name for label in self.source.labels if self.table[label.id] != self.target.unlabeled
        }

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        return self.table[labels]


class LandscapeDataset(torch.utils.data.Dataset):
    """Procedural scenes; item i is the scene of seeds[i] (TRAIN_SEEDS by default), so every epoch, worker and
    rank sees the same scene for the same index and the training loop's sampler shards them like any other data."""

    label_set = LABEL_SET

    def __init__(self, size: int | tuple[int, int] = 256, length: int = 100_000, seeds: Sequence[int] = TRAIN_SEEDS,
                 dtype: str = "float", flip: bool = False, cache: bool = False, textured: bool = False):  # fmt: skip
        """`cache` keeps every generated scene in memory (about 4 bytes per pixel): worth it when a small model
        trains for many epochs on few scenes and generation (~30 ms per 256px scene) would dominate a step.
        `textured` gives the photo-textured version of each scene (engine.data.textures; same label map)."""
        if length > len(seeds):
            raise InputError(f"a landscape dataset of {length} scenes needs that many seeds, got {len(seeds)}")
        self.size, self.length, self.seeds, self.dtype, self.flip = size, length, seeds, dtype, flip
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self.textured = textured

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        seed = int(self.seeds[index])
        if self.cache is not None and seed in self.cache:
            image, labels = self.cache[seed]
        else:
            scene = generate_scene(seed, self.size)
            if self.textured:
                from engine.data.textures import texture_scene

                scene = texture_scene(scene)
            image, labels = scene.image, scene.labels
            if self.cache is not None:
                self.cache[seed] = (image, labels)
        if self.flip and seed % 2:  # reflections stay consistent under a horizontal flip
            image, labels = image[:, ::-1], labels[:, ::-1]
        item = to_item(image, labels, self.dtype)
        item["seed"] = seed
        return item


def _images_in(folder: Path) -> dict[str, Path]:
    """Image files below `folder` keyed by their path relative to it, without the suffix."""
    return {
        str(p.relative_to(folder).with_suffix("")): p
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    }


def _pairing_error(root: Path, images: dict, labels: dict) -> str:
    lonely_images = sorted(set(images) - set(labels))
    lonely_labels = sorted(set(labels) - set(images))
    parts = []
    if lonely_images:
        parts.append(f"{len(lonely_images)} image(s) without a label map (e.g. {images[lonely_images[0]]})")
    if lonely_labels:
        parts.append(f"{len(lonely_labels)} label map(s) without an image (e.g. {labels[lonely_labels[0]]})")
    return f"{root}: " + "; ".join(parts)


def find_pairs(root: str | Path, split: str | None = None) -> tuple[list[tuple[Path, Path]], str, str]:
    """([(image, label map)], layout name, label set name) for a dataset folder.

    Layouts, recognised by their folder names:
      coco-stuff   images/<split>/*.jpg + stuffthingmaps[_trainval2017]/<split>/*.png   (coco-stuff-182)
      ade20k       images/<split>/*.jpg + annotations/<split>/*.png                    (ade20k-150)
      cityscapes   leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png
      folder       images/ + labels/, paired by relative path without suffix          (coco-stuff-182 unless told)
    `split` (e.g. train2017, training, train) picks a subfolder; None takes every split.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset folder")
    maps = next((root / n for n in ("stuffthingmaps", "stuffthingmaps_trainval2017") if (root / n).is_dir()), None)
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        layout, label_set = "cityscapes", "cityscapes"
        image_dir, label_dir = root / "leftImg8bit", root / "gtFine"
        images = {k.removesuffix("_leftImg8bit"): p for k, p in _images_in(image_dir).items()
                  if k.endswith("_leftImg8bit")}  # fmt: skip
        labels = {k.removesuffix("_gtFine_labelIds"): p for k, p in _images_in(label_dir).items()
                  if k.endswith("_gtFine_labelIds")}  # fmt: skip
    elif (root / "images").is_dir() and (maps is not None or (root / "annotations").is_dir()):
        layout, label_set = ("coco-stuff", "coco-stuff-182") if maps is not None else ("ade20k", "ade20k-150")
        image_dir, label_dir = root / "images", maps if maps is not None else root / "annotations"
        images, labels = _images_in(image_dir), _images_in(label_dir)
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        layout, label_set = "folder", LABEL_SET
        images, labels = _images_in(root / "images"), _images_in(root / "labels")
    else:
        raise InputError(
            f"{root}: not a recognised dataset layout; expected images/ + labels/, images/ + stuffthingmaps/ "
            "(COCO-Stuff), images/ + annotations/ (ADE20K) or leftImg8bit/ + gtFine/ (Cityscapes)"
        )
    if split is not None:
        images = {k: p for k, p in images.items() if Path(k).parts[0] == split}
        labels = {k: p for k, p in labels.items() if Path(k).parts[0] == split}
    if layout == "cityscapes":  # test-split images have no public labels: pair what can be paired
        images = {k: p for k, p in images.items() if Path(k).parts[0] != "test" or k in labels}
    if not images and not labels:
        raise InputError(f"{root}: no images found" + (f" in split {split!r}" if split else ""))
    if set(images) != set(labels):
        raise InputError(_pairing_error(root, images, labels))
    return [(images[k], labels[k]) for k in sorted(images)], layout, label_set


def _augment_rng(seed: int, index: int) -> np.random.Generator:
    """A fresh crop and flip for every draw of an item, from torch's generator: the training process's (which a
    resumed run restores from its checkpoint) or a loader worker's (seeded by the loader). `torch.initial_seed()`
    would give an item the same crop in every epoch."""
    return np.random.default_rng([seed % 2**64, index, int(torch.randint(2**62, ()))])


class LabelledFolder(torch.utils.data.Dataset):
    """Photos with label maps from a dataset folder (see `find_pairs`), optionally remapped to `target_set`."""

    def __init__(self, root: str | Path, *, split: str | None = None, label_set: str | None = None,
                 target_set: str | None = None, transform: PairTransform | None = None, dtype: str = "float",
                 seed: int = 0):  # fmt: skip
        self.pairs, self.layout, detected = find_pairs(root, split)
        self.source_set = load_label_set(label_set or detected)
        self.remap = LabelRemap(self.source_set, target_set) if target_set else None
        self.label_set = target_set or self.source_set.name
        self.transform, self.dtype, self.seed = transform or PairTransform(), dtype, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        from engine.imageio import load_label_map, load_photo

        image_path, label_path = self.pairs[index]
        photo = load_photo(image_path)
        labels = load_label_map(label_path, self.source_set, size=photo.size)
        if self.remap is not None:
            labels = self.remap(labels)
        image, labels = self.transform(_augment_rng(self.seed, index), photo.rgb, labels.astype(np.uint16))
        return to_item(image, labels, self.dtype)


class PhotoFolder(torch.utils.data.Dataset):
    """Any folder of colour photos (searched recursively) as colorization data: items hold "image" only.
    Grayscale files (by their mode) are left out when the folder is read; a photo that only turns out gray
    (or unreadable) when loaded raises InputError naming it."""

    def __init__(self, root: str | Path, *, transform: PairTransform | None = None, dtype: str = "float",
                 seed: int = 0):  # fmt: skip
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"{root}: no such photo folder")
        self.paths, self.skipped_gray = [], []
        for path in _images_in(root).values():
            try:
                with Image.open(path) as image:
                    mode = image.mode
            except (OSError, SyntaxError) as error:
                raise InputError(f"{path}: not a readable image ({error})") from None
            (self.skipped_gray if mode in ("L", "LA", "1", "I", "I;16", "F") else self.paths).append(path)
        if not self.paths:
            raise InputError(f"{root}: no colour photos found" + (f" ({len(self.skipped_gray)} grayscale skipped)"
                                                                   if self.skipped_gray else ""))  # fmt: skip
        self.transform, self.dtype, self.seed = transform or PairTransform(), dtype, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from engine.imageio import load_photo

        photo = load_photo(self.paths[index])
        if photo.is_grayscale:
            raise InputError(f"{self.paths[index]}: a grayscale photo cannot teach colorization; remove it")
        image, _ = self.transform(_augment_rng(self.seed, index), photo.rgb)
        return to_item(image, None, self.dtype)
