"""Label sets: id, name and a canonical colour per label, loaded from assets/labels/*.json (engine.paths.assets_dir)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import InputError
from engine.paths import assets_dir
from engine.safe_io import read_json

DEFAULT_SET = "coco-stuff-182"
DEFAULT_SUBSET = "landscape"


@dataclass(frozen=True)
class Label:
    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class LabelSet:
    name: str
    title: str
    unlabeled: int  # the id that marks unlabeled pixels in label maps of this set
    labels: tuple[Label, ...]
    subsets: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @functools.cached_property
    def by_id(self) -> dict[int, Label]:
        return {label.id: label for label in self.labels}

    @functools.cached_property
    def by_name(self) -> dict[str, Label]:
        return {label.name: label for label in self.labels}

    def id_of(self, name: str) -> int:
        try:
            return self.by_name[name].id
        except KeyError:
            raise InputError(f"label set {self.name!r} has no label named {name!r}") from None

    def name_of(self, label_id: int) -> str:
        if label_id == self.unlabeled and label_id not in self.by_id:
            return "unlabeled"
        label = self.by_id.get(int(label_id))
        return label.name if label else f"unknown id {label_id}"

    @functools.cached_property
    def valid_ids(self) -> np.ndarray:
        ids = {label.id for label in self.labels} | {self.unlabeled}
        return np.array(sorted(ids), dtype=np.int64)

    def lookup_table(self) -> np.ndarray:
        """(65536, 3) uint8: id -> colour; unknown ids and unlabeled are black."""
        lut = np.zeros((65536, 3), np.uint8)
        for label in self.labels:
            lut[label.id] = label.color
        return lut

    def colorize(self, label_map: np.ndarray) -> np.ndarray:
        return self.lookup_table()[label_map]

    def check_ids(self, label_map: np.ndarray, source: str = "label map") -> None:
        """Raise InputError naming the unknown ids, their pixel counts and one position of each."""
        present, counts = np.unique(label_map, return_counts=True)
        unknown = [(int(i), int(c)) for i, c in zip(present, counts) if i not in set(self.valid_ids.tolist())]
        if not unknown:
            return
        parts = []
        for label_id, count in unknown[:8]:
            y, x = (int(v[0]) for v in np.nonzero(label_map == label_id))
            parts.append(f"id {label_id} ({count} px, e.g. at x={x}, y={y})")
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise InputError(f"{source} has ids outside label set {self.name!r}: {', '.join(parts)}{more}")


_SET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,63}$")


def available_sets() -> list[str]:
    """The names of the shipped label sets (assets/labels/*.json): the only names a label set may have."""
    return list(_sets_in(str(assets_dir() / "labels")))


@functools.lru_cache(maxsize=8)
def _sets_in(folder: str) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in Path(folder).glob("*.json") if _SET_NAME.match(p.stem) and p.is_file()))


def check_set_name(name) -> str:
    """`name` if it names a shipped label set; else InputError. A name never becomes a path of its own: it is
    looked up in the list of shipped sets (a project's or the command line's `label_set` cannot reach a file)."""
    available = available_sets()
    if isinstance(name, str) and _SET_NAME.match(name) and name in available:
        return name
    shown = f"{name!r:.80}"
    if not available:
        raise InputError(f"unknown label set {shown}: no label sets in {assets_dir() / 'labels'} (an incomplete "
                         "install? $SGRAFFITO_ASSETS can point at an assets folder)")
    raise InputError(f"unknown label set {shown}; available: {', '.join(available)}")


def load_label_set(name: str = DEFAULT_SET) -> LabelSet:
    return _load_label_set(check_set_name(name))


@functools.lru_cache(maxsize=None)
def _load_label_set(name: str) -> LabelSet:
    path = assets_dir() / "labels" / f"{name}.json"
    raw = read_json(path, "label set")
    try:
        labels = tuple(Label(int(entry["id"]), str(entry["name"]), _colour(entry["color"]))
                       for entry in raw["labels"])
        subsets = {str(key): tuple(int(i) for i in ids) for key, ids in dict(raw.get("subsets", {})).items()}
        label_set = LabelSet(str(raw["name"]), str(raw.get("title", raw["name"])), int(raw["unlabeled"]), labels,
                             subsets)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise InputError(f"{path} is not a label set ({type(error).__name__}: {error})") from None
    ids = [label.id for label in labels] + [label_set.unlabeled]
    if not all(0 <= i < 65536 for i in ids):
        raise InputError(f"{path}: label ids must lie in 0..65535")
    return label_set


def _colour(value) -> tuple[int, int, int]:
    colour = tuple(int(c) for c in value)
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ValueError(f"colour {value!r:.40} is not three 0-255 values")
    return colour
