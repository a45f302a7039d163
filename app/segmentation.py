"""Automatic segmentation in the editor: a photo opened without a label map gets one from a segmentation model.

When a colour photo opens without a label map (every pixel unlabeled), `Segmentation` sends a mode "segment"
request for it to the window's one runtime (app.engine_bridge.bridge_for: the worker that owns the device, the
model cache). Progress shows in the status bar with a Cancel button, like Generate's; the job has its own slot
(`<doc id>:segment`), so Cancel Generation and a new Generate never cancel it, nor the reverse.

The result arrives as ONE undo step (`SegmentCommand`) that writes both label maps: the photo's map (what
Generate compares the painted labels with) and the painted labels, except where the user already painted
something (strokes made while it ran are kept). Undo restores the unlabeled maps; a failed or cancelled
segmentation changes nothing. The workspace keeps the result (`workspace.segmentation`) to fill unlabeled
pixels at Generate even after that undo, and a Generate pressed while the segmentation runs waits for it.

Tools > Segment Again segments the current image anew with the model chosen in Tools > Segmentation Model (the
installed models of the engines serving mode "segment": an imported DeepLab model is preferred over the demo
segmenter, as `sgraffito segment` does); Tools > Segment Photos When Opened turns the automatic run off.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QActionGroup, QUndoCommand

from app import settings as user_settings
from app.engine_bridge import EngineBridge, bridge_for
from app.gallery import JobProgress
from app.workspace import lacks_label_map
from engine import registry
from engine.errors import SgraffitoError
from engine.jobs import JobEvent, JobKind, JobState, Request

WHAT_TO_DO = ("The photo keeps its labels. Try another model (Tools > Segmentation Model, then Tools > Segment "
              "Again), open its label map (File > Open Label Map…), or label it yourself (Fill, the superpixel "
              "brush P and GrabCut C follow its edges) and keep that as its map (File > Keep Labels as the Photo's "
              "Map).")


def segment_kinds() -> list[str]:
    """The engines serving mode "segment", in the registry's order."""
    return [spec.kind for spec in registry.specs("segment")]


def segmenters(models: list) -> list:
    """The installed segmentation models (engine.model_store.ModelInfo), the preferred one first: imported
    DeepLab models (the network ASSET's official label maps came from), then the others by engine and name."""
    kinds = segment_kinds()
    usable = [m for m in models if m.kind in kinds]
    return sorted(usable, key=lambda m: (m.kind != "deeplab", kinds.index(m.kind), m.name))


def choice_of(info) -> str:
    return f"{info.kind}\t{info.name}"


def short_title(info) -> str:
    """"Demo segmenter" for "Demo segmenter (frozen ImageNet VGG16 + ...)": for menus and the status bar."""
    return (info.title or info.name).split(" (")[0]


class SegmentCommand(QUndoCommand):
    """A segmentation on the undo stack: the changed rectangle of both label maps before and after (arrays that
    are equal are shared, so a fresh photo keeps two crops), and the workspace's label baseline."""

    def __init__(self, document, workspace, x: int, y: int, before: tuple, after: tuple, text: str):
        super().__init__(text)
        self.document, self.workspace, self.x, self.y = document, workspace, x, y
        self.before, self.after = before, after  # (labels, original_labels) crops
        self.baseline = workspace.baseline if workspace is not None else None

    def redo(self) -> None:
        self.document.put_label_maps(self.x, self.y, *self.after)
        if self.workspace is not None:
            self.workspace.baseline = None  # Generate compares with the new map

    def undo(self) -> None:
        self.document.put_label_maps(self.x, self.y, *self.before)
        if self.workspace is not None:
            self.workspace.baseline = self.baseline


def segmentation_step(document, workspace, labels: np.ndarray, text: str) -> SegmentCommand | None:
    """The undo command that makes `labels` the photo's map, keeping what the user painted since the map it
    replaces (labels that differ from the baseline or the original map); None when nothing would change."""
    reference = workspace.baseline if workspace is not None and workspace.baseline is not None \
        else document.original_labels
    painted = document.labels != reference
    new_labels = np.where(painted, document.labels, labels).astype(np.uint16)
    new_original = labels.astype(np.uint16)
    changed = (new_labels != document.labels) | (new_original != document.original_labels)
    rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = (slice(y0, y1), slice(x0, x1))

    def pair(labels_crop: np.ndarray, original_crop: np.ndarray) -> tuple:
        if np.array_equal(labels_crop, original_crop):
            return labels_crop, labels_crop  # one array for both (a fresh photo: both unlabeled)
        return labels_crop, original_crop

    before = pair(document.labels[crop].copy(), document.original_labels[crop].copy())
    after = pair(new_labels[crop].copy(), new_original[crop].copy())
    return SegmentCommand(document, workspace, x0, y0, before, after, text)


class SegmentProgress(JobProgress):
    """The status-bar progress of the document's segmentation job, with its own Cancel."""

    def __init__(self, bridge: EngineBridge, parent=None):
        super().__init__(bridge, parent)
        self.bar.setAccessibleName("Segmentation progress")
        self.cancel_button.setToolTip("Cancel the segmentation: the photo keeps the labels it has")
        self.cancel_button.setAccessibleName("Cancel segmentation")

    def on_event(self, event: JobEvent) -> None:
        if self.slot is None or event.slot != self.slot:
            return
        running, queued = self.bridge.pending(self.slot)
        active = self.bridge.active_job()
        if active is not None and active.request.slot == self.slot:
            self.bar.setValue(round(active.fraction * 1000))
            self.stage.setText(f"Labelling the photo: {active.stage}")
        elif queued:
            self.bar.setValue(0)
            self.stage.setText("Labelling the photo: waiting for the running job")
        self.setVisible(bool(running or queued))


class Segmentation(QObject):
    finished = Signal(str)  # "done", "failed" or "cancelled", after the document (and undo stack) took it

    def __init__(self, window, bridge: EngineBridge):
        super().__init__(window)
        self.window = window
        self.document = window.document
        self.workspace = getattr(window, "workspace", None)
        self.bridge = bridge
        self.models: list | None = None  # installed segmentation models (ModelInfo), once listed
        self.job_id: int | None = None
        self.job_model = ""  # the title of the model running
        self._waiting = False  # a segmentation was asked for before the models were listed
        self._listing = False
        self.progress = SegmentProgress(bridge)
        bridge.models_listed.connect(self._models_listed)
        bridge.finished.connect(self._job_finished)
        self.document.reset.connect(self._document_reset)

    # ---- models --------------------------------------------------------------------------------------------
    def _models_listed(self, models: list) -> None:
        self._listing = False
        self.models = segmenters(models)
        self._fill_menu()
        if self._waiting:
            self._waiting = False
            self.segment()

    def chosen(self):
        """The model Segment Again uses: the user's choice if still installed, else the preferred one."""
        if not self.models:
            return None
        wanted = user_settings.segmenter()
        return next((m for m in self.models if choice_of(m) == wanted), self.models[0])

    def choose(self, choice: str) -> None:
        user_settings.set_segmenter(choice)
        self._fill_menu()

    def _fill_menu(self) -> None:
        menu = getattr(self, "menu", None)
        if menu is None:
            return
        menu.clear()
        group = QActionGroup(menu)
        current = self.chosen()
        for info in self.models or []:
            action = menu.addAction(f"{short_title(info)} ({info.name})")
            action.setToolTip(info.title)
            action.setCheckable(True)
            action.setChecked(info is current)
            action.setData(choice_of(info))
            action.triggered.connect(lambda _=False, c=choice_of(info): self.choose(c))
            group.addAction(action)
        if not self.models:
            menu.addAction("(none installed: sgraffito models get deeplab-cocostuff164k)").setEnabled(False)
        self.actions["segment_again"].setEnabled(bool(self.models) and self._can_segment())

    def _can_segment(self) -> bool:
        doc = self.document
        return doc.is_open and doc.image is not None and doc.mode == "edit"

    # ---- running -------------------------------------------------------------------------------------------
    def slot(self) -> str:
        return f"{self.document.doc_id}:segment"

    @property
    def running(self) -> bool:
        return self.job_id is not None

    def _document_reset(self) -> None:
        if self.job_id is not None:
            self.bridge.cancel(self.job_id)  # the old document's labels can no longer be used
            self.job_id = None
            self._running_changed()
        self.progress.slot = self.slot()
        self.progress.setVisible(False)
        if hasattr(self, "actions"):
            self.actions["segment_again"].setEnabled(bool(self.models) and self._can_segment())
        if self._can_segment() and lacks_label_map(self.document) and user_settings.segment_on_open():
            self.segment()

    def segment(self) -> int | None:
        """Segment the document's image with the chosen model; returns the job id (None when it cannot, after
        saying why). A segmentation already running for this document is replaced."""
        if not self._can_segment():
            return None
        if self.models is None:  # listing the models imports torch: off the UI thread, then back here
            self._waiting = True
            if not self._listing:
                self._listing = True
                self.bridge.list_models_async()
            return None
        info = self.chosen()
        if info is None:
            self._status("No segmentation model is installed, so the photo stays unlabeled: "
                         "`sgraffito models get deeplab-cocostuff164k`, or label it with Fill, the superpixel brush "
                         "(P) and GrabCut (C)")
            return None
        doc = self.document
        try:
            request = Request(backend=info.kind, model=info.name, mode="segment", photo=doc.image,
                              params={"label_set": doc.label_set.name}, label_set=doc.label_set.name,
                              slot=self.slot())
            # its own slot: supersedes only an older segmentation of this document, never a generation
            job_id = self.bridge.submit(request, kind=JobKind.GENERATE, supersede=True)
        except SgraffitoError as error:
            self.window.show_error(f"Cannot segment the photo: {error}\n\n{WHAT_TO_DO}")
            return None
        self.job_id = job_id
        self.job_model = short_title(info)
        self._running_changed()
        if self.workspace is not None:
            self.workspace.segmenting = True
        self.progress.slot = self.slot()
        self.progress.setVisible(True)
        self.progress.stage.setText(f"Labelling the photo: queued ({self.job_model})")
        self._status(f"Labelling the photo with {self.job_model}… (Cancel in the status bar)")
        return job_id

    def _running_changed(self) -> None:
        actions = getattr(self, "actions", None)
        if actions is not None:
            actions["cancel_segmentation"].setEnabled(self.job_id is not None)

    def cancel(self) -> bool:
        return self.job_id is not None and self.bridge.cancel(self.job_id)

    def _job_finished(self, event: JobEvent) -> None:
        if event.job_id != self.job_id:
            return  # not ours, or superseded by a newer segmentation
        self.job_id = None
        self._running_changed()
        self.progress.setVisible(False)
        labels, outcome, error = None, event.state.value, event.error or "the segmentation failed"
        if event.state is JobState.DONE:
            try:
                labels = self._labels(event)
            except SgraffitoError as problem:
                outcome, error = "failed", str(problem)
            else:
                self._apply(labels, dict(event.candidates[0].info.get("labels") or {}))
        waited = self.workspace is not None and self.workspace.deferred is not None
        if outcome == "failed":
            if waited:
                error += "\n\nThe Generate that waited for it did not start."
            self.window.show_error(f"Automatic segmentation failed: {error}\n\n{WHAT_TO_DO}")
        elif outcome == "cancelled":
            self._status("Segmentation cancelled: the photo keeps its labels"
                         + (", and the Generate that waited for it did not start" if waited else "")
                         + ". Tools > Segment Again labels it later.")
        if self.workspace is not None:
            self.workspace.segmentation_done(labels)  # runs the Generate that waited for it
        self.finished.emit(outcome)

    def _labels(self, event: JobEvent) -> np.ndarray:
        from engine.errors import InputError
        from engine.labels import load_label_set
        from engine.pipelines.segment import candidate_labels

        doc = self.document
        (candidate,) = event.candidates
        name = candidate.info.get("label_set") or doc.label_set.name
        if name != doc.label_set.name:
            raise InputError(f"the segmentation is in label set {name}, the document now uses "
                             f"{doc.label_set.name}")
        labels = candidate_labels(candidate, load_label_set(name))
        width, height = doc.size
        if labels.shape != (height, width):
            raise InputError(f"the segmentation is {labels.shape[1]}x{labels.shape[0]}, the photo {width}x{height}")
        return labels

    def _apply(self, labels: np.ndarray, shares: dict) -> None:
        doc = self.document
        command = segmentation_step(doc, self.workspace, labels, f"Segment the photo ({self.job_model})")
        if command is not None:
            doc.undo_stack.push(command)
        top = sorted(shares.items(), key=lambda item: -item[1])[:3]  # the backend counted them
        found = ", ".join(f"{name} {share:.0%}" for name, share in top)
        self._status(f"Labelled by {self.job_model}: {found} (Ctrl+Z undoes it). Refine with the superpixel "
                     f"brush P or GrabCut C, then File > Keep Labels as the Photo's Map")

    def _status(self, text: str) -> None:
        self.window.statusBar().showMessage(text, 15_000)


def install_segmentation(window) -> Segmentation:
    """Add automatic segmentation to the main window: Tools > Segment Again, Segmentation Model ▸, Segment Photos
    When Opened, Cancel Segmentation, and the status-bar progress. After install_gallery (its workspace)."""
    if getattr(window, "segmentation", None) is not None:
        return window.segmentation
    bridge = bridge_for(window)
    segmentation = Segmentation(window, bridge)
    window.segmentation = segmentation
    window.statusBar().addPermanentWidget(segmentation.progress)
    actions = {}

    def action(name, text, slot, tip, checkable=False):
        item = QAction(text, window)
        item.setCheckable(checkable)
        item.setToolTip(tip)
        item.setStatusTip(tip)
        item.triggered.connect(slot)
        window.addAction(item)
        window.actions[name] = actions[name] = item
        return item

    again = action("segment_again", "&Segment Again", lambda: segmentation.segment(),
                   "Label the whole photo automatically with the chosen segmentation model (one undo step; what "
                   "you painted since stays)")
    again.setEnabled(False)
    automatic = action("segment_on_open", "Segment Photos When &Opened", user_settings.set_segment_on_open,
                       "Label a photo opened without a label map automatically", checkable=True)
    automatic.setChecked(user_settings.segment_on_open())
    action("cancel_segmentation", "Cancel Se&gmentation", lambda: segmentation.cancel(),
           "Stop the running segmentation: the photo keeps the labels it has")
    segmentation.actions = actions
    actions["cancel_segmentation"].setEnabled(False)
    tools = window.menus["tools"]
    tools.addSeparator()
    tools.addAction(again)
    segmentation.menu = tools.addMenu("Segmentation &Model")
    window.menus["segmentation_model"] = segmentation.menu
    tools.addAction(automatic)
    tools.addAction(actions["cancel_segmentation"])
    segmentation._fill_menu()
    if window.document.is_open:
        segmentation._document_reset()
    return segmentation
