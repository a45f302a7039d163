"""Label sets: id, name and a canonical colour per label, loaded from assets/labels/*.json (engine.paths.assets_dir)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np

from engine.errors import InputError
from engine.paths import assets_dir

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


def available_sets() -> list[str]:
    return sorted(p.stem for p in (assets_dir() / "labels").glob("*.json"))


@functools.lru_cache(maxsize=None)
def load_label_set(name: str = DEFAULT_SET) -> LabelSet:
    folder = assets_dir() / "labels"
    path = folder / f"{name}.json"
    if not path.is_file():
        if not (available := available_sets()):
            raise InputError(f"unknown label set {name!r}: no label sets in {folder} (an incomplete install? "
                             "$SGRAFFITO_ASSETS can point at an assets folder)")
        raise InputError(f"unknown label set {name!r}; available: {', '.join(available)}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    labels = tuple(Label(int(entry["id"]), entry["name"], tuple(entry["color"])) for entry in raw["labels"])
    subsets = {key: tuple(int(i) for i in ids) for key, ids in raw.get("subsets", {}).items()}
    return LabelSet(raw["name"], raw.get("title", raw["name"]), int(raw["unlabeled"]), labels, subsets)
