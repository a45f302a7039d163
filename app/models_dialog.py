"""Help > Models…: the official models of the catalogue (engine/catalogue.json) and the installed ones; download
and import one with progress, speed, ETA and Cancel, or import a file already downloaded.

The download runs in a QThread (engine.downloads.install: HTTP, verify, unpack, strict import) and reports
through queued signals; the dialog only shows what it is told. Closing the dialog keeps a running download
going (reopen to see it); Cancel stops it at the next block and keeps the `.part` for a resume.

`install_models_menu(window)` adds the menu entry and, in the Generate area, a one-line notice with a link to
this dialog while only the demo models are installed.
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, QThread, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QFileDialog, QFrame, QHBoxLayout,
                               QHeaderView, QLabel, QProgressBar, QPushButton, QScrollArea, QSplitter, QTableWidget,
                               QTableWidgetItem, QTextBrowser, QVBoxLayout, QWidget)


class InstallThread(QThread):
    """engine.downloads.install off the UI thread; progress at most ten times a second."""

    progressed = Signal(object)  # engine.downloads.Progress
    succeeded = Signal(object)  # engine.downloads.Result
    failed = Signal(str)
    was_cancelled = Signal(str)

    def __init__(self, entry, from_path=None, parent=None):
        super().__init__(parent)
        self.entry, self.from_path = entry, from_path
        self._cancel = threading.Event()
        self._last = 0.0

    def cancel(self) -> None:
        self._cancel.set()

    def _progress(self, p) -> None:
        now = time.monotonic()
        if p.phase != "download" or now - self._last >= 0.1 or (p.total and p.done >= p.total):
            self._last = now
            self.progressed.emit(p)

    def run(self) -> None:
        from engine.downloads import install
        from engine.errors import Cancelled, SgraffitoError

        try:
            result = install(self.entry, from_path=self.from_path, progress=self._progress,
                             cancelled=self._cancel.is_set)
        except Cancelled as error:
            self.was_cancelled.emit(str(error))
        except SgraffitoError as error:
            self.failed.emit(str(error))
        except Exception as error:  # a bug must reach the user, not kill the thread silently
            self.failed.emit(f"{type(error).__name__}: {error}")
        else:
            self.succeeded.emit(result)


STATUS_LINES = 6  # room for a download's progress line and most of an offline "download it by hand" message


class ModelsDialog(QDialog):
    models_changed = Signal()  # a model was installed: model choosers should list again

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(self.tr("Models"))
        self.setObjectName("models_dialog")
        self.resize(860, 520)
        self.thread: InstallThread | None = None
        self.entries: list = []

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels([self.tr("Model"), self.tr("Engine"), self.tr("Size"),
                                              self.tr("Status")])
        self.table.setAccessibleName(self.tr("Official models"))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.currentCellChanged.connect(lambda *_: self._show_details())
        self.details = QTextBrowser()
        self.details.setOpenExternalLinks(True)
        self.details.setAccessibleName(self.tr("Model details"))
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.details)
        split.setSizes([480, 380])

        # the progress bar and the message keep their room when empty or hidden: the list does not jump when a
        # download starts or a ten-line "download it by hand" message arrives (it scrolls instead)
        self.progress = QProgressBar()
        self.progress.setAccessibleName(self.tr("Download progress"))
        policy = self.progress.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.progress.setSizePolicy(policy)
        self.progress.setVisible(False)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status_area = QScrollArea()
        self.status_area.setWidget(self.status)
        self.status_area.setWidgetResizable(True)
        self.status_area.setFrameShape(QFrame.Shape.NoFrame)
        self.status_area.setFixedHeight(self.fontMetrics().lineSpacing() * STATUS_LINES + 4)
        self.get_button = QPushButton(self.tr("&Download and Import"))
        self.get_button.setToolTip(self.tr("Download the selected model from its official source, check it and "
                                           "import it (resumes an interrupted download)"))
        self.get_button.clicked.connect(lambda: self.start())
        self.file_button = QPushButton(self.tr("Import &File…"))
        self.file_button.setToolTip(self.tr("Import the selected model from a file you already downloaded"))
        self.file_button.clicked.connect(self.choose_file)
        self.cancel_button = QPushButton(self.tr("&Cancel Download"))
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        for button in (self.get_button, self.file_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        buttons.addWidget(close)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(self.tr("Official models for Sgraffito's engines. Each is downloaded from the "
                                        "source its authors published, checked and imported; mind each "
                                        "model's licence.")))
        layout.addWidget(split, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_area)
        layout.addLayout(buttons)
        self.refresh()

    # ---- listing -------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        from engine.catalogue import entries
        from engine.downloads import installed

        current = self.current_entry()
        self.entries = entries()
        self.table.setRowCount(len(self.entries))
        for row, entry in enumerate(self.entries):
            if installed(entry.name) is not None:
                state = self.tr("installed")
            elif all(f.url for f in entry.files):
                state = self.tr("available")
            else:
                state = self.tr("download by hand")
            for column, text in enumerate((entry.name, entry.engine, entry.size_text(), state)):
                item = QTableWidgetItem(text)
                item.setToolTip(entry.title)
                self.table.setItem(row, column, item)
        row = next((i for i, e in enumerate(self.entries) if current and e.name == current.name), 0)
        if self.entries:
            self.table.selectRow(row)
        self.table.resizeColumnsToContents()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self._show_details()

    def current_entry(self):
        row = self.table.currentRow()
        return self.entries[row] if 0 <= row < len(self.entries) else None

    def select(self, name: str) -> bool:
        for row, entry in enumerate(self.entries):
            if entry.name == name:
                self.table.selectRow(row)
                return True
        return False

    def _show_details(self) -> None:
        from engine.downloads import manual_instructions

        entry = self.current_entry()
        if entry is None:
            self.details.clear()
            return
        e = html.escape

        def link(url):
            return f'<a href="{e(url)}">{e(url)}</a>'

        sources = "".join(f"<li>{e(f.name)} ({e(f'{f.size:,} bytes' if f.size else 'size unknown')}): "
                          f"{link(f.page or f.url)}</li>" for f in entry.files)
        paper = link(entry.paper_url) if entry.paper_url else ""
        self.details.setHtml(
            f"<h3>{e(entry.title)}</h3><p>{e(entry.purpose)}</p>"
            f"<p><b>{self.tr('Engine')}:</b> {e(entry.engine)} &nbsp; <b>{self.tr('Size')}:</b> "
            f"{e(entry.size_text())}</p>"
            f"<p><b>{self.tr('Licence')}:</b> {e(entry.licence)}</p>"
            f"<p><b>{self.tr('Paper')}:</b> {e(entry.paper)} {paper}</p>"
            f"<p><b>{self.tr('Source')}:</b></p><ul>{sources}</ul>"
            + (f"<p><b>{self.tr('Layout')}:</b> {e(entry.layout)}</p>" if entry.layout else "")
            + f"<p><b>{self.tr('By hand')}:</b></p><pre>{e(manual_instructions(entry))}</pre>")
        running = self.thread is not None
        self.get_button.setEnabled(not running and (all(f.url for f in entry.files) or _mirror_set()))
        self.file_button.setEnabled(not running)

    # ---- installing ----------------------------------------------------------------------------------------
    def choose_file(self) -> None:
        entry = self.current_entry()
        if entry is None:
            return
        # a file fetched by hand lands in Downloads; the process's cwd means nothing to the user
        downloads = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DownloadLocation))
        path, _ = QFileDialog.getOpenFileName(
            self, self.tr("Import %s from a downloaded file") % entry.name,
            str(downloads if downloads.is_dir() else Path.home()),
            " ".join(f"*{f.name[f.name.rfind('.'):]}" for f in entry.files if "." in f.name) or "*")
        if path:
            self.start(from_path=path)

    def start(self, entry=None, from_path=None) -> bool:
        """Download (or take `from_path`) and import `entry` (default: the selected one) in the background."""
        entry = entry or self.current_entry()
        if entry is None or self.thread is not None:
            return False
        self.thread = InstallThread(entry, from_path, self)
        self.thread.progressed.connect(self._on_progress)
        self.thread.succeeded.connect(self._on_success)
        self.thread.failed.connect(lambda message: self._on_end(message, error=True))
        self.thread.was_cancelled.connect(lambda message: self._on_end(message))
        self.thread.finished.connect(self._on_finished)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.status.setText(self.tr("Starting %s…") % entry.name)
        self.cancel_button.setEnabled(True)
        self.get_button.setEnabled(False)
        self.file_button.setEnabled(False)
        self.thread.start()
        return True

    def cancel(self) -> None:
        if self.thread is not None:
            self.thread.cancel()
            self.status.setText(self.tr("Cancelling…"))

    def _on_progress(self, p) -> None:
        if p.phase == "download" and p.total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * p.done / p.total))
        else:
            self.progress.setRange(0, 0)  # busy: size unknown, verifying, unpacking, importing
        self.status.setText(p.text())

    def _on_success(self, result) -> None:
        self._on_end(self.tr("%s is already installed.") % result.name if result.already
                     else self.tr("Installed %s in %s.") % (result.name, result.path))
        if not result.already:
            self.models_changed.emit()

    def _on_end(self, message: str, error: bool = False) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setEnabled(False)
        self.status.setStyleSheet("color: #e05050;" if error else "")
        self.status.setText(message)

    def _on_finished(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None:
            thread.deleteLater()
        self.refresh()

    def shutdown(self, wait_ms: int = 3000) -> None:
        """Cancel a running download and wait a little for its thread (application quit)."""
        if self.thread is not None:
            self.thread.cancel()
            self.thread.wait(wait_ms)


def _mirror_set() -> bool:
    import os

    return bool(os.environ.get("SGRAFFITO_MODEL_MIRROR", "").strip())


DEMO_NOTICE = ("Only the demo models are installed: they show the workflow, not the published quality. "
               '<a href="models">Get the official models…</a> &nbsp; <a href="hide">Hide</a>')


def install_models_menu(window) -> QAction:
    """Help > Models… on app.main_window.MainWindow (window.actions["models"], window.open_models_dialog) and the
    demo-only notice in the Generate area. Idempotent."""
    if "models" in window.actions:
        return window.actions["models"]
    from PySide6.QtWidgets import QApplication

    def open_dialog(name: str | None = None) -> ModelsDialog:
        dialog = getattr(window, "models_dialog", None)
        if dialog is None:
            dialog = window.models_dialog = ModelsDialog(window)
            dialog.models_changed.connect(lambda: _rescan(window))
            QApplication.instance().aboutToQuit.connect(dialog.shutdown)
        else:
            dialog.refresh()
        if name:
            dialog.select(name)
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    window.models_dialog = None
    window.open_models_dialog = open_dialog
    action = QAction(window.tr("&Models…"), window)
    action.setToolTip(window.tr("Get the official models (download, check and import)"))
    action.triggered.connect(lambda: open_dialog())
    window.addAction(action)
    window.actions["models"] = action
    menu = getattr(window, "menus", {}).get("help")
    if menu is not None:
        first = menu.actions()[0] if menu.actions() else None
        menu.insertAction(first, action) if first is not None else menu.addAction(action)
        if first is not None:
            menu.insertSeparator(first)
    gallery = getattr(window, "gallery", None)
    if gallery is not None:
        _add_demo_notice(window, gallery, open_dialog)
    return action


def _rescan(window) -> None:
    gallery = getattr(window, "gallery", None)
    if gallery is not None:
        gallery.bridge.list_models_async()


def _add_demo_notice(window, gallery, open_dialog) -> None:
    notice = QLabel(window.tr(DEMO_NOTICE))
    notice.setObjectName("demo_models_notice")
    notice.setWordWrap(True)
    notice.setTextFormat(Qt.TextFormat.RichText)
    notice.setAccessibleName(window.tr("Only demo models installed"))
    notice.setVisible(False)
    notice.dismissed = False

    def on_link(target: str) -> None:
        if target == "models":
            open_dialog()
        else:
            notice.dismissed = True
            notice.setVisible(False)

    def on_models(models: list) -> None:
        only_demo = bool(models) and all(m.source == "demo" for m in models)
        notice.setVisible(only_demo and not notice.dismissed)

    notice.linkActivated.connect(on_link)
    gallery.bridge.models_listed.connect(on_models)
    layout = gallery.widget().layout()
    layout.insertWidget(1, notice)  # under the model chooser and Generate
    gallery.demo_notice = notice
    if gallery.models:
        on_models(gallery.models)
