"""Live preview: while it is on, the canvas shows an ASAPNet rendering of the label map, redone after every stroke.

Painting is never blocked: a change (the end of a stroke, an undo, a new document) restarts a short debounce timer;
when it fires, a copy of the labels goes to one background thread that renders them; the result comes back through
a queued signal and replaces the canvas's photo layer (the document's image is not touched: the preview is a view,
not an edit). Changes that arrive while a rendering runs are coalesced into one more rendering after it, and a
result that a newer document or switching the preview off made stale is dropped.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import cv2
import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QImage

from app.canvas import wrap_rgb
from engine.errors import SgraffitoError

DEBOUNCE_MS = 40
MAX_SIDE = 1024  # larger documents are rendered at this size and scaled up: a preview, not the final image
QUICK_SIDE = 256  # larger ones get a quick pass at this size first (the model's native size: LR stream + MLPs)


def default_renderer():
    from engine.models.asapnet import ASAPNetRenderer

    return ASAPNetRenderer.load()


class LivePreview(QObject):
    rendered = Signal(float, bool)  # seconds from the change (end of stroke) to the new image; full resolution?
    failed = Signal(str)  # a message for the status bar, e.g. the model reads another label set
    _finished = Signal(int, object, float, bool, bool)  # worker -> UI: generation, image or error message,
    # change time, full resolution, worker done

    def __init__(self, document, canvas, load_renderer: Callable[[], object] = default_renderer,
                 debounce_ms: int = DEBOUNCE_MS, max_side: int = MAX_SIDE, quick_side: int = QUICK_SIDE,
                 parent: QObject | None = None):
        super().__init__(parent or canvas)
        self.document = document
        self.canvas = canvas
        self.max_side = max_side
        self.quick_side = quick_side
        self._load_renderer = load_renderer
        self._renderer = None  # created on the worker thread: loading a model takes a while
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-preview")
        self._timer = QTimer(self, singleShot=True, interval=debounce_ms)
        self._timer.timeout.connect(self._start)
        self._generation = 0  # bumped by anything that makes a running rendering's result unwanted
        self._busy = False
        self._pending = False
        self._changed_at = 0.0
        self.enabled = False
        self._reveal = False  # switch a labels-only view to show the first rendering after enabling
        self.image: np.ndarray | None = None  # the preview on the canvas (kept alive: the QImage wraps it)
        self._finished.connect(self._on_finished)
        document.undo_stack.indexChanged.connect(self._on_change)
        document.reset.connect(self._on_reset)

    def set_enabled(self, enabled: bool) -> None:
        if enabled == self.enabled:
            return
        self.enabled = enabled
        self._generation += 1
        if enabled:
            self._reveal = True
            self._on_change()
        else:
            self._timer.stop()
            self._restore()

    def shutdown(self) -> None:
        self.set_enabled(False)
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ---- UI thread ---------------------------------------------------------------------------------------------
    def _on_reset(self) -> None:
        self._generation += 1
        self._on_change()

    def _on_change(self, *_) -> None:
        if self.enabled and self.document.is_open:
            self._changed_at = time.perf_counter()
            self._timer.start()

    def _start(self) -> None:
        if self._busy:
            self._pending = True
            return
        self._busy = True
        labels = self.document.labels.copy()
        self._executor.submit(self._work, self._generation, labels, self.document.label_set.name, self._changed_at)

    def _on_finished(self, generation: int, result, changed_at: float, full: bool, done: bool) -> None:
        if done:
            self._busy = False
        if isinstance(result, str):
            self.failed.emit(result)
        elif (result is not None and self.enabled and generation == self._generation
              and result.shape[:2] == self.document.labels.shape):
            self.image = result
            self.canvas.photo_item.set_image(wrap_rgb(result), result)
            if self._reveal and self.document.view_mode == "labels":
                # a document made from a label map shows only labels: once there is a rendering, show it under
                # them (not before, which would show an empty canvas); later the user's view choice stands
                self.document.set_view_mode("both")
            self._reveal = False
            self.rendered.emit(time.perf_counter() - changed_at, full)
        if done and self._pending:
            self._pending = False
            self._start()

    def _restore(self) -> None:
        image = self.document.image
        if image is None:
            self.canvas.photo_item.set_image(QImage())
        else:
            self.canvas.photo_item.set_image(wrap_rgb(image), image)
        self.image = None

    # ---- worker thread -----------------------------------------------------------------------------------------
    def _work(self, generation: int, labels: np.ndarray, label_set: str, changed_at: float) -> None:
        try:
            if self._renderer is None:
                self._renderer = self._load_renderer()
            renderer = self._renderer
            if renderer.label_set and renderer.label_set != label_set:
                raise SgraffitoError(f"live preview: the ASAPNet model reads {renderer.label_set} label maps, "
                                     f"this document uses {label_set}")
            side = max(labels.shape)
            if side > self.quick_side:
                # a quick pass at the model's native size first: the view follows the stroke at once, the full
                # resolution comes after it unless a newer stroke is already waiting
                self._finished.emit(generation, self._render(renderer, labels, self.quick_side), changed_at, False,
                                    False)
                if self._pending:
                    self._finished.emit(generation, None, changed_at, False, True)
                    return
            self._finished.emit(generation, self._render(renderer, labels, self.max_side), changed_at, True, True)
        except SgraffitoError as error:
            self._finished.emit(generation, str(error), changed_at, True, True)
        except Exception as error:  # noqa: BLE001 - a failed preview must not take the editor down
            self._finished.emit(generation, f"live preview failed: {type(error).__name__}: {error}", changed_at,
                                True, True)

    @staticmethod
    def _render(renderer, labels: np.ndarray, max_side: int) -> np.ndarray:
        h, w = labels.shape
        scale = min(1.0, max_side / max(h, w))
        if scale == 1.0:
            return renderer.render(labels)
        image = renderer.render(labels, (max(16, round(w * scale)), max(16, round(h * scale))))
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def install_live_preview(window, load_renderer: Callable[[], object] = default_renderer) -> LivePreview:
    """Add View > Live preview to the main window. It switches on by itself for a document made from a label map
    (the rendering is then the main view) and off for photos; the user can toggle it either way."""
    from PySide6.QtGui import QAction

    from engine.checkpoints import list_models

    preview = LivePreview(window.document, window.canvas, load_renderer, parent=window)
    action = QAction("&Live Preview", window, checkable=True)
    action.setShortcut("Ctrl+L")
    action.setStatusTip("Render the label map with ASAPNet after every stroke")
    available = bool(list_models("asapnet"))
    action.setEnabled(available)
    if not available:
        action.setToolTip("No ASAPNet model installed (sgraffito import asapnet FILE)")
    action.toggled.connect(preview.set_enabled)
    window.addAction(action)
    window.actions["live_preview"] = action
    window.menus["view"].addSeparator()
    window.menus["view"].addAction(action)

    def on_reset():
        if available:
            action.setChecked(window.document.mode == "translate")

    window.document.reset.connect(on_reset)
    preview.failed.connect(lambda message: window.statusBar().showMessage(message, 8000))
    preview.rendered.connect(lambda seconds, full: window.statusBar().showMessage(
        f"Live preview updated {seconds * 1000:.0f} ms after the stroke" + ("" if full else " (quick pass)"), 3000))
    return preview
