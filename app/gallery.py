"""The candidate gallery: a view of the document's workspace (app.workspace) with generate, progress, compare,
apply (undoably), pin, discard and "more like this".

The workspace holds the state (groups, candidates, applied, baseline, the size cap); this dock renders it as a
tree of request groups with thumbnails and listens to `workspace.events`. Click previews a candidate on the
canvas (`\\` toggles before/after, the Compare slider splits the view); double-click or Enter applies it as one
undo step. When a new batch would exceed the size cap, the workspace removes the oldest unpinned, unapplied
candidates and the gallery says so; pinned ones are never removed.
"""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QIcon, QImage, QKeySequence, QPixmap, QUndoCommand
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDockWidget, QHBoxLayout, QLabel, QMenu, QProgressBar,
                               QPushButton, QSlider, QSpinBox, QToolButton, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from app.canvas import CandidatePreview
from app.engine_bridge import EngineBridge
from app.workspace import CAP_BYTES, AppliedChange, RequestGroup, Workspace, generators
from engine.jobs import JobEvent
from engine.project import StoredCandidate

THUMB = 96
ID_ROLE = Qt.ItemDataRole.UserRole  # a candidate item's StoredCandidate id (str)
GROUP_ROLE = Qt.ItemDataRole.UserRole + 1  # a group item's request id (str)


def thumbnail(image: np.ndarray, size: int = THUMB) -> QIcon:
    height, width = image.shape[:2]
    scale = size / max(height, width)
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else np.ascontiguousarray(image)
    qimage = QImage(small.data, small.shape[1], small.shape[0], small.strides[0], QImage.Format.Format_RGB888)
    return QIcon(QPixmap.fromImage(qimage.copy()))


class ApplyCommand(QUndoCommand):
    """One applied candidate on the document's undo stack: the workspace's record of what changed (candidate id,
    the rectangle's pixels before, the baseline), replayed through the workspace."""

    def __init__(self, workspace: Workspace, change: AppliedChange):
        super().__init__(change.text)
        self.workspace, self.change = workspace, change
        self.done = True  # the workspace already applied it; the push's redo() must not apply it again

    def redo(self) -> None:
        if self.done:
            self.done = False
            return
        self.workspace.redo_apply(self.change)

    def undo(self) -> None:
        self.workspace.undo_apply(self.change)


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
        self.workspace = Workspace(document, jobs=bridge, push_undo=self._push_apply, cap_bytes=cap_bytes)
        self.models: list = []  # engine.model_store.ModelInfo
        self.extra_choices: list[tuple[str, str]] = []
        self._scanned = False
        self.preview = CandidatePreview(self.workspace)
        if canvas is not None:
            canvas.scene().addItem(self.preview)
        self.progress = JobProgress(bridge)

        body = QWidget()
        layout = QVBoxLayout(body)
        self.controls = QWidget()  # model chooser, count, Generate: hidden where another panel has them
        controls = QHBoxLayout(self.controls)
        controls.setContentsMargins(0, 0, 0, 0)
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
        layout.addWidget(self.controls)

        self.tree = CandidateTree()
        self.tree.apply_current.connect(lambda: self.apply())
        self.tree.discard_selected.connect(lambda: self.discard())
        self.tree.setHeaderHidden(True)
        self.tree.setIconSize(self.tree.iconSize().expandedTo(QPixmap(THUMB, THUMB).size()))
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setAccessibleName("Candidates")
        self.tree.currentItemChanged.connect(lambda current, _previous: self.show_preview(
            self._candidate_id(current)))
        self.tree.itemDoubleClicked.connect(lambda item, _column: self.apply(self._candidate_id(item)))
        layout.addWidget(self.tree, 1)

        compare = QHBoxLayout()
        compare.addWidget(QLabel("Compare"))
        self.split = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=1000, value=1000)
        self.split.setAccessibleName("Before/after split")
        self.split.setToolTip("Left of the split: the candidate; right: the image as it is")
        self.split.valueChanged.connect(lambda value: self.preview.set_split(value / 1000))
        self.preview.split_dragged.connect(lambda fraction: self._sync_split(fraction))
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

        # `\\` itself is handled by the canvas (a tap toggles, holding shows the original while held); the action
        # shows the key in the View menu and toggles from there
        self.toggle_action = QAction("&Before/After\t\\", self)
        self.toggle_action.setToolTip("Toggle the previewed candidate (before/after); hold \\ to see the original "
                                      "photo while held")
        self.toggle_action.triggered.connect(self.toggle_before_after)
        self.split_action = QAction("Compare &Split", self, checkable=True)
        self.split_action.setShortcut(QKeySequence("Shift+\\"))
        self.split_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.split_action.setToolTip("Split the view: left of the divider the candidate, right of it the image as "
                                     "it is; drag the divider on the canvas")
        self.split_action.toggled.connect(self.set_split_view)
        self.addAction(self.split_action)

        # Qt signals reach the workspace through this dock's own methods: Qt disconnects them when the dock
        # goes, so a late job event never reaches a workspace whose views are gone
        bridge.changed.connect(self._job_changed)
        bridge.finished.connect(self._job_finished)
        bridge.models_listed.connect(self.set_models)
        document.reset.connect(self._document_reset)
        events = self.workspace.events
        events.reset.connect(self._rebuild)
        events.group_added.connect(self._add_group_item)
        events.group_changed.connect(self._show_group)
        events.group_removed.connect(self._remove_group_item)
        events.candidate_added.connect(self._add_item)
        events.candidate_changed.connect(self._show_candidate)
        events.candidates_removed.connect(self._remove_items)
        events.error.connect(self.error.emit)
        events.notice.connect(self._notice)
        self._rebuild()

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

    def set_controls_visible(self, visible: bool) -> None:
        """The model chooser, count and Generate; hidden in colorize mode, where the Colorize panel has its own
        (one model chooser and one Generate per mode)."""
        self.controls.setVisible(visible)

    def set_split_view(self, on: bool) -> None:
        """Compare Split: the divider at the middle (on) or out of the way (off); the slider and a drag on the
        canvas move it."""
        self._sync_split(0.5 if on else 1.0)
        self.preview.set_split(0.5 if on else 1.0)

    def _sync_split(self, fraction: float) -> None:
        self.split.blockSignals(True)
        self.split.setValue(round(fraction * 1000))
        self.split.blockSignals(False)
        self.split_action.blockSignals(True)
        self.split_action.setChecked(0 < fraction < 1)
        self.split_action.blockSignals(False)

    def set_models(self, models: list) -> None:
        """Fill the model chooser (engine.model_store.ModelInfo list); the document's mode decides the order."""
        self.models = list(models)
        self._fill_models()

    def _fill_models(self) -> None:
        current = self.model_box.currentData()
        self.model_box.clear()
        for info in generators(self.models, self.document.mode):
            self.model_box.addItem(f"{info.title} ({info.kind})", f"{info.kind}\t{info.name}")
        for title, choice in self.extra_choices:
            self.model_box.addItem(title, choice)
        self.model_box.setPlaceholderText("No models installed for this mode" if self.document.is_open
                                          else "Open a photo or a label map first")
        # data are "backend<TAB>model" strings: QVariant round-trips them exactly (tuples it does not)
        index = self.model_box.findData(current) if current is not None else -1
        self.model_box.setCurrentIndex(index if index >= 0 else min(0, self.model_box.count() - 1))

    def add_backend_choice(self, title: str, backend: str, model: str = "") -> None:
        """A choice that is not a model folder (tests, or a backend with a built-in default model)."""
        self.extra_choices.append((title, f"{backend}\t{model}"))
        self.model_box.addItem(title, f"{backend}\t{model}")
        self.model_box.setCurrentIndex(self.model_box.count() - 1)

    # ---- workspace -> widgets ------------------------------------------------------------------------------
    def _document_reset(self) -> None:
        self.workspace.reload()

    def _job_changed(self, event: JobEvent) -> None:
        self.workspace.job_changed(event)

    def _job_finished(self, event: JobEvent) -> None:
        self.workspace.job_finished(event)

    def _rebuild(self) -> None:
        """Everything changed (a new document or a loaded project): render the workspace's groups anew."""
        self.tree.clear()
        self.preview.setVisible(False)
        self.progress.slot = self.workspace.slot
        for group in self.workspace.groups.values():
            self._add_group_item(group)
            for candidate_id in group.candidate_ids:
                self._add_item(self.workspace.candidate(candidate_id))
        self._fill_models()
        self._update_size()

    def _add_group_item(self, group: RequestGroup) -> None:
        item = QTreeWidgetItem([group.title])
        item.setData(0, GROUP_ROLE, group.id)
        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
        self.tree.addTopLevelItem(item)
        item.setExpanded(True)

    def _group_item(self, group_id: str) -> QTreeWidgetItem | None:
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            if item.data(0, GROUP_ROLE) == group_id:
                return item
        return None

    def _show_group(self, group: RequestGroup) -> None:
        item = self._group_item(group.id)
        if item is None:
            return
        count = len(group.candidate_ids)
        item.setText(0, f"{group.title} · {count} candidate{'s' * (count != 1)}"
                        + (f" · {group.status}" if group.status else ""))
        item.setIcon(0, QIcon() if group.preview is None else thumbnail(group.preview, THUMB // 2))

    def _remove_group_item(self, group: RequestGroup) -> None:
        item = self._group_item(group.id)
        if item is not None:
            self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))

    def _add_item(self, stored: StoredCandidate) -> None:
        group = self.workspace.groups[stored.request_id]
        item = QTreeWidgetItem([self._label(stored)])
        item.setIcon(0, thumbnail(stored.image))
        item.setData(0, ID_ROLE, stored.id)
        item.setToolTip(0, self._tooltip(stored))
        self._group_item(group.id).addChild(item)
        self._show_group(group)
        self._update_size()

    def _show_candidate(self, stored: StoredCandidate) -> None:
        item = self._item(stored.id)
        if item is not None:
            item.setText(0, self._label(stored))

    def _remove_items(self, ids: set[str]) -> None:
        for candidate_id in ids:
            item = self._item(candidate_id)
            if item is not None:
                item.parent().removeChild(item)
        self.preview.setVisible(False)
        self._update_size()

    def _notice(self, message: str) -> None:
        self._update_size()
        self.notice.emit(message)

    def _label(self, stored: StoredCandidate) -> str:
        marks = (" · pinned" if stored.pinned else "") + (" · applied" if stored.id in self.workspace.applied else "")
        return f"seed {stored.meta.get('seed')}{marks}"

    @staticmethod
    def _tooltip(stored: StoredCandidate) -> str:
        meta = stored.meta
        params = ", ".join(f"{k}={v}" for k, v in (meta.get("params") or {}).items()) or "defaults"
        x0, y0, x1, y1 = meta.get("box", (0, 0, 0, 0))
        return (f"Model: {meta.get('model') or '(default)'} ({meta.get('backend')})\nSeed: {meta.get('seed')}\n"
                f"Parameters: {params}\nTime: {meta.get('seconds', 0):.1f} s\n"
                f"Region: {x1 - x0}×{y1 - y0} at ({x0}, {y0})\nCreated: {meta.get('created', '')}")

    def _update_size(self) -> None:
        text, over = self.workspace.size_text()
        self.size_label.setText(text)
        self.size_label.setStyleSheet("color: #e05050;" if over else "")

    # ---- widgets -> workspace ------------------------------------------------------------------------------
    def _push_apply(self, change: AppliedChange) -> None:
        self.document.undo_stack.push(ApplyCommand(self.workspace, change))

    @staticmethod
    def _candidate_id(item: QTreeWidgetItem | None) -> str | None:
        return (item.data(0, ID_ROLE) or None) if item is not None else None

    def _current_id(self) -> str | None:
        return self._candidate_id(self.tree.currentItem())

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

    def generate(self, params: dict | None = None) -> int | None:
        """Queue the chosen model on the document as it is now, in the document's mode; returns the job id
        (None when there is nothing to do, after telling the user why)."""
        choice = self.model_box.currentData()
        if choice is None:
            self.error.emit("no model for this document: import one with `sgraffito import` (see the README)")
            return None
        engine, model = choice.split("\t")
        return self.workspace.generate(engine=engine, model=model, mode=self.document.mode,
                                       k=self.samples.value(), params=params)

    def more_like_this(self, candidate_id: str | None = None) -> int | None:
        """The selected candidate's request again with the next unused seeds, added to the same group."""
        return self.workspace.more_like_this(candidate_id or self._current_id(), k=self.samples.value())

    def show_preview(self, candidate_id: str | None) -> None:
        self.workspace.preview(candidate_id)

    def toggle_before_after(self) -> None:
        """View > Before/After (`\\`): the original photo, or the result with the previewed candidate."""
        if self.canvas is not None:
            self.canvas.toggle_before()
        elif not self.preview.image.isNull():
            self.preview.set_before(not self.preview.before)

    def apply(self, candidate_id: str | None = None) -> bool:
        """Paste the candidate into the image as one undoable step, and show the result: the label overlay goes
        off (View > Toggle Labels, V, brings the previous view back)."""
        document = self.document
        if self.workspace.apply(candidate_id or self._current_id()) is None:
            return False
        if self.canvas is not None:
            self.canvas.set_before(False)
        if document.view_mode != "photo":
            document.set_view_mode("photo")
            self.notice.emit("Applied: showing the result without the label overlay (V shows the labels again, "
                             "\\ the original photo)")
        return True

    def toggle_pin(self, candidate_id: str | None = None) -> None:
        self.workspace.toggle_pin(candidate_id or self._current_id())

    def discard(self, candidate_ids: list[str] | None = None) -> int:
        if candidate_ids is None:
            candidate_ids = [self._candidate_id(item) for item in self.tree.selectedItems()]
        return self.workspace.discard(candidate_ids)

    def clear_unpinned(self) -> int:
        return self.workspace.clear_unpinned()


def install_gallery(window) -> GalleryDock:
    """Add the gallery to app.main_window.MainWindow: the dock, a Generate menu (Ctrl+Return), the status-bar
    progress, error dialogs and the model list. Idempotent: returns the existing gallery if already there."""
    if getattr(window, "gallery", None) is not None:
        return window.gallery
    from PySide6.QtWidgets import QApplication

    bridge = EngineBridge(parent=window)
    gallery = GalleryDock(window.document, bridge, window.canvas, window)
    window.gallery = gallery
    window.workspace = gallery.workspace
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
    window.actions["before_after"] = gallery.toggle_action
    window.actions["compare_split"] = gallery.split_action
    window.addAction(gallery.split_action)
    if hasattr(window, "menus"):
        window.menus["generate"] = menu
        if "view" in window.menus:  # compare lives with the other views
            view = window.menus["view"]
            view.addSeparator()
            view.addAction(gallery.toggle_action)
            view.addAction(gallery.split_action)
            view.addAction(gallery.toggleViewAction())
    QApplication.instance().aboutToQuit.connect(bridge.shutdown)
    return gallery
