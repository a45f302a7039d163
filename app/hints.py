"""Colour hints for colorization (ideepcolor's point hints): the model, its undo commands, the canvas layer and
the hint tool.

A hint is `{"x", "y", "radius", "rgb": [r, g, b]}` in photo pixels (pixel centres at integer + 0.5), the format
engine.hints.parse_hints and the "coltran" / "pixelcnn" backends read. The list itself lives in
`document.hints` so it is saved with the project; `HintsModel` is the observable view of it that the canvas
layer, the tool and the colorize panel share. Every change is one QUndoCommand on the document's undo stack;
the wheel's size steps on one hint merge into one command.

Sizes follow ideepcolor's 1x1..9x9 patches at the model's scale: a hint has a level 1..9 and a radius of
level x `unit` photo pixels, where `unit` is one cell of ColTran's 64x64 coarse grid (half a cell of the demo
PixelCNN's 32-wide chroma map), so a level means the same on a scan and on a thumbnail. Smaller disks would
be diluted: both colorizers sample chroma on such a grid and upsample it.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QT_TRANSLATE_NOOP, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QUndoCommand
from PySide6.QtWidgets import QGraphicsItem

from app.canvas import MIN_ZOOM
from app.tools import Tool, cosmetic_pen
from engine.composite import transfer_chroma

MIN_LEVEL, MAX_LEVEL, DEFAULT_LEVEL = 1, 9, 3
GRID = 64  # coarse cells across the long side (ColTran): one cell = one level of radius
RECENT_COLOURS = 8
MIN_SCREEN_RADIUS = 5.0  # view pixels: a hint stays visible and clickable when zoomed out
RESIZE_COMMAND_ID = 0x5167  # QUndoCommand.id() of size steps, which merge per hint
DEFAULT_COLOUR = QColor(214, 140, 70)


def rgb_of(colour: QColor) -> list[int]:
    return [colour.red(), colour.green(), colour.blue()]


class HintsModel(QObject):
    """The document's hints plus the tool state around them: the current colour, recent colours, the size
    for new hints and the selected hint."""

    changed = Signal()  # the hint list changed
    selection_changed = Signal(int)  # index of the selected hint, -1 for none
    colour_changed = Signal(QColor)  # the colour new hints get
    recent_changed = Signal()

    def __init__(self, document):
        super().__init__(document)
        self.document = document
        self.colour = QColor(DEFAULT_COLOUR)
        self.recent: list[QColor] = []
        self.level = DEFAULT_LEVEL
        self.selected = -1
        document.reset.connect(self._reset)

    @classmethod
    def of(cls, document) -> "HintsModel":
        """The one model of this document (the tool, the layer and the panel share it)."""
        model = getattr(document, "_hints_model", None)
        if model is None:
            model = document._hints_model = cls(document)
        return model

    @property
    def hints(self) -> list[dict]:
        return self.document.hints

    def _reset(self) -> None:
        self.selected = -1
        self.changed.emit()
        self.selection_changed.emit(-1)

    # ---- geometry ------------------------------------------------------------------------------------------
    @property
    def unit(self) -> float:
        return max(1.0, max(self.document.size) / GRID)

    def radius_for(self, level: int) -> float:
        return round(min(MAX_LEVEL, max(MIN_LEVEL, level)) * self.unit, 2)

    def level_of(self, index: int) -> int:
        return min(MAX_LEVEL, max(MIN_LEVEL, round(self.hints[index]["radius"] / self.unit)))

    def clamp(self, x: float, y: float) -> tuple[float, float]:
        """The centre of the photo pixel under (x, y), kept inside the photo."""
        width, height = self.document.size
        return (min(width - 1, max(0, math.floor(x))) + 0.5, min(height - 1, max(0, math.floor(y))) + 0.5)

    def shown_colour(self, index: int) -> QColor:
        """The hint's colour as the result will show it: the colorizers keep the photo's luminance and take only
        the hint's chroma (ideepcolor's picker offers only the colours of the point's lightness, for the
        same reason)."""
        hint, image = self.hints[index], self.document.image
        if image is None:
            return QColor(*hint["rgb"])
        x, y = self.clamp(hint["x"], hint["y"])
        pixel = image[int(y):int(y) + 1, int(x):int(x) + 1]
        r, g, b = (int(c) for c in transfer_chroma(pixel, np.array([[hint["rgb"]]], np.uint8))[0, 0])
        return QColor(r, g, b)

    def hint_at(self, x: float, y: float, slack: float = 0.0) -> int:
        """The topmost (last added) hint whose disk, grown by `slack` photo pixels, contains (x, y); -1 if none."""
        for index in range(len(self.hints) - 1, -1, -1):
            hint = self.hints[index]
            if math.hypot(hint["x"] - x, hint["y"] - y) <= hint["radius"] + slack:
                return index
        return -1

    # ---- selection and colours (not document content: no undo) ----------------------------------------------
    def select(self, index: int) -> None:
        index = index if 0 <= index < len(self.hints) else -1
        if index != self.selected:
            self.selected = index
            self.selection_changed.emit(index)
            self.changed.emit()  # the layer draws the selected hint differently
        if index >= 0:
            self.level = self.level_of(index)

    def set_colour(self, colour: QColor) -> None:
        """The colour for new hints; the selected hint takes it too (one undo step)."""
        colour = QColor(colour)
        if not colour.isValid():
            return
        self.colour = colour
        self.colour_changed.emit(colour)
        self._remember(colour)
        if self.selected >= 0 and self.hints[self.selected]["rgb"] != rgb_of(colour):
            self.recolour(self.selected, colour)

    def _remember(self, colour: QColor) -> None:
        self.recent = [colour] + [c for c in self.recent if c.rgb() != colour.rgb()][:RECENT_COLOURS - 1]
        self.recent_changed.emit()

    # ---- undoable edits ------------------------------------------------------------------------------------
    def _push(self, text: str, after: list[dict], select: int, *, applied_before: list[dict] | None = None,
              merge: int | None = None) -> None:
        before = applied_before if applied_before is not None else [dict(h) for h in self.hints]
        command = HintCommand(self, text, before, after, select, merge=merge, applied=applied_before is not None)
        self.document.undo_stack.push(command)

    def _set(self, hints: list[dict], select: int) -> None:
        self.document.hints = [dict(h) for h in hints]
        self.document.revision += 1
        self.selected = select if 0 <= select < len(hints) else -1
        self.changed.emit()
        self.selection_changed.emit(self.selected)

    def add(self, x: float, y: float, colour: QColor | None = None, level: int | None = None) -> int:
        x, y = self.clamp(x, y)
        hint = {"x": x, "y": y, "radius": self.radius_for(self.level if level is None else level),
                "rgb": rgb_of(colour or self.colour)}
        self._push("Add colour hint", [dict(h) for h in self.hints] + [hint], len(self.hints))
        self._remember(QColor(*hint["rgb"]))
        return len(self.hints) - 1

    def delete(self, index: int) -> None:
        after = [dict(h) for i, h in enumerate(self.hints) if i != index]
        self._push("Delete colour hint", after, -1)

    def clear(self) -> None:
        if self.hints:
            self._push("Clear colour hints", [], -1)

    def recolour(self, index: int, colour: QColor) -> None:
        after = [dict(h) for h in self.hints]
        after[index]["rgb"] = rgb_of(colour)
        self._push("Recolour colour hint", after, index)

    def resize(self, index: int, level: int) -> None:
        radius = self.radius_for(level)
        if radius == self.hints[index]["radius"]:
            return
        self.level = min(MAX_LEVEL, max(MIN_LEVEL, level))
        after = [dict(h) for h in self.hints]
        after[index]["radius"] = radius
        self._push("Resize colour hint", after, index, merge=index)

    def drag_to(self, index: int, x: float, y: float) -> None:
        """Live position while dragging; `finish_move` records the whole drag as one step."""
        x, y = self.clamp(x, y)
        # a new dict, not an update in place: an autosave may be writing the old one from its thread
        self.hints[index] = {**self.hints[index], "x": x, "y": y}
        self.changed.emit()

    def finish_move(self, index: int, before: list[dict]) -> None:
        after = [dict(h) for h in self.hints]
        if after != before:
            self._push("Move colour hint", after, index, applied_before=before)


class HintCommand(QUndoCommand):
    """One change of the hint list: the whole list before and after (hints are a few dozen small dicts)."""

    def __init__(self, model: HintsModel, text: str, before: list[dict], after: list[dict], select: int, *,
                 merge: int | None = None, applied: bool = False):
        super().__init__(text)
        self.model, self.before, self.after, self.select, self.merge = model, before, after, select, merge
        self.applied = applied  # a drag already shows `after`: the push's redo() must not set it again

    def id(self) -> int:
        return RESIZE_COMMAND_ID if self.merge is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:
        if not isinstance(other, HintCommand) or other.merge != self.merge:
            return False
        self.after = other.after
        return True

    def redo(self) -> None:
        if self.applied:
            self.applied = False
            self.model.document.revision += 1
            return
        self.model._set(self.after, self.select)

    def undo(self) -> None:
        self.model._set(self.before, self.select if len(self.before) > self.select else -1)


class HintLayer(QGraphicsItem):
    """Hints on the canvas: each a disk filled with the colour the result will have there (the photo's
    luminance, the hint's chroma), ringed in the picked colour and outlined in black (visible on any photo);
    the selected one has a yellow outer ring. Shown in colorize mode."""

    def __init__(self, model: HintsModel):
        super().__init__()
        self.model = model
        self.setZValue(5)  # over the photo and the label overlay, under the tools' previews
        self._drawn: set[tuple] = set()  # what the last paint showed: only changed disks are repainted
        model.changed.connect(self._changed)
        model.document.reset.connect(self._reset)
        self._reset()

    def _reset(self) -> None:
        self.prepareGeometryChange()
        self.setVisible(self.model.document.mode == "colorize")
        self._drawn = set()
        self._changed()
        self.update()

    def _state(self) -> set[tuple]:
        return {(h["x"], h["y"], h["radius"], tuple(h["rgb"]), i == self.model.selected)
                for i, h in enumerate(self.model.hints)}

    def _changed(self) -> None:
        """Repaint the disks that appeared, moved or changed, not the whole photo (a 24-MP one is slow to redraw
        at every mouse move of a drag)."""
        state = self._state()
        views = self.scene().views() if self.scene() is not None else []
        zoom = views[0].transform().m11() if views else 1.0
        margin = (MIN_SCREEN_RADIUS + 10) / max(zoom, 1e-6)  # the minimum on-screen size, the rings
        for x, y, radius, *_ in state ^ self._drawn:
            extent = max(radius, MIN_SCREEN_RADIUS / max(zoom, 1e-6)) + margin
            self.update(QRectF(x - extent, y - extent, 2 * extent, 2 * extent))
        self._drawn = state

    def boundingRect(self) -> QRectF:
        width, height = self.model.document.size
        # disks at the border, at their minimum on-screen size at the smallest zoom (the canvas's scene rect is
        # set apart, so this does not change scrolling)
        margin = MAX_LEVEL * self.model.unit + (MIN_SCREEN_RADIUS + 10) / MIN_ZOOM
        return QRectF(-margin, -margin, width + 2 * margin, height + 2 * margin)

    def paint(self, painter: QPainter, option, widget=None) -> None:
        zoom = painter.worldTransform().m11() or 1.0
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for index, hint in enumerate(self.model.hints):
            centre = QPointF(hint["x"], hint["y"])
            radius = max(hint["radius"], MIN_SCREEN_RADIUS / zoom)
            painter.setBrush(self.model.shown_colour(index))
            painter.setPen(cosmetic_pen(QColor(0, 0, 0, 220), 5))
            painter.drawEllipse(centre, radius, radius)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(cosmetic_pen(QColor(*hint["rgb"]), 3))
            painter.drawEllipse(centre, radius, radius)
            if index == self.model.selected:
                ring = radius + 4 / zoom
                painter.setPen(cosmetic_pen(QColor(255, 220, 0), 1.5))
                painter.drawEllipse(centre, ring, ring)


class HintTool(Tool):
    """ideepcolor's hint interaction: click adds a hint in the current colour, drag moves one, right-click
    deletes it, the wheel over a hint changes its size (elsewhere it zooms), Delete removes the selected one,
    Esc deselects it."""

    name, title, shortcut = "hint", QT_TRANSLATE_NOOP("tools", "Colour hint"), "H"
    status_hint = QT_TRANSLATE_NOOP("tools", "Click adds a colour hint, drag moves it, right-click deletes it, "
                                             "the wheel over a hint changes its size; pick the colour in the "
                                             "Colorize panel.")

    def __init__(self, *args):
        super().__init__(*args)
        self.model = HintsModel.of(self.document)
        self.layer = HintLayer(self.model)
        self.canvas.scene().addItem(self.layer)
        self.drag: tuple[int, list[dict], QPointF] | None = None  # index, hints before, press position

    def _slack(self) -> float:
        return MIN_SCREEN_RADIUS / max(self.canvas.zoom, 1e-6)

    def _inside(self, pos: QPointF) -> bool:
        width, height = self.document.size
        return 0 <= pos.x() < width and 0 <= pos.y() < height

    def press(self, pos, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        if self.document.mode != "colorize":
            self.canvas.message.emit("Colour hints steer the colorization of grayscale photos; this photo has "
                                     "colour already" if self.document.image is not None else
                                     "Colour hints steer the colorization of grayscale photos; open one first")
            return
        index = self.model.hint_at(pos.x(), pos.y(), self._slack())
        if index < 0:
            if not self._inside(pos):
                return
            index = self.model.add(pos.x(), pos.y())
        self.model.select(index)
        self.drag = (index, [dict(h) for h in self.model.hints], pos)

    def move(self, pos, event) -> None:
        if self.drag is None:
            return
        index, _, start = self.drag
        if (pos - start).manhattanLength() * self.canvas.zoom >= 3:  # a click's jitter is not a move
            self.model.drag_to(index, pos.x(), pos.y())

    def release(self, pos, event) -> None:
        if self.drag is None or event.button() != Qt.MouseButton.LeftButton:
            return
        index, before, _ = self.drag
        self.drag = None
        self.model.finish_move(index, before)

    def right_click(self, pos, event) -> bool:
        index = self.model.hint_at(pos.x(), pos.y(), self._slack())
        if index < 0:
            return False
        self.model.delete(index)
        return True

    def wheel(self, pos, event) -> bool:
        index = self.model.hint_at(pos.x(), pos.y(), self._slack())
        steps = event.angleDelta().y() // 120
        if index < 0 or not steps:
            return False
        self.model.select(index)
        self.model.resize(index, self.model.level_of(index) + steps)
        self.canvas.message.emit(f"Hint size {self.model.level_of(index)} "
                                 f"(radius {self.model.hints[index]['radius']:g} px)")
        return True

    def key(self, event) -> bool:
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.model.selected >= 0:
            self.model.delete(self.model.selected)
            return True
        if event.key() == Qt.Key.Key_Escape and self.model.selected >= 0:  # the colour button then sets new hints
            self.model.select(-1)
            return True
        return False

    def deactivate(self) -> None:
        if self.drag is not None:  # switched tools mid-drag: keep the move undoable
            index, before, _ = self.drag
            self.drag = None
            self.model.finish_move(index, before)
