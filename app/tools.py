"""Painting tools. Each receives presses, moves and releases in image coordinates from the canvas and writes
the document through one LayerEdit per user action, so every stroke, fill or region is one undo step."""

from __future__ import annotations

from contextlib import contextmanager

import cv2
import numpy as np
from PySide6.QtCore import QT_TRANSLATE_NOOP, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QApplication, QGraphicsPathItem, QGraphicsRectItem, QToolTip

from engine import smart
from app.document import Document, LayerEdit, describe

MIN_RADIUS, MAX_RADIUS = 1, 1000


@contextmanager
def wait_cursor():
    QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
    try:
        yield
    finally:
        QApplication.restoreOverrideCursor()


class ToolSettings(QObject):
    changed = Signal()

    def __init__(self):
        super().__init__()
        self.radius = 24
        self.square = False
        self.global_fill = False
        self.only_unlabeled = False  # painting tools keep pixels that already have a label

    def set_radius(self, radius: int) -> None:
        self.radius = int(min(MAX_RADIUS, max(MIN_RADIUS, radius)))
        self.changed.emit()

    def grow(self, factor: float) -> None:
        """[ and ]: proportional steps, at least one pixel."""
        scaled = round(self.radius * factor)
        self.set_radius(max(scaled, self.radius + 1) if factor > 1 else min(scaled, self.radius - 1))

    def set_square(self, square: bool) -> None:
        self.square = bool(square)
        self.changed.emit()

    def set_global_fill(self, on: bool) -> None:
        self.global_fill = bool(on)
        self.changed.emit()

    def set_only_unlabeled(self, on: bool) -> None:
        self.only_unlabeled = bool(on)
        self.changed.emit()


def cosmetic_pen(color: QColor, width: float = 1.0, style=Qt.PenStyle.SolidLine) -> QPen:
    pen = QPen(color, width, style)
    pen.setCosmetic(True)
    return pen


def pixel(pos: QPointF) -> tuple[int, int]:
    return int(np.floor(pos.x())), int(np.floor(pos.y()))


class Tool:
    name = ""
    title = ""
    shortcut = ""
    status_hint = ""

    def __init__(self, document: Document, canvas, settings: ToolSettings):
        self.document, self.canvas, self.settings = document, canvas, settings

    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass

    def press(self, pos: QPointF, event) -> None:
        pass

    def move(self, pos: QPointF, event) -> None:
        pass

    def release(self, pos: QPointF, event) -> None:
        pass

    def double_click(self, pos: QPointF, event) -> None:
        pass

    def key(self, event) -> bool:
        return False

    def right_click(self, pos: QPointF, event) -> bool:
        """True when the tool used the right-click; otherwise the canvas picks the label under the cursor."""
        return False

    def wheel(self, pos: QPointF, event) -> bool:
        """True when the tool used the wheel step; otherwise the canvas zooms."""
        return False

    def leave(self) -> None:
        pass

    def add_preview(self, item):
        item.setZValue(10)
        self.canvas.scene().addItem(item)
        return item

    def remove_preview(self, item) -> None:
        if item is not None and item.scene() is not None:
            item.scene().removeItem(item)

    def paint_value(self) -> int:
        return self.document.active_label

    def only(self) -> int | None:
        """The value painting may replace when "only unlabeled" is on."""
        return self.document.label_set.unlabeled if self.settings.only_unlabeled else None


class StrokeTool(Tool):
    """A tool that stamps along the mouse path with the brush footprint; the whole drag is one undo step."""

    def __init__(self, *args):
        super().__init__(*args)
        self.edit: LayerEdit | None = None
        self.last: tuple[int, int] | None = None
        self.outline = None
        self.settings.changed.connect(self._update_outline)
        self._hover: QPointF | None = None

    def activate(self) -> None:
        # the brush outline: a light line over a dark one, visible on sky and on shadow alike
        self.outline = self.add_preview(QGraphicsPathItem())
        self.outline.setPen(cosmetic_pen(QColor(0, 0, 0, 150), 3))
        QGraphicsPathItem(self.outline).setPen(cosmetic_pen(QColor(255, 255, 255), 1.2))
        self.outline.setVisible(False)
        self._update_outline()

    def deactivate(self) -> None:
        if self.edit is not None:  # switched tools mid-stroke: keep what was painted undoable
            self.edit.commit()
            self.edit = None
        self.remove_preview(self.outline)
        self.outline = None

    def _update_outline(self) -> None:
        if self.outline is None:
            return
        r = self.settings.radius
        path = QPainterPath()
        shape = QRectF(-r, -r, 2 * r + 1, 2 * r + 1)
        path.addRect(shape) if self.settings.square else path.addEllipse(shape)
        self.outline.setPath(path)
        self.outline.childItems()[0].setPath(path)
        if self._hover is not None:
            self._show_outline(self._hover)

    def _show_outline(self, pos: QPointF) -> None:
        self._hover = pos
        if self.outline is not None:
            x, y = pixel(pos)
            self.outline.setPos(x, y)
            self.outline.setVisible(True)

    def leave(self) -> None:
        if self.outline is not None:
            self.outline.setVisible(False)

    def footprint(self, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int, np.ndarray]:
        """The pixels the brush covers moving from a to b, as (x0, y0, bool mask)."""
        r = self.settings.radius
        x0, y0 = min(a[0], b[0]) - r, min(a[1], b[1]) - r
        x1, y1 = max(a[0], b[0]) + r + 1, max(a[1], b[1]) + r + 1
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        la, lb = (a[0] - x0, a[1] - y0), (b[0] - x0, b[1] - y0)
        if self.settings.square:
            corners = [(p[0] + dx, p[1] + dy) for p in (la, lb) for dx in (-r, r) for dy in (-r, r)]
            cv2.fillConvexPoly(mask, cv2.convexHull(np.array(corners, np.int32)), 1)
        else:
            cv2.circle(mask, la, r, 1, -1)
            if la != lb:
                cv2.circle(mask, lb, r, 1, -1)
                cv2.line(mask, la, lb, 1, 2 * r + 1)
        return x0, y0, mask.view(bool)

    def stamp(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        x0, y0, mask = self.footprint(a, b)
        self.edit.paint(x0, y0, mask, self.paint_value(), self.only())

    def press(self, pos, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        self.edit = self.document.edit(self.title)
        self.last = pixel(pos)
        self.stamp(self.last, self.last)
        self._show_outline(pos)

    def move(self, pos, event) -> None:
        self._show_outline(pos)
        if self.edit is None:
            return
        point = pixel(pos)
        if point != self.last:
            self.stamp(self.last, point)
            self.last = point

    def release(self, pos, event) -> None:
        if self.edit is None or event.button() != Qt.MouseButton.LeftButton:
            return
        if self.edit.commit() is not None:
            self.document.note_used(self.paint_value())
        self.edit = None


class BrushTool(StrokeTool):
    name, title, shortcut = "brush", QT_TRANSLATE_NOOP("tools", "Brush"), "B"
    status_hint = QT_TRANSLATE_NOOP("tools", "Paint the active label. [ ] change the size.")


class EraserTool(StrokeTool):
    name, title, shortcut = "eraser", QT_TRANSLATE_NOOP("tools", "Eraser"), "E"
    status_hint = QT_TRANSLATE_NOOP("tools", "Restore the original labels under the stroke.")

    def stamp(self, a, b) -> None:
        x0, y0, mask = self.footprint(a, b)
        self.edit.paint(x0, y0, mask, self.document.original_labels)

    def paint_value(self) -> int:
        return self.document.label_set.unlabeled


class SuperpixelTool(StrokeTool):
    """Paints whole superpixels: every segment the brush touches takes the active label."""

    name, title, shortcut = "superpixel", QT_TRANSLATE_NOOP("tools", "Superpixel brush"), "P"
    status_hint = QT_TRANSLATE_NOOP("tools", "Paint whole superpixels (regions of similar colour).")

    def __init__(self, *args):
        super().__init__(*args)
        self.painted: set[int] = set()
        self.document.reset.connect(self._forget)
        self._superpixels: smart.Superpixels | None = None
        self._future = None

    def _forget(self) -> None:
        self._superpixels, self._future = None, None

    def activate(self) -> None:
        super().activate()
        self.prepare()

    def prepare(self) -> None:
        """Start computing the superpixels in a worker thread the first time the tool is chosen."""
        source = self.document.image
        if source is None or self._superpixels is not None or self._future is not None:
            return
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(max_workers=1)
        self._future = executor.submit(smart.Superpixels, source)
        executor.shutdown(wait=False)

    def superpixels(self) -> smart.Superpixels | None:
        if self._superpixels is None:
            self.prepare()
            if self._future is None:
                return None
            with wait_cursor():
                self._superpixels = self._future.result()
        return self._superpixels

    def press(self, pos, event) -> None:
        self.painted = set()
        if self.superpixels() is None:
            self.canvas.message.emit("Superpixels need a photo; this document is a label map only")
            return
        super().press(pos, event)

    def stamp(self, a, b) -> None:
        superpixels = self._superpixels
        x0, y0, mask = self.footprint(a, b)
        width, height = self.document.size
        cx0, cy0 = max(0, x0), max(0, y0)
        mask = mask[cy0 - y0:height - y0, cx0 - x0:width - x0]
        for segment in superpixels.ids_in(cx0, cy0, mask):
            if int(segment) in self.painted:
                continue
            self.painted.add(int(segment))
            region = superpixels.region(int(segment))
            if region is not None:
                self.edit.paint(region[0], region[1], region[2], self.paint_value(), self.only())


class FillTool(Tool):
    name, title, shortcut = "fill", QT_TRANSLATE_NOOP("tools", "Fill"), "G"
    status_hint = QT_TRANSLATE_NOOP("tools", "Click fills the connected region of one label; Shift+click (or Global) "
                                             "replaces it everywhere.")

    def press(self, pos, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        x, y = pixel(pos)
        everywhere = self.settings.global_fill or bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        self.fill(x, y, everywhere)

    def fill(self, x: int, y: int, everywhere: bool) -> None:
        doc = self.document
        width, height = doc.size
        if not (0 <= x < width and 0 <= y < height):
            return
        target, value = int(doc.labels[y, x]), doc.active_label
        if target == value:
            return
        same = (doc.labels == target).view(np.uint8)
        if everywhere:
            mask, x0, y0 = same.view(bool), 0, 0
        else:
            # flood the 0/1 mask (a temporary of ours): cv2.floodFill does not take uint16 images
            _, _, _, (rx, ry, rw, rh) = cv2.floodFill(same, None, (x, y), 2, flags=4)
            mask, x0, y0 = same[ry:ry + rh, rx:rx + rw] == 2, rx, ry
        edit = doc.edit("Fill everywhere" if everywhere else "Fill")
        edit.paint(x0, y0, mask, value)
        if edit.commit() is not None:
            doc.note_used(value)


class PickerTool(Tool):
    name, title, shortcut = "picker", QT_TRANSLATE_NOOP("tools", "Eyedropper"), "I"
    status_hint = QT_TRANSLATE_NOOP("tools", "Click picks the label under the cursor.")

    def press(self, pos, event) -> None:
        info = describe(self.document, *pixel(pos))
        if info is not None:
            self.document.set_active_label(info["id"])

    def move(self, pos, event) -> None:
        info = describe(self.document, *pixel(pos))
        if info is not None:
            QToolTip.showText(event.globalPosition().toPoint(), info["name"], self.canvas)

    def leave(self) -> None:
        QToolTip.hideText()


class RegionTool(Tool):
    """Shared by tools that collect a region first (lasso, rectangle) and fill it in one step on release."""

    def __init__(self, *args):
        super().__init__(*args)
        self.preview = None

    def deactivate(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        self.remove_preview(self.preview)
        self.preview = None

    def fill_mask(self, x0: int, y0: int, mask: np.ndarray, text: str) -> None:
        edit = self.document.edit(text)
        edit.paint(x0, y0, mask, self.paint_value(), self.only())
        if edit.commit() is not None:
            self.document.note_used(self.paint_value())


class LassoTool(RegionTool):
    name, title, shortcut = "lasso", QT_TRANSLATE_NOOP("tools", "Lasso"), "L"
    status_hint = QT_TRANSLATE_NOOP("tools", "Drag a freehand outline, or click corners and double-click (Enter) "
                                             "to close; Esc cancels.")

    def __init__(self, *args):
        super().__init__(*args)
        self.points: list[QPointF] = []
        self.dragging = False
        self.polygon = False  # click-by-click mode

    def cancel(self) -> None:
        super().cancel()
        self.points, self.dragging, self.polygon = [], False, False

    def _redraw(self, extra: QPointF | None = None) -> None:
        if self.preview is None:
            self.preview = self.add_preview(QGraphicsPathItem())
            self.preview.setPen(cosmetic_pen(QColor(255, 255, 255), 1.5, Qt.PenStyle.DashLine))
        points = self.points + ([extra] if extra is not None else [])
        path = QPainterPath()
        path.addPolygon(QPolygonF(points))
        self.preview.setPath(path)

    def press(self, pos, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        if not self.polygon:
            self.points = [pos]
        self.dragging = True
        self._press_at = pos
        self._redraw()

    def move(self, pos, event) -> None:
        if self.dragging and not self.polygon:
            self.points.append(pos)
            self._redraw()
        elif self.polygon:
            self._redraw(pos)

    def release(self, pos, event) -> None:
        if not self.dragging:
            return
        self.dragging = False
        moved = (pos - self._press_at).manhattanLength() * self.canvas.zoom > 4
        if self.polygon:
            self.points.append(pos)
            self._redraw()
        elif moved:
            self.points.append(pos)
            self.close()
        else:
            self.polygon = True  # a click without a drag starts a polygon

    def double_click(self, pos, event) -> None:
        if self.polygon:
            self.close()

    def key(self, event) -> bool:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.polygon:
            self.close()
            return True
        if event.key() == Qt.Key.Key_Escape and (self.polygon or self.points):
            self.cancel()
            return True
        return False

    def close(self) -> None:
        points = np.array([(p.x(), p.y()) for p in self.points], np.float64)
        self.cancel()
        if len(points) < 3:
            return
        # pixel centres inside the outline: shift by half a pixel before rasterising
        corners = np.round(points - 0.5).astype(np.int32)
        x0, y0 = corners.min(axis=0)
        x1, y1 = corners.max(axis=0) + 1
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [corners - (x0, y0)], 1)
        self.fill_mask(int(x0), int(y0), mask.view(bool), "Lasso fill")


class RectangleTool(RegionTool):
    name, title, shortcut = "rectangle", QT_TRANSLATE_NOOP("tools", "Rectangle"), "R"
    status_hint = QT_TRANSLATE_NOOP("tools", "Drag a rectangle to fill it with the active label.")
    text = "Rectangle fill"

    def __init__(self, *args):
        super().__init__(*args)
        self.start: QPointF | None = None

    def cancel(self) -> None:
        super().cancel()
        self.start = None

    def _rect(self, pos: QPointF) -> tuple[int, int, int, int]:
        width, height = self.document.size
        ax, ay = pixel(self.start)
        bx, by = pixel(pos)
        x0, x1 = sorted((ax, bx))
        y0, y1 = sorted((ay, by))
        return max(0, x0), max(0, y0), min(width, x1 + 1), min(height, y1 + 1)

    def press(self, pos, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        self.start = pos
        self.preview = self.add_preview(QGraphicsRectItem())
        self.preview.setPen(cosmetic_pen(QColor(255, 255, 255), 1.5, Qt.PenStyle.DashLine))
        self.move(pos, event)

    def move(self, pos, event) -> None:
        if self.start is None:
            return
        x0, y0, x1, y1 = self._rect(pos)
        self.preview.setRect(QRectF(x0, y0, max(0, x1 - x0), max(0, y1 - y0)))

    def release(self, pos, event) -> None:
        if self.start is None or event.button() != Qt.MouseButton.LeftButton:
            return
        x0, y0, x1, y1 = self._rect(pos)
        self.cancel()
        if x1 > x0 and y1 > y0:
            self.apply(x0, y0, x1, y1)

    def key(self, event) -> bool:
        if event.key() == Qt.Key.Key_Escape and self.start is not None:
            self.cancel()
            return True
        return False

    def apply(self, x0: int, y0: int, x1: int, y1: int) -> None:
        self.fill_mask(x0, y0, np.ones((y1 - y0, x1 - x0), bool), self.text)


class GrabCutTool(RectangleTool):
    name, title, shortcut = "grabcut", QT_TRANSLATE_NOOP("tools", "GrabCut region"), "C"
    status_hint = QT_TRANSLATE_NOOP("tools", "Drag a rectangle around an object: GrabCut labels what stands out. "
                                             "Then Shift+drag marks more object, Ctrl+drag marks background.")
    text = "GrabCut fill"

    def __init__(self, *args):
        super().__init__(*args)
        self.session: smart.GrabCut | None = None
        self.command = None  # the undo command of the session's last result
        self.scribble: list[QPointF] | None = None
        self.foreground = True
        self.document.reset.connect(self._forget)

    def _forget(self) -> None:
        self.session, self.command = None, None

    def _session_on_top(self) -> bool:
        """Refining replaces the last GrabCut result, so only while nothing was done after it."""
        stack = self.document.undo_stack
        return (self.session is not None and self.command is not None and stack.index() > 0
                and stack.command(stack.index() - 1) is self.command)

    def press(self, pos, event) -> None:
        modifiers = event.modifiers()
        scribbling = modifiers & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier)
        if event.button() == Qt.MouseButton.LeftButton and scribbling:
            if not self._session_on_top():
                self.canvas.message.emit("GrabCut: drag a rectangle around the object first")
                return
            self.scribble = [pos]
            self.foreground = bool(modifiers & Qt.KeyboardModifier.ShiftModifier)
            self.preview = self.add_preview(QGraphicsPathItem())
            colour = QColor(80, 255, 80) if self.foreground else QColor(255, 70, 70)
            self.preview.setPen(cosmetic_pen(colour, 2))
            return
        super().press(pos, event)

    def move(self, pos, event) -> None:
        if self.scribble is None:
            super().move(pos, event)
            return
        self.scribble.append(pos)
        path = QPainterPath(self.scribble[0])
        for point in self.scribble[1:]:
            path.lineTo(point)
        self.preview.setPath(path)

    def release(self, pos, event) -> None:
        if self.scribble is None:
            super().release(pos, event)
            return
        points = [(p.x(), p.y()) for p in self.scribble + [pos]]
        self.cancel()
        self.scribble = None
        with wait_cursor():
            self.session.mark(points, max(2, self.settings.radius // 4), self.foreground)
            self.session.refine()
        self._apply_session()

    def apply(self, x0, y0, x1, y1) -> None:
        image = self.document.image
        if image is None:
            self.canvas.message.emit("GrabCut needs a photo; this document is a label map only")
            return
        if x1 - x0 < 4 or y1 - y0 < 4:
            return
        with wait_cursor():
            self.session = smart.GrabCut(image, x0, y0, x1, y1)
        self.command = None
        self._apply_session()

    def _apply_session(self) -> None:
        if self._session_on_top():
            self.document.undo_stack.undo()  # the refined result replaces the previous one
        x0, y0, mask = self.session.result()
        edit = self.document.edit(self.text)
        edit.paint(x0, y0, mask, self.paint_value(), self.only())
        self.command = edit.commit()
        if self.command is not None:
            self.document.note_used(self.paint_value())


TOOLS = (BrushTool, EraserTool, FillTool, PickerTool, LassoTool, RectangleTool, SuperpixelTool, GrabCutTool)
