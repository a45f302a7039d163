"""Live preview: while it is on, the canvas shows an ASAPNet rendering of the label map, redone after every stroke.

Painting is never blocked: a change (the end of a stroke, an undo, a new document) restarts a short debounce timer;
when it fires, a snapshot of the labels goes to the engine runtime as a `JobKind.LIVE_PREVIEW` job (the app's one
runtime, through app.engine_bridge: the worker that owns the device runs live previews before queued generation
jobs, and the model comes from its model cache). The result comes back as a queued signal and replaces the
canvas's photo layer (the document's image is not touched: the preview is a view, not an edit).

Superseding and cancelling are the runtime's: each new job replaces this document's older live-preview job
(queued: dropped; running: asked to stop, its result dropped) without touching the document's generation jobs.
A result that a newer document or switching the preview off made stale is dropped here.

What is rendered: a document made from a label map alone is rendered whole (mode "translate"); a photo is shown
with the edited region re-rendered and blended in (mode "edit"), or as it is when no label was changed. Documents
larger than `max_side` are rendered at that size and scaled up (params["max_side"]); larger than `quick_side`,
a quick pass at that size comes first, then the full rendering unless a newer stroke already replaced it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QImage

from app.canvas import wrap_rgb
from app.engine_bridge import EngineBridge, bridge_for
from engine.errors import SgraffitoError
from engine.jobs import JobEvent, JobKind, JobState, Request, thaw

DEBOUNCE_MS = 40
MAX_SIDE = 1024  # larger documents are rendered at this size and scaled up: a preview, not the final image
QUICK_SIDE = 256  # larger ones get a quick pass at this size first (the model's native size: LR stream + MLPs)
BACKEND = "asapnet"


@dataclasses.dataclass
class _Pending:
    """A live-preview job in flight."""

    generation: int
    changed_at: float
    full: bool  # the final rendering (else the quick pass)
    base: np.ndarray  # what the candidate is composed onto


class LivePreview(QObject):
    rendered = Signal(float, bool)  # seconds from the change (end of stroke) to the new image; full resolution?
    failed = Signal(str)  # a message for the status bar, e.g. the model reads another label set

    def __init__(self, document, canvas, bridge: EngineBridge | None = None, *, backend: str = BACKEND,
                 model: str = "", debounce_ms: int = DEBOUNCE_MS, max_side: int = MAX_SIDE,
                 quick_side: int = QUICK_SIDE, parent: QObject | None = None):
        super().__init__(parent or canvas)
        self.document = document
        self.canvas = canvas
        self.backend = backend
        self.model = model
        self.max_side = max_side
        self.quick_side = quick_side
        self._owns_bridge = bridge is None  # standalone (tests, benchmarks): a runtime of its own
        self.bridge = bridge if bridge is not None else EngineBridge(parent=self)
        self._timer = QTimer(self, singleShot=True, interval=debounce_ms)
        self._timer.timeout.connect(self._start)
        self._generation = 0  # bumped by anything that makes a running rendering's result unwanted
        self._jobs: dict[int, _Pending] = {}  # job id -> what it was for
        self._latest: int | None = None  # the newest job submitted
        self._changed_at = 0.0
        self.enabled = False
        self._reveal = False  # switch a labels-only view to show the first rendering after enabling
        self.image: np.ndarray | None = None  # the preview on the canvas (kept alive: the QImage wraps it)
        self.bridge.finished.connect(self._on_finished)
        document.undo_stack.indexChanged.connect(self._on_change)
        document.reset.connect(self._on_reset)

    @property
    def _busy(self) -> bool:
        """A rendering is queued or running."""
        return bool(self._jobs)

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
            self._cancel_jobs()
            self._restore()

    def shutdown(self) -> None:
        self.set_enabled(False)
        self._cancel_jobs()
        if self._owns_bridge:
            self.bridge.shutdown()

    # ---- UI thread ---------------------------------------------------------------------------------------------
    def _on_reset(self) -> None:
        self._generation += 1
        self._cancel_jobs()  # the old document's renderings can no longer be shown
        self._on_change()

    def _on_change(self, *_) -> None:
        if self.enabled and self.document.is_open:
            self._changed_at = time.perf_counter()
            self._timer.start()

    def _cancel_jobs(self) -> None:
        for job_id in list(self._jobs):
            self.bridge.cancel(job_id)

    def _slot(self) -> str:
        return self.document.doc_id or f"live-preview-{id(self)}"

    def _request(self) -> tuple[Request, np.ndarray] | None:
        """The request for the document as it is now and the image its candidate is composed onto; None when
        there is nothing to render (a photo whose labels were not changed: it shows as it is)."""
        document = self.document
        labels = document.labels.copy()
        labels.flags.writeable = False
        photo = document.image
        if document.mode == "translate" or photo is None:
            blank = np.zeros((*labels.shape, 3), np.uint8)
            blank.flags.writeable = False
            fields = dict(mode="translate", photo=blank, labels_before=labels, labels_after=labels)
            base = blank
        else:
            if not (document.labels != document.original_labels).any():
                return None
            base = np.array(photo, copy=True)
            base.flags.writeable = False
            fields = dict(mode="edit", photo=base, labels_before=document.original_labels, labels_after=labels)
        request = Request(backend=self.backend, model=self.model, label_set=document.label_set.name,
                          params={"max_side": self.max_side}, slot=self._slot(), **fields)
        return request, base

    def _start(self) -> None:
        if not (self.enabled and self.document.is_open):
            return
        built = self._request()
        if built is None:
            self._cancel_jobs()
            self._restore()
            return
        request, base = built
        full = max(request.size) <= self.quick_side
        if not full:  # a quick pass at the model's native size first: the view follows the stroke at once
            request = dataclasses.replace(request, params={**thaw(request.params), "max_side": self.quick_side})
        self._submit(request, _Pending(self._generation, self._changed_at, full, base))

    def _submit(self, request: Request, pending: _Pending) -> None:
        try:
            job_id = self.bridge.submit(request, kind=JobKind.LIVE_PREVIEW)
        except SgraffitoError as error:
            self.failed.emit(str(error))
            return
        self._jobs[job_id] = pending
        self._latest = job_id

    def _on_finished(self, event: JobEvent) -> None:
        pending = self._jobs.pop(event.job_id, None)
        if pending is None:
            return  # not ours (a generation job of the same runtime)
        if event.state is JobState.FAILED:
            self.failed.emit(event.error or "live preview failed")
            return
        current = self.enabled and pending.generation == self._generation
        if event.state is not JobState.DONE or not event.candidates or not current:
            return
        result = event.candidates[0].compose(pending.base)
        if result.shape[:2] != self.document.labels.shape:
            return
        self.image = result
        self.canvas.photo_item.set_image(wrap_rgb(result), result)
        if self._reveal and self.document.view_mode == "labels":
            # a document made from a label map shows only labels: once there is a rendering, show it under them
            # (not before, which would show an empty canvas); later the user's view choice stands
            self.document.set_view_mode("both")
        self._reveal = False
        self.rendered.emit(time.perf_counter() - pending.changed_at, pending.full)
        if not pending.full and self._latest == event.job_id:
            # the full resolution after the quick pass, unless a newer stroke already replaced it
            request = dataclasses.replace(event.request, params={**thaw(event.request.params),
                                                                 "max_side": self.max_side})
            self._submit(request, dataclasses.replace(pending, full=True))

    def _restore(self) -> None:
        image = self.document.image
        if image is None:
            self.canvas.photo_item.set_image(QImage())
        else:
            self.canvas.photo_item.set_image(wrap_rgb(image), image)
        self.image = None


def install_live_preview(window, bridge: EngineBridge | None = None) -> LivePreview:
    """Add View > Live preview to the main window, rendering on the window's runtime (`bridge`, else the one
    `bridge_for(window)` finds: the gallery's). It switches on by itself for a document made from a label map
    (the rendering is then the main view) and off for photos; the user can toggle it either way."""
    from PySide6.QtGui import QAction

    from engine.model_store import list_models

    if not isinstance(bridge, EngineBridge):
        bridge = bridge_for(window)
    preview = LivePreview(window.document, window.canvas, bridge, parent=window)
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
