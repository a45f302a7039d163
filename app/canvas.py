"""The canvas: a plain QGraphicsView showing the photo, the colourised label overlay and edit outlines.

Scene coordinates are image pixels. The overlay is one persistent RGBA buffer the size of the photo; a change
of labels recolours only the changed rectangle through the label set's lookup table and asks Qt to repaint only
that rectangle, and the image layers draw only the exposed part of their QImage. That keeps a brush dab on a
24-MP document at a few milliseconds (tests/bench/bench_editor.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import time

from PySide6.QtCore import QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QPen, QTransform
from PySide6.QtWidgets import (QApplication, QGraphicsItem, QGraphicsObject, QGraphicsPathItem, QGraphicsScene,
                               QGraphicsView, QLineEdit, QStyleOptionGraphicsItem)

from app.document import Document

ZOOM_STEP = 1.25
MIN_ZOOM, MAX_ZOOM = 0.01, 64.0
UNIFORM_CHECK = 1 << 20  # pixels: above this, test for a single label before recolouring
HOLD_S = 0.3  # `\\` held longer than this shows the original only while held; a shorter tap toggles
SPLIT_GRAB_PX = 6  # view pixels either side of the compare divider that grab it


def wrap_rgb(rgb: np.ndarray) -> QImage:
    """A QImage over the array's own memory: no copy of a 24-MP photo; painting reads only the exposed part.
    The caller keeps `rgb` alive as long as the QImage."""
    height, width = rgb.shape[:2]
    return QImage(rgb.data, width, height, rgb.strides[0], QImage.Format.Format_RGB888)


class ImageItem(QGraphicsItem):
    """Draws only the exposed rectangle of a (possibly huge) QImage; scene unit = one image pixel."""

    def __init__(self, smooth: bool):
        super().__init__()
        self.image = QImage()
        self.buffer: np.ndarray | None = None
        self.smooth = smooth
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)

    def set_image(self, image: QImage, buffer: np.ndarray | None = None) -> None:
        self.prepareGeometryChange()
        self.image = image
        self.buffer = buffer  # the memory `image` wraps
        self.update()

    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, self.image.width(), self.image.height())

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        if self.image.isNull():
            return
        exposed = option.exposedRect.toAlignedRect().adjusted(-1, -1, 1, 1) & self.image.rect()
        if exposed.isEmpty():
            return
        zoomed_out = painter.worldTransform().m11() < 1.0
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.smooth and zoomed_out)
        painter.drawImage(exposed, self.image, exposed)


class CandidatePreview(QGraphicsObject):
    """The workspace's previewed candidate (app.workspace) drawn over the canvas at its region; left of `split`
    the candidate, right of it the image as it is. The canvas drags the divider (`split_dragged`) and hides the
    preview while it shows the original photo (`set_before`). Being in the canvas's scene, it zooms and pans
    with the photo."""

    split_dragged = Signal(float)

    def __init__(self, workspace):
        super().__init__()
        self.setZValue(100)
        self.image = QImage()
        self.split = 1.0
        self.active = False  # a candidate is previewed
        self.before = False  # the canvas shows the original photo: hidden meanwhile
        self.setVisible(False)
        workspace.events.preview_changed.connect(self.show_stored)

    def show_stored(self, stored) -> None:
        """engine.project.StoredCandidate, or None to hide."""
        if stored is None:
            self.active = False
            self.setVisible(False)
        else:
            self.show_candidate(stored.image, tuple(stored.meta["box"]))

    def set_before(self, on: bool) -> None:
        self.before = bool(on)
        self.setVisible(self.active and not self.before)

    def divider_x(self) -> float | None:
        """The divider's scene x, when the view is split."""
        if not self.isVisible() or self.image.isNull() or not 0 < self.split < 1:
            return None
        return self.pos().x() + self.image.width() * self.split

    def show_candidate(self, patch: np.ndarray, region: tuple[int, int, int, int]) -> None:
        self.prepareGeometryChange()
        patch = np.ascontiguousarray(patch)
        self.image = QImage(patch.data, patch.shape[1], patch.shape[0], patch.strides[0],
                            QImage.Format.Format_RGB888).copy()
        self.setPos(region[0], region[1])
        self.active = True
        self.setVisible(not self.before)
        self.update()

    def set_split(self, fraction: float) -> None:
        self.split = min(1.0, max(0.0, fraction))
        self.update()

    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, self.image.width(), self.image.height())

    def paint(self, painter: QPainter, option, widget=None) -> None:
        if self.image.isNull():
            return
        width = round(self.image.width() * self.split)
        painter.drawImage(QRectF(0, 0, width, self.image.height()), self.image,
                          QRectF(0, 0, width, self.image.height()))
        if 0 < self.split < 1:
            pen = QPen(QColor(255, 255, 255), 2)
            pen.setCosmetic(True)
            painter.setPen(pen)
            painter.drawLine(width, 0, width, self.image.height())


class Canvas(QGraphicsView):
    hovered = Signal(int, int)  # image pixel under the cursor
    left = Signal()  # the cursor left the image
    zoom_changed = Signal(float)
    message = Signal(str)  # a tool explains why it did nothing
    before_changed = Signal(bool)  # showing the original photo (`\\`)

    def __init__(self, document: Document, parent=None):
        super().__init__(parent)
        self.document = document
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(QColor(48, 48, 52))
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setCursor(Qt.CursorShape.CrossCursor)

        self.photo_item = ImageItem(smooth=True)
        self.overlay_item = ImageItem(smooth=False)  # labels must stay crisp: no blending of ids' colours
        self.outline_item = QGraphicsPathItem()
        pen = QPen(QColor(255, 230, 0), 2)
        pen.setCosmetic(True)  # visible at any zoom
        self.outline_item.setPen(pen)
        for z, item in enumerate((self.photo_item, self.overlay_item, self.outline_item)):
            item.setZValue(z)
            self.scene().addItem(item)
        self.overlay = np.zeros((0, 0, 4), np.uint8)  # RGBA, premultiplied: alpha is 0 (unlabeled) or 255
        self.lut = np.zeros(65536, np.uint32)  # label id -> RGBA packed in memory order
        self._lut_set = None
        self._overlay_fresh = False
        self._fitted = False
        self.tool = None  # app.tools.Tool: receives presses/moves/releases in image coordinates
        self._pan_from: QPointF | None = None
        self._space = False
        self.before = False  # showing the original photo instead of the result (`\\`, View > Before/After)
        self._before_saved = None  # the photo layer's image while the original is shown
        self._before_key: tuple[float, bool] | None = None  # time `\\` went down, the state before it
        self._split_drag: CandidatePreview | None = None
        self._outline_timer = QTimer(self, singleShot=True, interval=120)
        self._outline_timer.timeout.connect(self.update_outline)

        document.reset.connect(self.on_reset)
        document.labels_changed.connect(self.on_labels_changed)
        document.image_changed.connect(self.on_image_changed)
        document.label_set_changed.connect(self.on_label_set_changed)
        document.view_changed.connect(self.on_view_changed)
        if document.is_open:
            self.on_reset()

    # ---- document -> pixels --------------------------------------------------------------------------------
    def on_reset(self) -> None:
        self.set_before(False)
        doc = self.document
        width, height = doc.size
        if doc.image is not None:
            self.photo_item.set_image(wrap_rgb(doc.image), doc.image)
        else:
            self.photo_item.set_image(QImage())
        # zeroed pages come lazily from the OS: a new, all-unlabeled (transparent) map costs no recolouring
        self.overlay = np.zeros((height, width, 4), np.uint8)
        self._overlay_fresh = True
        self.overlay_item.set_image(QImage(self.overlay.data, width, height, width * 4,
                                           QImage.Format.Format_RGBA8888_Premultiplied), self.overlay)
        self.on_label_set_changed(force=True)
        self.scene().setSceneRect(QRectF(0, 0, width, height))
        self.on_view_changed()
        self.fit()

    def on_label_set_changed(self, force: bool = False) -> None:
        label_set = self.document.label_set
        if label_set is self._lut_set and not force:
            return
        self._lut_set = label_set
        lut = np.zeros((65536, 4), np.uint8)
        for label in label_set.labels:
            if label.id != label_set.unlabeled:
                lut[label.id] = (*label.color, 255)
        # one uint32 per RGBA pixel: a 1-D gather is ~10x faster than indexing an (N, 4) table
        self.lut = lut.view(np.uint32).ravel()
        if self.document.is_open:
            self.recolour(self.document.rect)
            self.overlay_item.update()

    def recolour(self, rect: QRect) -> None:
        x0, y0, x1, y1 = rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1
        labels = self.document.labels[y0:y1, x0:x1]
        target = self.overlay.view(np.uint32)[y0:y1, x0:x1, 0]
        if labels.size > UNIFORM_CHECK and labels.min() == labels.max():
            value = self.lut[labels[0, 0]]
            if value or not self._overlay_fresh:
                target.fill(value)
        else:
            target[...] = self.lut[labels]
        self._overlay_fresh = False

    def on_labels_changed(self, rect: QRect) -> None:
        self.recolour(rect)
        self.overlay_item.update(QRectF(rect))
        if self.document.view_mode == "outline":
            self._outline_timer.start()

    def on_image_changed(self, rect: QRect) -> None:
        doc = self.document
        if doc.image is None:
            return
        if doc.image is not self.photo_item.buffer:  # the document copied the photo on its first change
            self.photo_item.set_image(wrap_rgb(doc.image), doc.image)
        else:
            self.photo_item.update(QRectF(rect))

    def on_view_changed(self) -> None:
        doc = self.document
        mode = doc.view_mode
        self.photo_item.setVisible(mode != "labels" or self.before)
        self.overlay_item.setVisible(mode in ("both", "labels") and not self.before)
        self.overlay_item.setOpacity(1.0 if mode == "labels" else doc.overlay_opacity)
        self.outline_item.setVisible(mode == "outline" and not self.before)
        if mode == "outline":
            self.update_outline()

    # ---- before/after --------------------------------------------------------------------------------------
    def original_image(self) -> np.ndarray | None:
        """The photo as opened (no applied candidates), None for a document made from a label map alone."""
        photo = self.document.photo
        return None if photo is None else photo.rgb

    def set_before(self, on: bool) -> None:
        """Show the original photo (no applied candidate, no previewed candidate, no label overlay) or the
        result again. The photo layer's own image (the result, or the live preview's rendering) comes back
        as it was."""
        on = bool(on)
        if on == self.before:
            return
        self.before = on
        if on:
            self._before_saved = (self.photo_item.image, self.photo_item.buffer)
            original = self.original_image()
            if original is not None:
                self.photo_item.set_image(wrap_rgb(original), original)
        elif self._before_saved is not None:
            self.photo_item.set_image(*self._before_saved)
            self._before_saved = None
        for item in self.scene().items():
            if isinstance(item, CandidatePreview):
                item.set_before(on)
        self.on_view_changed()
        self.viewport().update()
        self.before_changed.emit(on)

    def toggle_before(self) -> None:
        self.set_before(not self.before)

    def before_key_pressed(self) -> None:
        """`\\` went down: show the original at once; the release decides between a toggle and a hold."""
        if self._before_key is None:
            self._before_key = (time.monotonic(), self.before)
            self.set_before(True)

    def before_key_released(self) -> None:
        if self._before_key is None:
            return
        pressed, was = self._before_key
        self._before_key = None
        held = time.monotonic() - pressed >= HOLD_S
        self.set_before(was if held else not was)

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:
        super().drawForeground(painter, rect)
        if not self.before:
            return
        painter.save()
        painter.resetTransform()
        text = "Before: the original photo  (\\ again: after)"
        metrics = painter.fontMetrics()
        box = QRectF(8, 8, metrics.horizontalAdvance(text) + 16, metrics.height() + 8)
        painter.fillRect(box, QColor(0, 0, 0, 170))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

    def _divider_at(self, view_pos: QPointF) -> "CandidatePreview | None":
        """The split preview whose divider is within SPLIT_GRAB_PX view pixels of `view_pos`."""
        scene = self.mapToScene(view_pos.toPoint())
        for item in self.scene().items():
            if not isinstance(item, CandidatePreview):
                continue
            x = item.divider_x()
            if x is None or not item.pos().y() <= scene.y() <= item.pos().y() + item.image.height():
                continue
            if abs(self.mapFromScene(QPointF(x, scene.y())).x() - view_pos.x()) <= SPLIT_GRAB_PX:
                return item
        return None

    def _drag_split(self, item: "CandidatePreview", view_pos: QPointF) -> None:
        scene = self.mapToScene(view_pos.toPoint())
        fraction = (scene.x() - item.pos().x()) / max(1, item.image.width())
        item.set_split(min(0.999, max(0.001, fraction)))  # stays split: the divider stays grabbable
        item.split_dragged.emit(item.split)

    def update_outline(self) -> None:
        """Contours of the edited region as a cosmetic path, so a one-pixel edit stays visible at any zoom."""
        doc = self.document
        path = QPainterPath()
        if doc.is_open:
            edited = doc.edited_mask().view(np.uint8)
            contours, _ = cv2.findContours(edited, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            for contour in contours:
                points = contour[:, 0, :]
                path.moveTo(float(points[0, 0]), float(points[0, 1]))
                for px, py in points[1:]:
                    path.lineTo(float(px), float(py))
                path.closeSubpath()
        self.outline_item.setPath(path)

    # ---- zoom and pan --------------------------------------------------------------------------------------
    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        zoom = min(MAX_ZOOM, max(MIN_ZOOM, zoom))
        self._fitted = False
        if anchor is None:
            anchor = self.mapToScene(self.viewport().rect().center())
        view_pos = self.mapFromScene(anchor)
        self.setTransform(QTransform.fromScale(zoom, zoom))
        # keep the anchor's scene point under the same viewport pixel
        delta = self.mapToScene(view_pos) - anchor
        center = self.mapToScene(self.viewport().rect().center())
        self.centerOn(center - delta)
        self.zoom_changed.emit(zoom)

    def zoom_in(self) -> None:
        self.set_zoom(self.zoom * ZOOM_STEP)

    def zoom_out(self) -> None:
        self.set_zoom(self.zoom / ZOOM_STEP)

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def fit(self) -> None:
        if not self.document.is_open:
            return
        self.fitInView(self.scene().sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
        self._fitted = True
        self.zoom_changed.emit(self.zoom)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._fitted:  # still showing the whole image: keep doing so as the window changes size
            self.fit()

    def wheelEvent(self, event) -> None:
        if self.document.is_open and self.tool is not None and self.tool.wheel(self.image_pos(event), event):
            event.accept()
            return
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.set_zoom(self.zoom * ZOOM_STEP ** steps, self.mapToScene(event.position().toPoint()))
        event.accept()

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
            return
        if self.tool is not None and self.tool.key(event):
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.viewport().setCursor(Qt.CursorShape.CrossCursor)
            return
        super().keyReleaseEvent(event)

    # ---- mouse -> tool -------------------------------------------------------------------------------------
    def image_pos(self, event) -> QPointF:
        return self.mapToScene(event.position().toPoint())

    def mousePressEvent(self, event) -> None:
        button = event.button()
        if button == Qt.MouseButton.MiddleButton or (button == Qt.MouseButton.LeftButton and self._space):
            self._pan_from = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if not self.document.is_open:
            return
        if button == Qt.MouseButton.LeftButton:
            divider = self._divider_at(event.position())
            if divider is not None:  # the compare divider takes the drag, not the tool
                self._split_drag = divider
                return
        if button == Qt.MouseButton.RightButton:  # picks the label under the cursor unless the tool uses it
            pos = self.image_pos(event)
            if self.tool is not None and self.tool.right_click(pos, event):
                return
            x, y = int(np.floor(pos.x())), int(np.floor(pos.y()))
            width, height = self.document.size
            if 0 <= x < width and 0 <= y < height:
                self.document.set_active_label(int(self.document.labels[y, x]))
            return
        if self.tool is not None:
            self.tool.press(self.image_pos(event), event)

    def mouseMoveEvent(self, event) -> None:
        if self._pan_from is not None:
            delta = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - round(delta.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - round(delta.y()))
            return
        if self._split_drag is not None:
            self._drag_split(self._split_drag, event.position())
            return
        if not self.document.is_open:
            return
        near_divider = event.buttons() == Qt.MouseButton.NoButton and self._divider_at(event.position()) is not None
        self.viewport().setCursor(Qt.CursorShape.SplitHCursor if near_divider
                                  else Qt.CursorShape.OpenHandCursor if self._space else Qt.CursorShape.CrossCursor)
        pos = self.image_pos(event)
        x, y = int(np.floor(pos.x())), int(np.floor(pos.y()))
        width, height = self.document.size
        if 0 <= x < width and 0 <= y < height:
            self.hovered.emit(x, y)
        else:
            self.left.emit()
        if self.tool is not None:
            self.tool.move(pos, event)

    def mouseReleaseEvent(self, event) -> None:
        if self._split_drag is not None and event.button() == Qt.MouseButton.LeftButton:
            self._split_drag = None
            return
        if self._pan_from is not None and event.button() in (Qt.MouseButton.MiddleButton,
                                                            Qt.MouseButton.LeftButton):
            self._pan_from = None
            shape = Qt.CursorShape.OpenHandCursor if self._space else Qt.CursorShape.CrossCursor
            self.viewport().setCursor(shape)
            return
        if self.document.is_open and self.tool is not None:
            self.tool.release(self.image_pos(event), event)

    def mouseDoubleClickEvent(self, event) -> None:
        if self.document.is_open and self.tool is not None and event.button() == Qt.MouseButton.LeftButton:
            self.tool.double_click(self.image_pos(event), event)

    def enterEvent(self, event) -> None:
        # keys (space to pan, Enter/Esc for the lasso) go to the canvas under the mouse, unless the user is
        # typing into a text field such as the label search
        if not isinstance(QApplication.focusWidget(), QLineEdit):
            self.setFocus()
        super().enterEvent(event)

    def leaveEvent(self, event) -> None:
        self.left.emit()
        if self.tool is not None:
            self.tool.leave()
        super().leaveEvent(event)

    def set_tool(self, tool) -> None:
        if self.tool is not None:
            self.tool.deactivate()
        self.tool = tool
        tool.activate()
