"""The open document as observable state, apart from any widget (krita-ai-diffusion's model/ vs ui/ split).

Widgets never own data: they read the Document and listen to its signals, which carry the changed rectangle in
image pixels so the canvas recomputes and repaints only that part. Every change to a layer goes through
`LayerEdit` (or `write_patch`), which records only the changed rectangle for the QUndoStack.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QRect, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from engine.labels import DEFAULT_SET, DEFAULT_SUBSET, LabelSet, load_label_set

VIEW_MODES = ("both", "photo", "labels", "outline")
RECENT_LABELS = 8


class Document(QObject):
    reset = Signal()  # new content: everything changed (size, photo, label set)
    labels_changed = Signal(QRect)  # `labels` changed inside this rectangle
    original_changed = Signal(QRect)  # `original_labels` (the photo's map) changed inside this rectangle
    image_changed = Signal(QRect)  # the shown result image changed inside this rectangle
    label_set_changed = Signal()
    active_label_changed = Signal(int)
    recent_labels_changed = Signal()
    view_changed = Signal()  # view mode or overlay opacity
    dirty_changed = Signal(bool)
    path_changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        # a method, not a lambda: Qt drops the connection when the document is destroyed, before the stack
        # (its child) emits cleanChanged from its own destructor
        self.undo_stack.cleanChanged.connect(self._clean_changed)
        self.label_set: LabelSet = load_label_set(DEFAULT_SET)
        self.photo = None  # engine.imageio.Photo, or None for a document made from a label map alone
        self.image: np.ndarray | None = None  # (H, W, 3) uint8: the photo with applied candidates; None without photo
        self._image_is_photo = False
        self.original_labels = np.zeros((0, 0), np.uint16)
        self.labels = np.zeros((0, 0), np.uint16)
        self.project = None  # the engine.project.Project this document was loaded from or last saved as
        # Kept in the project file; app.workspace owns their meaning. candidates: engine.project.StoredCandidate;
        # history: applied candidates, oldest first (dicts with model, seed, ...); hints: colorize mode hints.
        self.candidates: list = []
        self.history: list[dict] = []
        self.hints: list[dict] = []
        self.path: Path | None = None  # the .sgraffito file, once saved or opened
        self.source: Path | None = None  # the file the document came from (project, photo or label map)
        self.doc_id = ""
        self.revision = 0  # counts every write: autosave skips a document it already saved at this revision
        self.unsaved = False
        self.title = ""
        self.mode = "empty"  # "edit" (photo), "translate" (label map alone), "colorize" (grayscale photo)
        self.active_label = self.default_label(self.label_set)
        self.recent_labels: list[int] = []
        self.view_mode = "both"
        self.overlay_opacity = 0.5

    def _clean_changed(self, clean: bool) -> None:
        self.dirty_changed.emit(self.unsaved or not clean)

    # ---- content -------------------------------------------------------------------------------------------
    def load(self, *, label_set: LabelSet, labels: np.ndarray, original_labels: np.ndarray | None = None,
             photo=None, image: np.ndarray | None = None, path: Path | None = None, project=None,
             title: str = "", mode: str | None = None, source: Path | None = None, unsaved: bool = False) -> None:
        """Replace the whole content, taking over the arrays. Callers validate first: nothing here can fail
        half-way.
        `unsaved`: the content itself is not saved anywhere yet (recovered from an autosave)."""
        self.label_set = label_set
        self.photo = photo
        self._image_is_photo = image is None and photo is not None
        if self._image_is_photo:
            image = photo.rgb
        self.image = None if image is None else np.ascontiguousarray(image)
        # the arrays are taken over, not copied (24 MP: 48 MB each); the original is a copy when not given
        self.labels = np.ascontiguousarray(labels, dtype=np.uint16)
        if original_labels is None or original_labels is labels:
            self.original_labels = self.labels.copy()
        else:
            self.original_labels = np.ascontiguousarray(original_labels, dtype=np.uint16)
        self.path = Path(path) if path else None
        self.project = project
        self.candidates = list(project.candidates) if project is not None else []
        self.history = list(project.history) if project is not None else []
        self.hints = list(project.hints) if project is not None else []
        self.title = title or (photo.name if photo is not None else "untitled")
        self.source = Path(source) if source else self.path
        self.doc_id = uuid.uuid4().hex  # names this document's autosave file
        if mode is not None:
            self.mode = mode
        elif photo is None:
            self.mode = "translate"
        else:
            self.mode = "colorize" if photo.is_grayscale else "edit"
        if self.active_label not in label_set.by_id:
            self.active_label = self.default_label(label_set)
        self.recent_labels = [i for i in self.recent_labels if i in label_set.by_id]
        self.view_mode = "labels" if self.mode == "translate" else "both"
        self.undo_stack.clear()
        self.undo_stack.setClean()
        self.unsaved = unsaved
        self.reset.emit()
        self.label_set_changed.emit()
        self.active_label_changed.emit(self.active_label)
        self.view_changed.emit()
        self.path_changed.emit()
        self.dirty_changed.emit(self.dirty)

    def mark_modified(self) -> None:
        """A change outside the undo history (a candidate kept, a hint list edited) still needs saving."""
        self.unsaved = True
        self.revision += 1
        self.dirty_changed.emit(True)

    def replace_label_maps(self, labels: np.ndarray) -> None:
        """A new original map for the same photo (File > Open Label Map): not undoable, so the history clears."""
        self.labels = np.ascontiguousarray(labels, dtype=np.uint16)
        self.original_labels = self.labels.copy()
        self.undo_stack.clear()
        self.unsaved = True
        self.revision += 1
        self.reset.emit()
        self.dirty_changed.emit(True)

    @property
    def is_open(self) -> bool:
        return self.labels.size > 0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in image pixels."""
        return self.labels.shape[1], self.labels.shape[0]

    @property
    def rect(self) -> QRect:
        return QRect(0, 0, *self.size)

    @property
    def dirty(self) -> bool:
        return self.unsaved or not self.undo_stack.isClean()

    def mark_saved(self, path: Path, project=None) -> None:
        self.path = self.source = Path(path)
        if project is not None:
            self.project = project
        self.unsaved = False
        self.undo_stack.setClean()
        self.path_changed.emit()
        self.dirty_changed.emit(False)

    def edited_mask(self) -> np.ndarray:
        return self.labels != self.original_labels

    # ---- labels, palette, view -----------------------------------------------------------------------------
    @staticmethod
    def default_label(label_set: LabelSet) -> int:
        subset = label_set.subsets.get(DEFAULT_SUBSET)
        return subset[0] if subset else label_set.labels[0].id

    def set_active_label(self, label_id: int) -> None:
        label_id = int(label_id)
        if label_id not in self.label_set.by_id and label_id != self.label_set.unlabeled:
            return
        self.active_label = label_id
        self.active_label_changed.emit(label_id)

    def note_used(self, label_id: int) -> None:
        """Called when a label is painted: the palette keeps the most recent ones on top."""
        if label_id == self.label_set.unlabeled or label_id not in self.label_set.by_id:
            return
        recent = [label_id] + [i for i in self.recent_labels if i != label_id]
        if recent != self.recent_labels:
            self.recent_labels = recent[:RECENT_LABELS]
            self.recent_labels_changed.emit()

    def set_label_set(self, label_set: LabelSet) -> None:
        """Switch the palette; raises InputError when the map holds ids the new set does not have."""
        if self.is_open:
            label_set.check_ids(self.labels, "the current label map")
            label_set.check_ids(self.original_labels, "the original label map")
        self.label_set = label_set
        self.recent_labels = [i for i in self.recent_labels if i in label_set.by_id]
        if self.active_label not in label_set.by_id:
            self.active_label = self.default_label(label_set)
        self.label_set_changed.emit()
        self.active_label_changed.emit(self.active_label)
        self.recent_labels_changed.emit()

    def set_view_mode(self, mode: str) -> None:
        if mode not in VIEW_MODES:
            raise ValueError(mode)
        self.view_mode = mode
        self.view_changed.emit()

    def set_overlay_opacity(self, opacity: float) -> None:
        self.overlay_opacity = min(1.0, max(0.0, float(opacity)))
        self.view_changed.emit()

    # ---- editing -------------------------------------------------------------------------------------------
    def ensure_image(self) -> np.ndarray:
        """The image layer; a document made from a label map alone gets a black one when its first rendering
        is applied, so candidates apply (and undo) there like on a photo."""
        if self.image is None:
            width, height = self.size
            self.image = np.zeros((height, width, 3), np.uint8)
            self._image_is_photo = False
        return self.image

    def layer(self, name: str) -> np.ndarray:
        if name == "image" and self.image is not None and (self._image_is_photo or not self.image.flags.writeable):
            # copy on the first applied patch: the photo's own pixels stay as loaded
            self.image = self.image.copy()
            self._image_is_photo = False
        return {"labels": self.labels, "image": self.image}[name]

    def _written(self, name: str, rect: QRect) -> None:
        self.revision += 1
        (self.labels_changed if name == "labels" else self.image_changed).emit(rect)

    def edit(self, text: str, layer: str = "labels") -> LayerEdit:
        return LayerEdit(self, layer, text)

    def put_patch(self, layer: str, x: int, y: int, patch: np.ndarray) -> None:
        """Replace a rectangle without recording undo (undo commands call this to put their pixels back)."""
        h, w = patch.shape[:2]
        self.layer(layer)[y:y + h, x:x + w] = patch
        self._written(layer, QRect(x, y, w, h))

    def put_label_maps(self, x: int, y: int, labels: np.ndarray, original: np.ndarray) -> None:
        """Replace a rectangle of both label maps at once, without recording undo (app.segmentation's undo
        command: a segmentation gives the photo its map and the labels painted on it in one step)."""
        h, w = labels.shape
        self.labels[y:y + h, x:x + w] = labels
        self.original_labels[y:y + h, x:x + w] = original
        rect = QRect(x, y, w, h)
        self.revision += 1
        self.original_changed.emit(rect)
        self.labels_changed.emit(rect)

    def write_patch(self, layer: str, x: int, y: int, patch: np.ndarray, text: str) -> None:
        """One undoable replacement of a rectangle (pasting pixels into `image`, a scripted edit)."""
        edit = self.edit(text, layer)
        edit.write(x, y, patch)
        edit.commit()


class LayerEdit:
    """Collects the writes of one user action (a stroke of many dabs, a fill) into one undo command.

    Before a tile is first written its old content is copied, so a stroke over a 24-MP map costs only the
    tiles it touches; `commit` crops to the pixels that really changed and pushes a PatchCommand.
    """

    TILE = 128

    def __init__(self, document: Document, layer: str, text: str):
        self.document = document
        self.layer = layer
        self.text = text
        self.saved: dict[tuple[int, int], np.ndarray] = {}
        self.bounds: list[int] | None = None  # x0, y0, x1, y1 of everything written

    def clip(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int] | None:
        width, height = self.document.size
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None

    def _save_tiles(self, x0: int, y0: int, x1: int, y1: int) -> None:
        array = self.document.layer(self.layer)
        t = self.TILE
        for ty in range(y0 // t, (y1 - 1) // t + 1):
            for tx in range(x0 // t, (x1 - 1) // t + 1):
                if (tx, ty) not in self.saved:
                    self.saved[tx, ty] = array[ty * t:(ty + 1) * t, tx * t:(tx + 1) * t].copy()
        if self.bounds is None:
            self.bounds = [x0, y0, x1, y1]
        else:
            b = self.bounds
            self.bounds = [min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)]

    def paint(self, x0: int, y0: int, mask: np.ndarray, value: int | np.ndarray, only: int | None = None) -> None:
        """Set the pixels where `mask` (placed at x0, y0) is true to `value`: a scalar, or a whole-image array
        to copy from (the eraser passes the original labels). With `only`, pixels of other values are kept
        (painting only over unlabeled ones)."""
        h, w = mask.shape
        clipped = self.clip(x0, y0, x0 + w, y0 + h)
        if clipped is None:
            return
        cx0, cy0, cx1, cy1 = clipped
        local = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        mask = mask[local]
        target = self.document.layer(self.layer)[cy0:cy1, cx0:cx1]
        if only is not None:
            mask = mask & (target == only)
        if not mask.any():
            return
        self._save_tiles(cx0, cy0, cx1, cy1)
        target[mask] = value if np.isscalar(value) else value[cy0:cy1, cx0:cx1][mask]
        self.document._written(self.layer, QRect(cx0, cy0, cx1 - cx0, cy1 - cy0))

    def write(self, x0: int, y0: int, patch: np.ndarray) -> None:
        h, w = patch.shape[:2]
        clipped = self.clip(x0, y0, x0 + w, y0 + h)
        if clipped is None:
            return
        cx0, cy0, cx1, cy1 = clipped
        self._save_tiles(cx0, cy0, cx1, cy1)
        self.document.layer(self.layer)[cy0:cy1, cx0:cx1] = patch[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        self.document._written(self.layer, QRect(cx0, cy0, cx1 - cx0, cy1 - cy0))

    def commit(self) -> PatchCommand | None:
        """Push one command for everything written; None (and nothing pushed) when no pixel changed."""
        if self.bounds is None:
            return None
        x0, y0, x1, y1 = self.bounds
        array = self.document.layer(self.layer)
        after = array[y0:y1, x0:x1].copy()
        before = after.copy()
        t = self.TILE
        for (tx, ty), tile in self.saved.items():
            # place the saved tile, clipped to the bounds, into `before`
            tx0, ty0 = tx * t, ty * t
            sx0, sy0 = max(tx0, x0), max(ty0, y0)
            sx1, sy1 = min(tx0 + tile.shape[1], x1), min(ty0 + tile.shape[0], y1)
            if sx0 < sx1 and sy0 < sy1:
                before[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = tile[sy0 - ty0:sy1 - ty0, sx0 - tx0:sx1 - tx0]
        self.saved.clear()
        changed = before != after
        if changed.ndim == 3:
            changed = changed.any(axis=2)
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        if rows.size == 0:
            return None
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if (r1 - r0, c1 - c0) != changed.shape:  # copy the crop so the larger arrays can be freed
            before, after = before[r0:r1, c0:c1].copy(), after[r0:r1, c0:c1].copy()
        command = PatchCommand(self.document, self.layer, x0 + c0, y0 + r0, before, after, self.text)
        self.document.undo_stack.push(command)
        return command


class PatchCommand(QUndoCommand):
    """Undo/redo of one action: the before and after content of the changed rectangle only."""

    def __init__(self, document: Document, layer: str, x: int, y: int, before: np.ndarray, after: np.ndarray,
                 text: str):
        super().__init__(text)
        self.document, self.layer, self.x, self.y = document, layer, x, y
        self.before, self.after = before, after
        self.applied = True  # the edit already wrote `after`; the push's redo() must not write again

    def redo(self) -> None:
        if self.applied:
            self.applied = False
            return
        self.document.put_patch(self.layer, self.x, self.y, self.after)

    def undo(self) -> None:
        self.document.put_patch(self.layer, self.x, self.y, self.before)

    def nbytes(self) -> int:
        return self.before.nbytes + self.after.nbytes


def describe(document: Document, x: int, y: int) -> dict[str, Any] | None:
    """What is under image pixel (x, y): for the status bar and the eyedropper's tooltip."""
    width, height = document.size
    if not (0 <= x < width and 0 <= y < height):
        return None
    label_id = int(document.labels[y, x])
    original = int(document.original_labels[y, x])
    return {"x": x, "y": y, "id": label_id, "name": document.label_set.name_of(label_id),
            "original": original, "original_name": document.label_set.name_of(original)}
