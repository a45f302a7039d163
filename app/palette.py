"""The label palette dock: the active label set, searchable, with colour swatches and recently used labels."""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import QCoreApplication, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDockWidget, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QVBoxLayout, QWidget)

from app.document import Document
from engine.errors import SgraffitoError
from engine.labels import DEFAULT_SUBSET, available_sets, load_label_set

ID_ROLE = Qt.ItemDataRole.UserRole
RECENT_ROWS = 4  # the Recent section's height in rows where the window has room (one row at the least)


def swatch(color: tuple[int, int, int], size: int = 16) -> QIcon:
    """A colour square with a mid-grey rim: black (unlabeled) stays visible on a dark list, white on a light one."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(128, 128, 128))
    painter = QPainter(pixmap)
    painter.fillRect(1, 1, size - 2, size - 2, QColor(*color))
    painter.end()
    return QIcon(pixmap)


class PaletteDock(QDockWidget):
    error = Signal(str)  # switching to a set that lacks ids of the open map

    def __init__(self, document: Document, parent=None):
        super().__init__(QCoreApplication.translate("PaletteDock", "Labels"), parent)
        self.setObjectName("palette")
        self.document = document
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(4, 4, 4, 4)

        self.set_combo = QComboBox()
        self.set_combo.setAccessibleName(self.tr("Label set"))
        for name in available_sets():
            self.set_combo.addItem(load_label_set(name).title, name)
        self.set_combo.activated.connect(self._set_chosen)
        # long set titles must not widen the dock: the full title is in the popup
        self.set_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.set_combo.setMinimumContentsLength(16)
        self.set_combo.currentIndexChanged.connect(lambda i: self.set_combo.setToolTip(self.set_combo.itemText(i)))
        self.subset_check = QCheckBox(self.tr("Landscape labels only"))
        self.subset_check.setChecked(True)
        self.subset_check.toggled.connect(self.refresh)
        self.search = QLineEdit()
        self.search.setPlaceholderText(self.tr("Search labels…"))
        self.search.setClearButtonEnabled(True)
        self.search.setAccessibleName(self.tr("Search labels"))
        self.search.textChanged.connect(self.refresh)
        self.search.returnPressed.connect(self._pick_first)
        self.recent = QListWidget()
        self.recent.setAccessibleName(self.tr("Recently used labels"))
        self.labels = QListWidget()
        self.labels.setAccessibleName(self.tr("Labels"))
        for widget in (self.recent, self.labels):
            widget.itemClicked.connect(self._item_chosen)
            widget.itemActivated.connect(self._item_chosen)
        self.active = QLabel()

        layout.addWidget(self.set_combo)
        layout.addWidget(self.subset_check)
        layout.addWidget(self.search)
        self.recent_title = QLabel(self.tr("Recent"))
        layout.addWidget(self.recent_title)
        layout.addWidget(self.recent)
        layout.addWidget(QLabel(self.tr("All")))
        layout.addWidget(self.labels, 1)
        layout.addWidget(self.active)
        self.setWidget(body)

        self.present: list[int] = []  # ids used in the open label maps
        document.reset.connect(self._document_reset)
        document.original_changed.connect(self._original_changed)  # a segmentation arrived
        document.label_set_changed.connect(self._label_set_changed)
        document.recent_labels_changed.connect(self.refresh_recent)
        document.active_label_changed.connect(self._active_changed)
        self._label_set_changed()

    def _document_reset(self) -> None:
        doc = self.document
        self.present = []
        if doc.is_open:
            # a 16-bit histogram in OpenCV: ~40 ms on 24 MP, where np.bincount needs a 192 MB int64 copy
            counts = cv2.calcHist([doc.original_labels], [0], None, [65536], [0, 65536])[:, 0]
            self.present = [int(i) for i in np.nonzero(counts)[0] if i != doc.label_set.unlabeled]
        self.refresh()

    def _original_changed(self, _rect) -> None:
        self._document_reset()  # the labels present in the photo's map: a segmentation brings new ones

    def _label_set_changed(self) -> None:
        label_set = self.document.label_set
        index = self.set_combo.findData(label_set.name)
        if index >= 0:
            self.set_combo.setCurrentIndex(index)
        self.subset_check.setVisible(DEFAULT_SUBSET in label_set.subsets)
        self.refresh()
        self.refresh_recent()
        self._active_changed(self.document.active_label)

    def _set_chosen(self, index: int) -> None:
        name = self.set_combo.itemData(index)
        if name == self.document.label_set.name:
            return
        try:
            self.document.set_label_set(load_label_set(name))
        except SgraffitoError as problem:
            self._label_set_changed()  # back to the set in use
            self.error.emit(str(problem))

    def _entry(self, label_id: int) -> QListWidgetItem:
        label_set = self.document.label_set
        if label_id == label_set.unlabeled:
            item = QListWidgetItem(swatch((0, 0, 0)), self.tr("unlabeled  ({id})").format(id=label_id))
            item.setToolTip(self.tr("Clears the label: the overlay shows the photo there"))
        else:
            label = label_set.by_id[label_id]
            item = QListWidgetItem(swatch(label.color), f"{label.name}  ({label.id})")
            item.setToolTip(self.tr("{name}: id {id}, colour {colour}").format(
                name=label.name, id=label.id, colour="#%02x%02x%02x" % label.color))
        item.setData(ID_ROLE, label_id)
        return item

    def visible_ids(self) -> list[int]:
        label_set = self.document.label_set
        subset = label_set.subsets.get(DEFAULT_SUBSET)
        if subset and self.subset_check.isChecked():
            # the subset, plus whatever the open map already uses (a building in a landscape)
            ids = [i for i in subset if i in label_set.by_id]
            ids += [i for i in self.present if i not in subset and i in label_set.by_id]
        else:
            ids = [label.id for label in label_set.labels if label.id != label_set.unlabeled]
        ids.append(label_set.unlabeled)  # last: painting "unlabeled" clears labels
        needle = self.search.text().strip().lower()
        if needle:
            ids = [i for i in ids if needle in label_set.name_of(i).lower() or needle == str(i)]
        return ids

    def refresh(self) -> None:
        self.labels.clear()
        for label_id in self.visible_ids():
            self.labels.addItem(self._entry(label_id))
        self._select(self.document.active_label)

    def preferred_height(self) -> int:
        """The panel's height with the Recent section at its full RECENT_ROWS rows and the label list at its least."""
        return self.minimumSizeHint().height() + self.recent.maximumHeight() - self.recent.minimumHeight()

    def refresh_recent(self) -> None:
        """The "Recent" section's height does not depend on what it lists (RECENT_ROWS rows where the window has
        room, a placeholder while empty): the label list below it never moves under the cursor when the first label
        is painted. It gives up rows before the label list does on a short screen."""
        self.recent.clear()
        for label_id in self.document.recent_labels:
            if label_id in self.document.label_set.by_id:
                self.recent.addItem(self._entry(label_id))
        if not self.recent.count():
            placeholder = QListWidgetItem(self.tr("(labels you paint with appear here)"))
            placeholder.setFlags(Qt.ItemFlag.NoItemFlags)
            self.recent.addItem(placeholder)
        row = max(self.recent.sizeHintForRow(0), self.fontMetrics().height() + 4)
        frame = 2 * self.recent.frameWidth() + 2
        self.recent.setMinimumHeight(row + frame)
        self.recent.setMaximumHeight(RECENT_ROWS * row + frame)

    def _select(self, label_id: int) -> None:
        for widget in (self.labels, self.recent):
            widget.blockSignals(True)
            widget.clearSelection()
            for row in range(widget.count()):
                if widget.item(row).data(ID_ROLE) == label_id:
                    widget.setCurrentRow(row)
                    break
            widget.blockSignals(False)

    def _active_changed(self, label_id: int) -> None:
        self._select(label_id)
        name = self.document.label_set.name_of(label_id)
        self.active.setText(self.tr("Painting: <b>{name}</b> ({id})").format(name=name, id=label_id))

    def _item_chosen(self, item: QListWidgetItem) -> None:
        self.document.set_active_label(item.data(ID_ROLE))

    def _pick_first(self) -> None:
        """Enter in the search: the first match becomes the active label, and the keys go back to the editor
        (B, G, [ ] ... pick tools again instead of typing into the search)."""
        if self.labels.count():
            self._item_chosen(self.labels.item(0))
            self.search.clearFocus()
