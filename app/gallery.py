"""The candidate gallery: generate, watch progress, compare, apply (undoably), pin, discard, "more like this".

Every candidate of the document is kept (engine.project.StoredCandidate in `document.candidates`, saved
losslessly in the project), grouped by the request that made it. Click previews a candidate on the canvas
(`\\` toggles before/after, the Compare slider splits the view); double-click or Enter applies it as one undo
step. The total is held under a visible size cap: when a new batch would exceed it, the oldest unpinned,
unapplied candidates are removed and the gallery says so; pinned ones are never removed.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import cv2
import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QImage, QKeySequence, QPainter, QPen, QPixmap, QUndoCommand
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDockWidget, QGraphicsItem, QHBoxLayout, QLabel,
                               QMenu, QProgressBar, QPushButton, QSlider, QSpinBox, QToolButton, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from app.engine_bridge import EngineBridge
from engine.errors import InputError
from engine.jobs import JobEvent, JobState, Request, thaw
from engine.project import StoredCandidate

CAP_BYTES = 512 * 2 ** 20  # raw pixels of all kept candidates; PNG in the project is usually smaller
THUMB = 96
KEEP_REQUESTS = 4
ID_ROLE = Qt.ItemDataRole.UserRole  # a candidate item's StoredCandidate id (str)
GROUP_ROLE = Qt.ItemDataRole.UserRole + 1  # a group item's request id (str)
# which model kinds (config.json "kind" = backend name) generate in which document mode
MODE_KINDS = {"edit": ("asset", "asapnet"), "colorize": ("coltran", "pixelcnn"), "translate": ("asapnet",)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2 ** 20:.0f} MB" if nbytes >= 2 ** 20 else f"{nbytes / 2 ** 10:.0f} kB"


def thumbnail(image: np.ndarray, size: int = THUMB) -> QIcon:
    height, width = image.shape[:2]
    scale = size / max(height, width)
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else np.ascontiguousarray(image)
    qimage = QImage(small.data, small.shape[1], small.shape[0], small.strides[0], QImage.Format.Format_RGB888)
    return QIcon(QPixmap.fromImage(qimage.copy()))


def build_request(document, backend: str, model: str, *, k: int, seed: int, params: dict | None = None,
                  baseline: np.ndarray | None = None) -> Request:
    """A snapshot of the document for one Generate: the current image (with applied candidates), the labels
    as they were after the last applied candidate (`baseline`, else as loaded) and as painted now."""
    if not document.is_open:
        raise InputError("open a photo or a label map first")
    labels = document.labels
    before = document.original_labels if baseline is None else baseline
    params = dict(params or {})
    if document.mode == "colorize":
        if document.hints:
            params.setdefault("hints", list(document.hints))
        return Request(backend=backend, model=model, photo=document.image, k=k, seed=seed, params=params,
                       label_set=document.label_set.name, slot=document.doc_id)
    photo = document.image if document.image is not None else np.zeros((*labels.shape, 3), np.uint8)
    if document.mode == "edit" and not (labels != before).any():
        raise InputError("nothing to generate: paint a new label over part of the photo first")
    return Request(backend=backend, model=model, photo=photo, labels_before=before, labels_after=labels,
                   k=k, seed=seed, params=params, label_set=document.label_set.name, slot=document.doc_id)


@dataclass
class RequestGroup:
    id: str
    title: str
    request: Request | None  # None for groups loaded from a project (pixels not kept): rebuilt on demand
    meta: dict  # backend, model, params, label_set
    next_seed: int = 0
    jobs: set[int] = field(default_factory=set)
    status: str = ""


class PreviewItem(QGraphicsItem):
    """A candidate drawn over the canvas at its region; left of `split` the candidate, right of it the image."""

    def __init__(self):
        super().__init__()
        self.setZValue(100)
        self.image = QImage()
        self.split = 1.0
        self.setVisible(False)

    def show_candidate(self, patch: np.ndarray, region: tuple[int, int, int, int]) -> None:
        self.prepareGeometryChange()
        patch = np.ascontiguousarray(patch)
        self.image = QImage(patch.data, patch.shape[1], patch.shape[0], patch.strides[0],
                            QImage.Format.Format_RGB888).copy()
        self.setPos(region[0], region[1])
        self.setVisible(True)
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


class _AppliedCommand(QUndoCommand):
    """The bookkeeping half of applying a candidate (the pixels are the document's own PatchCommand)."""

    def __init__(self, gallery: "GalleryDock", candidate_id: str, entry: dict, baseline: np.ndarray | None):
        super().__init__("Record applied candidate")
        self.gallery, self.candidate_id, self.entry = gallery, candidate_id, entry
        self.baseline, self.previous = baseline, gallery.baseline

    def redo(self) -> None:
        self.gallery.document.history.append(self.entry)
        self.gallery.baseline = self.baseline
        self.gallery._set_applied(self.candidate_id, True)

    def undo(self) -> None:
        history = self.gallery.document.history
        if history and history[-1] is self.entry:
            history.pop()
        self.gallery.baseline = self.previous
        self.gallery._set_applied(self.candidate_id, False)


class JobProgress(QWidget):
    """Status-bar widget: progress bar, stage text, queue count and Cancel (click: current job; menu: more)."""

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None):
        super().__init__(parent)
        self.bridge = bridge
        self.slot: str | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.stage = QLabel()
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setMaximumWidth(160)
        self.bar.setAccessibleName("Generation progress")
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Cancel the running generation (the arrow: queued ones or all)")
        self.cancel_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        menu = QMenu(self.cancel_button)
        menu.addAction("Cancel current", self.cancel_current)
        menu.addAction("Cancel queued", lambda: self.bridge.cancel_queued(self.slot))
        menu.addAction("Cancel all", lambda: self.bridge.cancel_all(self.slot))
        self.cancel_button.setMenu(menu)
        self.cancel_button.clicked.connect(self.cancel_current)
        for widget in (self.stage, self.bar, self.cancel_button):
            layout.addWidget(widget)
        bridge.changed.connect(self.on_event)
        self.setVisible(False)

    def cancel_current(self) -> None:
        active = self.bridge.active_job()
        if active is not None and (self.slot is None or active.request.slot == self.slot):
            self.bridge.cancel(active.id)

    def on_event(self, event: JobEvent) -> None:
        if self.slot is not None and event.slot != self.slot:
            return
        running, queued = self.bridge.pending(self.slot)
        active = self.bridge.active_job()
        if active is not None and (self.slot is None or active.request.slot == self.slot):
            self.bar.setValue(round(active.fraction * 1000))
            self.stage.setText(active.stage + (f" (+{queued} queued)" if queued else ""))
        self.setVisible(bool(running or queued))


class CandidateTree(QTreeWidget):
    """Enter applies the current candidate, Delete discards the selected ones (keys, not window shortcuts,
    so they never fire while the user types elsewhere)."""

    apply_current = Signal()
    discard_selected = Signal()

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.apply_current.emit()
        elif event.key() == Qt.Key.Key_Delete:
            self.discard_selected.emit()
        else:
            super().keyPressEvent(event)


class GalleryDock(QDockWidget):
    error = Signal(str)  # a message for the user (failed job, nothing to generate, ...)
    notice = Signal(str)  # a transient status message

    def __init__(self, document, bridge: EngineBridge, canvas=None, parent: QWidget | None = None,
                 *, cap_bytes: int = CAP_BYTES):
        super().__init__("Candidates", parent)
        self.setObjectName("gallery")
        self.document = document
        self.bridge = bridge
        self.canvas = canvas
        self.cap_bytes = cap_bytes
        self.groups: dict[str, RequestGroup] = {}
        self.job_groups: dict[int, str] = {}
        self.applied: set[str] = set()
        self.baseline: np.ndarray | None = None
        self.models: list = []  # engine.checkpoints.ModelInfo
        self.extra_choices: list[tuple[str, str]] = []
        self._scanned = False
        self.last_notice = ""
        self.preview = PreviewItem()
        if canvas is not None:
            canvas.scene().addItem(self.preview)
        self.progress = JobProgress(bridge)

        body = QWidget()
        layout = QVBoxLayout(body)
        controls = QHBoxLayout()
        self.model_box = QComboBox()
        self.model_box.setAccessibleName("Model")
        self.model_box.setPlaceholderText("No models installed")
        self.model_box.setToolTip("The model that generates candidates")
        self.samples = QSpinBox(minimum=1, maximum=32, value=4)
        self.samples.setPrefix("× ")
        self.samples.setAccessibleName("Number of candidates")
        self.samples.setToolTip("How many candidates one Generate makes")
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("Sample candidates for the painted change (Ctrl+Return)")
        self.generate_button.clicked.connect(self.generate)
        controls.addWidget(self.model_box, 1)
        controls.addWidget(self.samples)
        controls.addWidget(self.generate_button)
        layout.addLayout(controls)

        self.tree = CandidateTree()
        self.tree.apply_current.connect(lambda: self.apply())
        self.tree.discard_selected.connect(lambda: self.discard())
        self.tree.setHeaderHidden(True)
        self.tree.setIconSize(self.tree.iconSize().expandedTo(QPixmap(THUMB, THUMB).size()))
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setAccessibleName("Candidates")
        self.tree.currentItemChanged.connect(self._current_changed)
        self.tree.itemDoubleClicked.connect(lambda item, _column: self.apply(self._candidate_id(item)))
        layout.addWidget(self.tree, 1)

        compare = QHBoxLayout()
        compare.addWidget(QLabel("Compare"))
        self.split = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=1000, value=1000)
        self.split.setAccessibleName("Before/after split")
        self.split.setToolTip("Left of the split: the candidate; right: the image as it is")
        self.split.valueChanged.connect(lambda value: self.preview.set_split(value / 1000))
        compare.addWidget(self.split, 1)
        layout.addLayout(compare)

        buttons = QHBoxLayout()
        self.apply_button = self._button(buttons, "Apply", self.apply, "Apply the selected candidate (Enter)")
        self.pin_button = self._button(buttons, "Pin", self.toggle_pin, "Pinned candidates are never removed")
        self.more_button = self._button(buttons, "More like this", self.more_like_this,
                                        "The same request with new seeds")
        layout.addLayout(buttons)
        buttons = QHBoxLayout()
        self._button(buttons, "Discard", self.discard, "Remove the selected candidates (Delete)")
        self._button(buttons, "Clear all but pinned", self.clear_unpinned, "Remove every unpinned candidate")
        layout.addLayout(buttons)
        self.size_label = QLabel()
        self.size_label.setWordWrap(True)
        layout.addWidget(self.size_label)
        self.setWidget(body)

        self.toggle_action = QAction("Before/after", self)
        self.toggle_action.setShortcut(QKeySequence("\\"))
        self.toggle_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.toggle_action.setToolTip("Toggle the previewed candidate (before/after)")
        self.toggle_action.triggered.connect(self.toggle_before_after)
        self.addAction(self.toggle_action)

        bridge.finished.connect(self.on_finished)
        bridge.changed.connect(self._on_changed)
        bridge.models_listed.connect(self.set_models)
        document.reset.connect(self.on_reset)
        self.on_reset()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._scanned:  # the first time the dock is seen: list the models (off the UI thread)
            self._scanned = True
            self.bridge.list_models_async()

    # ---- building ------------------------------------------------------------------------------------------
    def _button(self, layout, text, slot, tip) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.clicked.connect(lambda: slot())
        layout.addWidget(button)
        return button

    def set_models(self, models: list) -> None:
        """Fill the model chooser (engine.checkpoints.ModelInfo list); the document's mode decides the order."""
        self.models = list(models)
        self._fill_models()

    def _fill_models(self) -> None:
        current = self.model_box.currentData()
        self.model_box.clear()
        kinds = MODE_KINDS.get(self.document.mode, ())
        usable = [m for m in self.models if m.kind in {k for ks in MODE_KINDS.values() for k in ks}]
        # the mode's engines first, in MODE_KINDS order (ASSET before ASAPNet for edits), then the rest
        usable.sort(key=lambda m: (kinds.index(m.kind) if m.kind in kinds else len(kinds), m.kind, m.name))
        for info in usable:
            self.model_box.addItem(f"{info.title} ({info.kind})", f"{info.kind}\t{info.name}")
        for title, choice in self.extra_choices:
            self.model_box.addItem(title, choice)
        # data are "backend<TAB>model" strings: QVariant round-trips them exactly (tuples it does not)
        index = self.model_box.findData(current) if current is not None else -1
        self.model_box.setCurrentIndex(index if index >= 0 else min(0, self.model_box.count() - 1))

    def add_backend_choice(self, title: str, backend: str, model: str = "") -> None:
        """A choice that is not a model folder (tests, or a backend with a built-in default model)."""
        self.extra_choices.append((title, f"{backend}\t{model}"))
        self.model_box.addItem(title, f"{backend}\t{model}")
        self.model_box.setCurrentIndex(self.model_box.count() - 1)

    # ---- document ------------------------------------------------------------------------------------------
    def on_reset(self) -> None:
        """A new document (or a loaded project): show its stored candidates, grouped by request."""
        previous = self.progress.slot
        if previous and previous != self.document.doc_id:
            self.bridge.cancel_all(previous)  # the old document's jobs can no longer be applied anywhere
        self.tree.clear()
        self.groups.clear()
        self.job_groups.clear()
        self.applied = {entry.get("candidate") for entry in self.document.history if entry.get("candidate")}
        self.baseline = None
        self.preview.setVisible(False)
        self.progress.slot = self.document.doc_id or None
        for candidate in self.document.candidates:
            group = self._group_for_stored(candidate)
            self._add_item(group, candidate)
        self._fill_models()
        self._update_size()

    def _group_for_stored(self, candidate: StoredCandidate) -> RequestGroup:
        if candidate.request_id not in self.groups:
            meta = {k: candidate.meta.get(k) for k in ("backend", "model", "params", "label_set")}
            self._new_group(candidate.request_id, None, meta)
        group = self.groups[candidate.request_id]
        group.next_seed = max(group.next_seed, int(candidate.meta.get("seed", 0)) + 1)
        return group

    def _new_group(self, group_id: str, request: Request | None, meta: dict) -> RequestGroup:
        title = f"{meta.get('model') or meta.get('backend')}"
        group = RequestGroup(group_id, title, request, meta)
        self.groups[group_id] = group
        item = QTreeWidgetItem([title])
        item.setData(0, GROUP_ROLE, group_id)
        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
        self.tree.addTopLevelItem(item)
        item.setExpanded(True)
        return group

    def _group_item(self, group_id: str) -> QTreeWidgetItem | None:
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            if item.data(0, GROUP_ROLE) == group_id:
                return item
        return None

    def _mark_changed(self) -> None:
        # candidates live in the project file: a new or removed one is an unsaved change
        self.document.unsaved = True
        self.document.dirty_changed.emit(True)

    # ---- generating ----------------------------------------------------------------------------------------
    def generate(self, params: dict | None = None) -> int | None:
        """Snapshot the document and queue a request with the chosen model and sampling `params`; returns the
        job id (None when there is nothing to do, after telling the user why)."""
        choice = self.model_box.currentData()
        if choice is None:
            self.error.emit("no model for this document: import one with `sgraffito import` (see the README)")
            return None
        backend, model = choice.split("\t")
        seed = secrets.randbelow(1_000_000)  # short enough to read in the gallery and type into the CLI
        try:
            request = build_request(self.document, backend, model, k=self.samples.value(), seed=seed,
                                    params=params, baseline=self.baseline)
        except InputError as error:
            self.error.emit(str(error))
            return None
        meta = {"backend": backend, "model": model, "params": thaw(request.params), "label_set": request.label_set}
        group = self._new_group(uuid.uuid4().hex[:12], request, meta)
        group.next_seed = seed + request.k
        # a request holds a copy of the photo and both label maps: keep it for the latest groups only; "more like
        # this" on an older group rebuilds it from the document as it is now
        for old in list(self.groups.values())[:-KEEP_REQUESTS]:
            old.request = None
        return self._submit(group, request, supersede=True)

    def more_like_this(self, candidate_id: str | None = None) -> int | None:
        """The selected candidate's request again with the next unused seeds, added to the same group."""
        candidate = self._stored(candidate_id or self._candidate_id(self.tree.currentItem()))
        if candidate is None:
            return None
        group = self.groups[candidate.request_id]
        k = self.samples.value()
        if group.request is not None:
            request = group.request.with_seed(group.next_seed, k=k)
        else:
            try:
                request = build_request(self.document, group.meta["backend"], group.meta.get("model") or "",
                                        k=k, seed=group.next_seed, params=group.meta.get("params"),
                                        baseline=self.baseline)
            except InputError as error:
                self.error.emit(str(error))
                return None
            group.request = request
        group.next_seed += k
        return self._submit(group, request, supersede=False)

    def _submit(self, group: RequestGroup, request: Request, supersede: bool) -> int:
        job_id = self.bridge.submit(request, supersede=supersede)
        group.jobs.add(job_id)
        self.job_groups[job_id] = group.id
        self._set_group_status(group, "queued")
        return job_id

    def _set_group_status(self, group: RequestGroup, status: str) -> None:
        group.status = status
        item = self._group_item(group.id)
        if item is not None:
            count = item.childCount()
            item.setText(0, f"{group.title} · {count} candidate{'s' * (count != 1)}"
                            + (f" · {status}" if status else ""))

    def _on_changed(self, event: JobEvent) -> None:
        group = self.groups.get(self.job_groups.get(event.job_id, ""))
        if group is not None and event.state is JobState.RUNNING:
            self._set_group_status(group, f"{event.fraction:.0%} {event.stage}")
            item = self._group_item(group.id)
            if item is not None and event.preview is not None:
                item.setIcon(0, thumbnail(event.preview, THUMB // 2))  # the sample taking shape

    def on_finished(self, event: JobEvent) -> None:
        group_id = self.job_groups.pop(event.job_id, None)
        group = self.groups.get(group_id or "")
        if group is None:
            return  # another document's job, or one from before a reset
        group.jobs.discard(event.job_id)
        if event.state is JobState.DONE:
            fresh = {self._store(group, event, candidate) for candidate in event.candidates}
            self._prune(keep=fresh)
            self._mark_changed()
        elif event.state is JobState.FAILED:
            self.error.emit(event.error or "generation failed")
        item = self._group_item(group.id)
        if item is not None and not group.jobs:
            item.setIcon(0, QIcon())
        status = "" if not group.jobs else "queued"
        if event.state is JobState.CANCELLED and not group.jobs:
            status = "superseded" if event.superseded else "cancelled"
        self._set_group_status(group, status)
        item = self._group_item(group.id)
        if item is not None and item.childCount() == 0 and not group.jobs:
            self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))
            del self.groups[group.id]
        self._update_size()

    def _store(self, group: RequestGroup, event: JobEvent, candidate) -> str:
        meta = {**group.meta, "seed": candidate.seed, "box": list(candidate.region),
                "seconds": round(candidate.seconds or event.seconds / max(1, len(event.candidates)), 3),
                "info": thaw(candidate.info), "created": _now()}
        stored = StoredCandidate(id=uuid.uuid4().hex[:16], request_id=group.id,
                                 image=np.array(candidate.image), meta=meta)
        self.document.candidates.append(stored)
        self._add_item(group, stored)
        return stored.id

    def _add_item(self, group: RequestGroup, stored: StoredCandidate) -> None:
        parent = self._group_item(group.id)
        item = QTreeWidgetItem([self._label(stored)])
        item.setIcon(0, thumbnail(stored.image))
        item.setData(0, ID_ROLE, stored.id)
        item.setToolTip(0, self._tooltip(stored))
        parent.addChild(item)
        self._set_group_status(group, group.status)

    def _label(self, stored: StoredCandidate) -> str:
        marks = (" · pinned" if stored.pinned else "") + (" · applied" if stored.id in self.applied else "")
        return f"seed {stored.meta.get('seed')}{marks}"

    @staticmethod
    def _tooltip(stored: StoredCandidate) -> str:
        meta = stored.meta
        params = ", ".join(f"{k}={v}" for k, v in (meta.get("params") or {}).items()) or "defaults"
        x0, y0, x1, y1 = meta.get("box", (0, 0, 0, 0))
        return (f"Model: {meta.get('model') or '(default)'} ({meta.get('backend')})\nSeed: {meta.get('seed')}\n"
                f"Parameters: {params}\nTime: {meta.get('seconds', 0):.1f} s\n"
                f"Region: {x1 - x0}×{y1 - y0} at ({x0}, {y0})\nCreated: {meta.get('created', '')}")

    # ---- candidates ----------------------------------------------------------------------------------------
    @staticmethod
    def _candidate_id(item: QTreeWidgetItem | None) -> str | None:
        return (item.data(0, ID_ROLE) or None) if item is not None else None

    def _stored(self, candidate_id: str | None) -> StoredCandidate | None:
        return next((c for c in self.document.candidates if c.id == candidate_id), None)

    def _item(self, candidate_id: str) -> QTreeWidgetItem | None:
        for index in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(index)
            for child in range(group.childCount()):
                if self._candidate_id(group.child(child)) == candidate_id:
                    return group.child(child)
        return None

    def candidate_ids(self) -> list[str]:
        """In display order: groups oldest first, candidates in seed order of arrival."""
        ids = []
        for index in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(index)
            ids += [self._candidate_id(group.child(i)) for i in range(group.childCount())]
        return ids

    def _current_changed(self, current, _previous) -> None:
        self.show_preview(self._candidate_id(current))

    def show_preview(self, candidate_id: str | None) -> None:
        stored = self._stored(candidate_id)
        if stored is None:
            self.preview.setVisible(False)
            return
        self.preview.show_candidate(stored.image, tuple(stored.meta["box"]))
        self.preview.set_split(self.split.value() / 1000)

    def toggle_before_after(self) -> None:
        if not self.preview.image.isNull():
            self.preview.setVisible(not self.preview.isVisible())

    def apply(self, candidate_id: str | None = None) -> bool:
        """Paste the candidate into the image as one undoable step."""
        stored = self._stored(candidate_id or self._candidate_id(self.tree.currentItem()))
        if stored is None:
            return False
        document = self.document
        x0, y0, x1, y1 = stored.meta["box"]
        if x1 > document.size[0] or y1 > document.size[1]:
            self.error.emit(f"the candidate ({x1 - x0}×{y1 - y0} at {x0}, {y0}) does not fit this image")
            return False
        group = self.groups.get(stored.request_id)
        request = group.request if group is not None else None
        baseline = None if request is None or request.labels_after is None else request.labels_after
        entry = {"candidate": stored.id, "model": stored.meta.get("model"), "backend": stored.meta.get("backend"),
                 "seed": stored.meta.get("seed"), "params": stored.meta.get("params"), "box": [x0, y0, x1, y1],
                 "applied": _now()}
        text = f"Apply candidate (seed {stored.meta.get('seed')})"
        stack = document.undo_stack
        if document.image is None and document.view_mode == "labels":
            document.set_view_mode("both")  # show what was applied to a label-map-only document
        document.ensure_image()
        stack.beginMacro(text)
        document.write_patch("image", x0, y0, stored.image, text)
        stack.push(_AppliedCommand(self, stored.id, entry, baseline))
        stack.endMacro()
        self.preview.setVisible(False)
        return True

    def _set_applied(self, candidate_id: str, applied: bool) -> None:
        (self.applied.add if applied else self.applied.discard)(candidate_id)
        stored, item = self._stored(candidate_id), self._item(candidate_id)
        if stored is not None and item is not None:
            item.setText(0, self._label(stored))

    def toggle_pin(self, candidate_id: str | None = None) -> None:
        stored = self._stored(candidate_id or self._candidate_id(self.tree.currentItem()))
        if stored is None:
            return
        stored.pinned = not stored.pinned
        item = self._item(stored.id)
        if item is not None:
            item.setText(0, self._label(stored))
        self._mark_changed()

    def discard(self, candidate_ids: list[str] | None = None) -> int:
        if candidate_ids is None:
            candidate_ids = [self._candidate_id(item) for item in self.tree.selectedItems()]
        return self._remove({i for i in candidate_ids if i})

    def clear_unpinned(self) -> int:
        removed = self._remove({c.id for c in self.document.candidates if not c.pinned})
        if removed:
            self.notice.emit(f"removed {removed} unpinned candidate{'s' * (removed != 1)}")
        return removed

    def _remove(self, ids: set[str]) -> int:
        before = len(self.document.candidates)
        self.document.candidates[:] = [c for c in self.document.candidates if c.id not in ids]
        for candidate_id in ids:
            item = self._item(candidate_id)
            if item is not None:
                item.parent().removeChild(item)
        for group_id in list(self.groups):
            item = self._group_item(group_id)
            if item is not None and item.childCount() == 0 and not self.groups[group_id].jobs:
                self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))
                del self.groups[group_id]
            elif item is not None:
                self._set_group_status(self.groups[group_id], self.groups[group_id].status)
        removed = before - len(self.document.candidates)
        if removed:
            self.preview.setVisible(False)
            self._mark_changed()
            self._update_size()
        return removed

    def total_bytes(self) -> int:
        return sum(c.image.nbytes for c in self.document.candidates)

    def _prune(self, keep: set[str] = frozenset()) -> None:
        """Over the cap: remove the oldest unpinned, unapplied candidates (never the batch that just arrived,
        `keep`), and say so."""
        excess = self.total_bytes() - self.cap_bytes
        victims = []
        for candidate in self.document.candidates:
            if excess <= 0:
                break
            if not candidate.pinned and candidate.id not in self.applied and candidate.id not in keep:
                victims.append(candidate.id)
                excess -= candidate.image.nbytes
        if victims:
            self._remove(set(victims))
            message = (f"removed the {len(victims)} oldest unpinned candidate{'s' * (len(victims) != 1)} to stay "
                       f"under the {_mb(self.cap_bytes)} cap; pin candidates to keep them")
            self.last_notice = message
            self.notice.emit(message)
        self._update_size()

    def _update_size(self) -> None:
        total, count = self.total_bytes(), len(self.document.candidates)
        text = f"{count} candidate{'s' * (count != 1)} · {_mb(total)} of {_mb(self.cap_bytes)} (saved losslessly)"
        over = total > self.cap_bytes
        if over:
            text += " — over the cap: the rest are pinned, applied or new; discard some to make room"
        elif self.last_notice:
            text += f"\n{self.last_notice}"
        self.size_label.setText(text)
        self.size_label.setStyleSheet("color: #e05050;" if over else "")


def install_gallery(window) -> GalleryDock:
    """Add the gallery to app.main_window.MainWindow: the dock, a Generate menu (Ctrl+Return), the status-bar
    progress, error dialogs and the model list. Idempotent: returns the existing gallery if already there."""
    if getattr(window, "gallery", None) is not None:
        return window.gallery
    from PySide6.QtWidgets import QApplication

    bridge = EngineBridge(parent=window)
    gallery = GalleryDock(window.document, bridge, window.canvas, window)
    window.gallery = gallery
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, gallery)
    window.statusBar().addPermanentWidget(gallery.progress)
    gallery.error.connect(window.show_error)
    gallery.notice.connect(lambda message: window.statusBar().showMessage(message, 10_000))

    menu = window.menuBar().addMenu("&Generate")
    for name, text, keys, slot in (
        ("generate", "&Generate", ("Ctrl+Return", "Ctrl+Enter"), lambda: gallery.generate()),
        ("more_like_this", "&More Like This", ("Ctrl+Shift+Return",), lambda: gallery.more_like_this()),
        ("apply_candidate", "&Apply Candidate", (), lambda: gallery.apply()),
        ("cancel_generation", "&Cancel Generation", (), lambda: bridge.cancel_all(window.document.doc_id)),
    ):
        action = QAction(text, window)
        action.setShortcuts([QKeySequence(k) for k in keys])
        action.triggered.connect(slot)
        window.addAction(action)
        window.actions[name] = action
        menu.addAction(action)
    menu.addAction(gallery.toggle_action)
    window.actions["before_after"] = gallery.toggle_action
    if hasattr(window, "menus"):
        window.menus["generate"] = menu
        if "view" in window.menus:
            window.menus["view"].addAction(gallery.toggleViewAction())
    QApplication.instance().aboutToQuit.connect(bridge.shutdown)
    return gallery
