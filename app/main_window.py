"""The main window: canvas in the middle, palette dock, menus and toolbars built in one place.

Other parts of the app extend it rather than subclass it: `window.menus["file"|"edit"|"view"|"tools"]`,
`window.actions[name]` and `window.toolbars["tools"|"options"]` hold what `_build_*` made, `addDockWidget` and
`statusBar()` are free for more docks and progress widgets, and everything that holds data lives in
`window.document` (with `window.undo_stack` = its QUndoStack) and its generation state in `window.workspace`
(app.workspace, Qt-free): applying a candidate is `window.workspace.apply(candidate_id)`, one undo step.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PySide6.QtCore import QT_TRANSLATE_NOOP, QCoreApplication, QEvent, QStandardPaths, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (QAbstractSpinBox, QApplication, QCheckBox, QComboBox, QFileDialog, QInputDialog,
                               QLabel, QLineEdit, QMainWindow, QMenu, QMessageBox, QPlainTextEdit, QSlider, QSpinBox,
                               QTextEdit, QToolBar, QTreeWidgetItemIterator, QVBoxLayout, QWidget)

from app import files
from app import settings as user_settings
from app.canvas import Canvas
from app.colorize import install_colorize
from app.document import VIEW_MODES, Document, describe
from app.gallery import ID_ROLE as CANDIDATE_ID
from app.gallery import install_gallery
from app.gpu_hint import CudaHint, cuda_hint
from app.gpu_hint import NOTICE as CUDA_NOTICE
from app.hints import HintTool
from app.live_preview import install_live_preview
from app.models_dialog import install_models_menu
from app.palette import PaletteDock
from app.segmentation import install_segmentation
from app.theme import CANVAS, Theme
from app.tools import MAX_RADIUS, MIN_RADIUS, TOOLS, ToolSettings
from engine.errors import SgraffitoError
from engine.imageio import is_label_map_export, looks_like_id_map
from engine.labels import LabelSet
from engine.paths import APP_NAME

AUTOSAVE_MS = 60_000
UNDO_LIMIT = 100  # steps, as napari; a global fill of a 24-MP map alone keeps 96 MB of patches
# user-visible texts defined outside a method are marked for lupdate here and translated where they are shown
PHOTO_FILTER = QT_TRANSLATE_NOOP("MainWindow", "Photos (*.jpg *.jpeg *.png *.tif *.tiff *.webp *.bmp)")
OPEN_FILTER = QT_TRANSLATE_NOOP("MainWindow", "Photos and projects (*.sgraffito *.jpg *.jpeg *.png *.tif *.tiff "
                                              "*.webp *.bmp);;Photos (*.jpg *.jpeg *.png *.tif *.tiff *.webp *.bmp)")
PROJECT_FILTER = QT_TRANSLATE_NOOP("MainWindow", "Sgraffito projects (*.sgraffito)")
LABEL_FILTER = QT_TRANSLATE_NOOP("MainWindow", "Label maps (*.png)")
EXPORT_FILTER = QT_TRANSLATE_NOOP("MainWindow", "PNG (*.png);;JPEG (*.jpg *.jpeg);;TIFF (*.tif *.tiff);;WebP (*.webp)")
VIEW_TITLES = {"both": QT_TRANSLATE_NOOP("MainWindow", "Photo and labels"),
               "photo": QT_TRANSLATE_NOOP("MainWindow", "Photo"), "labels": QT_TRANSLATE_NOOP("MainWindow", "Labels"),
               "outline": QT_TRANSLATE_NOOP("MainWindow", "Outline of edits")}
MODE_HINTS = {
    "colorize": QT_TRANSLATE_NOOP("MainWindow", "Grayscale photo: colorize mode. The Colour hint tool (H) drops "
                                                "colour hints; Colorize (Ctrl+Return) samples colourings."),
    "translate": QT_TRANSLATE_NOOP("MainWindow", "Label map only: translation mode. Paint the map; a model renders a "
                                                 "photo from it."),
}


DEFAULT_TOOL = {"colorize": "hint"}  # the tool a new document of that mode starts with; else the brush
MODE_TOOLS = {"colorize": ("hint",)}  # modes with their own tools: only these are enabled there
LABEL_VIEWS = ("both", "labels", "outline")  # views that show the label map (V toggles back to the last one)


def tool_text(text: str) -> str:
    """A tool's title or hint (marked in app/tools.py) in the user's language."""
    return QCoreApplication.translate("tools", text)


class MainWindow(QMainWindow):
    def __init__(self):
        super().__init__()
        self.document = Document(self)
        self.undo_stack = self.document.undo_stack
        self.undo_stack.setUndoLimit(UNDO_LIMIT)
        self.settings = ToolSettings()
        self.canvas = Canvas(self.document)
        self.canvas.setAccessibleName(self.tr("Image canvas"))
        self.canvas.setAccessibleDescription(self.tr("The photo and its label map; paint with the mouse or a tablet"))
        self.tools = {cls.name: cls(self.document, self.canvas, self.settings)
                      for cls in (*TOOLS, HintTool)}
        self.actions: dict[str, QAction] = {}
        self.menus: dict[str, QMenu] = {}
        self.theme = Theme(QApplication.instance(), self)
        self.theme.changed.connect(self._theme_changed)
        self.gpu_hint = CudaHint(self)
        self.gpu_hint.found.connect(self._gpu_hint_found)

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background: #3d3a26; color: #f2e7b6; padding: 6px;")
        self.banner.hide()
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.banner)
        layout.addWidget(self.canvas, 1)
        self.setCentralWidget(central)

        self.palette = PaletteDock(self.document, self)
        self.palette.error.connect(self.show_error)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.palette)

        self._build_actions()
        self._build_menus()
        self._build_toolbars()
        self._build_status_bar()
        self.theme.set_choice(user_settings.theme())
        self.actions[f"theme_{self.theme.choice}"].setChecked(True)

        self.autosave_job: Future | None = None
        self._autosaved: tuple | None = None  # what the last autosave wrote: doc id, revision, list lengths
        self._autosave_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autosave")
        self.autosave_timer = QTimer(self, interval=AUTOSAVE_MS)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start()

        self.document.reset.connect(self._document_reset)
        self.document.dirty_changed.connect(self._update_title)
        self.document.path_changed.connect(self._update_title)
        self.document.view_changed.connect(self._view_changed)
        self.document.label_set_changed.connect(lambda: user_settings.set_label_set(self.document.label_set.name))
        self.canvas.hovered.connect(self._hovered)
        self.canvas.message.connect(lambda text: self.statusBar().showMessage(text, 6000))
        self.canvas.left.connect(lambda: self.hover_label.setText(""))
        self.canvas.zoom_changed.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f} %"))
        self.setAcceptDrops(True)
        self._label_view = "both"  # the last view showing labels: View > Toggle Labels (V) returns to it
        QApplication.instance().installEventFilter(self)  # `\\` down/up anywhere in this window: compare
        self.select_tool("brush")
        self._update_title()
        self._update_enabled()
        install_gallery(self)  # candidates dock, Generate menu (Ctrl+Return), status-bar progress and Cancel
        install_colorize(self)  # the Colorize panel (shown for grayscale documents) with the gallery
        self.live_preview = install_live_preview(self)  # View > Live Preview (ASAPNet), on for label maps
        install_segmentation(self)  # a photo without a label map is labelled by the runtime; Tools > Segment Again
        # the candidates get the room the label list does not need (several thumbnails, not one); share_dock_height
        # makes it exact once the window has its size
        self.resizeDocks([self.palette, self.gallery], [1, 3], Qt.Orientation.Vertical)
        install_models_menu(self)  # Help > Models… (official models) and the demo-only notice in the Generate area
        self.menuBar().addAction(self.menus["help"].menuAction())  # Help stays last, after the panels' menus

    def share_dock_height(self) -> None:
        """The label panel gets its full Recent section and the candidates the rest (several thumbnails, not one);
        on a short window the Recent section gives up rows first. For a window shown at its size (no saved layout)."""
        total = self.palette.height() + self.gallery.height()
        need = self.palette.preferred_height()
        self.resizeDocks([self.palette, self.gallery], [need, max(need, total - need)], Qt.Orientation.Vertical)

    # ---- building ------------------------------------------------------------------------------------------
    def _action(self, name: str, text: str, slot, shortcuts=(), checkable: bool = False) -> QAction:
        action = QAction(text, self)
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work while the menus are closed and in every child widget
        self.actions[name] = action
        return action

    def _build_actions(self) -> None:
        a = self._action
        a("open", self.tr("&Open…"), lambda: self.open_dialog(), [QKeySequence.StandardKey.Open])
        a("open_labels", self.tr("Open &Label Map…"), lambda: self.open_label_map(), ["Ctrl+Shift+O"])
        a("new_from_labels", self.tr("&New from Label Map…"), lambda: self.new_from_label_map(), ["Ctrl+N"])
        a("keep_labels", self.tr("&Keep Labels as the Photo's Map"), lambda: self.keep_labels_as_map()).setToolTip(
            self.tr("The labels as painted now describe the photo: the starting point the next edit is compared "
                    "with (for a photo opened without a label map)"))
        a("save", self.tr("&Save"), lambda: self.save(), [QKeySequence.StandardKey.Save])
        a("save_as", self.tr("Save &As…"), lambda: self.save_as(), ["Ctrl+Shift+S"])
        a("export_image", self.tr("&Export Image…"), lambda: self.export_image(), ["Ctrl+E"])
        a("export_labels", self.tr("Export Label &Map…"), lambda: self.export_label_map(), ["Ctrl+Shift+E"])
        a("quit", self.tr("&Quit"), self.close, ["Ctrl+Q"])

        undo = self.undo_stack.createUndoAction(self, self.tr("&Undo"))
        undo.setShortcuts([QKeySequence("Ctrl+Z")])
        redo = self.undo_stack.createRedoAction(self, self.tr("&Redo"))
        redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        for name, action in (("undo", undo), ("redo", redo)):
            self.addAction(action)
            self.actions[name] = action

        a("zoom_in", self.tr("Zoom &In"), self.canvas.zoom_in, ["+", "=", "Ctrl++"])
        a("zoom_out", self.tr("Zoom &Out"), self.canvas.zoom_out, ["-", "Ctrl+-"])
        a("fit", self.tr("&Fit"), self.canvas.fit, ["0"])
        a("actual_size", self.tr("&100 %"), self.canvas.actual_size, ["1"])
        self.view_group = QActionGroup(self)
        for number, mode in enumerate(VIEW_MODES, 1):
            action = a(f"view_{mode}", self.tr(VIEW_TITLES[mode]),
                       lambda _=False, m=mode: self.document.set_view_mode(m), [f"Ctrl+{number}"], checkable=True)
            self.view_group.addAction(action)
        a("toggle_labels", self.tr("Toggle &Labels"), self.toggle_labels, ["V"]).setToolTip(
            self.tr("The photo alone, or back to the last view with the label map (after Apply the overlay is off)"))

        self.tool_group = QActionGroup(self)
        for tool in self.tools.values():
            title = tool_text(tool.title)
            action = a(f"tool_{tool.name}", f"{title}\t{tool.shortcut}",
                       lambda _=False, n=tool.name: self.select_tool(n), [tool.shortcut], checkable=True)
            action.setToolTip(f"{title} ({tool.shortcut}): {tool_text(tool.status_hint)}")
            action.setIconText(title)
            self.tool_group.addAction(action)
        a("find_label", self.tr("&Find Label…"), self.find_label, [QKeySequence.StandardKey.Find])
        a("focus_candidates", self.tr("Go to &Candidates"), self.focus_candidates, ["Ctrl+J"])
        a("brush_smaller", self.tr("Smaller Brush"), lambda: self.settings.grow(1 / 1.2), ["["])
        a("brush_larger", self.tr("Larger Brush"), lambda: self.settings.grow(1.2), ["]"])
        a("shortcuts", self.tr("&Keyboard Shortcuts"), self.show_shortcuts, ["F1"])
        a("about", self.tr("&About Sgraffito"), self.show_about)
        self.theme_group = QActionGroup(self)
        for choice, title in (("system", self.tr("&System")), ("light", self.tr("&Light")),
                              ("dark", self.tr("&Dark"))):
            self.theme_group.addAction(a(f"theme_{choice}", title, lambda _=False, c=choice: self.set_theme(c),
                                         checkable=True))
        self.device_group = QActionGroup(self)
        for choice, title in (("auto", self.tr("&Automatic (GPU if available)")), ("cpu", self.tr("&CPU")),
                              ("cuda", self.tr("CUDA &GPU"))):
            self.device_group.addAction(a(f"device_{choice}", title, lambda _=False, c=choice: self.set_device(c),
                                          checkable=True))
        self.actions[f"device_{user_settings.device()}"].setChecked(True)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        layout = {
            "file": (self.tr("&File"), ["open", "open_labels", "keep_labels", "new_from_labels", None, "save",
                                        "save_as", None, "export_image", "export_labels", None, "quit"]),
            "edit": (self.tr("&Edit"), ["undo", "redo"]),
            "view": (self.tr("&View"), ["zoom_in", "zoom_out", "fit", "actual_size", None]
                     + [f"view_{m}" for m in VIEW_MODES]),
            "tools": (self.tr("&Tools"), [f"tool_{n}" for n in self.tools] + [None, "brush_smaller", "brush_larger", None,
                                                                      "find_label", "focus_candidates"]),
            "help": (self.tr("&Help"), ["shortcuts", "about"]),
        }
        for key, (title, names) in layout.items():
            menu = bar.addMenu(title)
            for name in names:
                menu.addSeparator() if name is None else menu.addAction(self.actions[name])
            self.menus[key] = menu
        self.menus["recent"] = recent = QMenu(self.tr("Open &Recent"), self)
        self.menus["file"].insertMenu(self.actions["open_labels"], recent)
        recent.aboutToShow.connect(self._fill_recent)
        self.menus["view"].addAction(self.actions["toggle_labels"])
        self.menus["view"].addSeparator()
        self.palette.toggleViewAction().setText(self.tr("Labels Panel"))
        self.menus["view"].addAction(self.palette.toggleViewAction())
        self.menus["theme"] = theme = self.menus["view"].addMenu(self.tr("&Theme"))
        theme.addActions(self.theme_group.actions())
        self.menus["edit"].addSeparator()
        self.menus["device"] = device = self.menus["edit"].addMenu(self.tr("Processing &Device"))
        device.addActions(self.device_group.actions())

    def _build_toolbars(self) -> None:
        tools = QToolBar(self.tr("Tools"), self)
        tools.setObjectName("tools")
        tools.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for name in self.tools:
            tools.addAction(self.actions[f"tool_{name}"])
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, tools)

        options = QToolBar(self.tr("Tool options"), self)
        options.setObjectName("tool_options")
        self.size_spin = QSpinBox()
        self.size_spin.setRange(MIN_RADIUS, MAX_RADIUS)
        self.size_spin.setSuffix(self.tr(" px"))
        self.size_spin.setPrefix(self.tr("radius "))
        self.size_spin.setAccessibleName(self.tr("Brush radius"))
        self.size_spin.setValue(self.settings.radius)
        self.size_spin.valueChanged.connect(self.settings.set_radius)
        self.shape_combo = QComboBox()
        self.shape_combo.addItems([self.tr("round"), self.tr("square")])
        self.shape_combo.setAccessibleName(self.tr("Brush shape"))
        self.shape_combo.currentIndexChanged.connect(lambda i: self.settings.set_square(i == 1))
        self.global_check = QCheckBox(self.tr("Global fill"))
        self.global_check.setToolTip(self.tr("Fill replaces the clicked label everywhere (Shift+click does it once)"))
        self.global_check.toggled.connect(self.settings.set_global_fill)
        self.only_check = QCheckBox(self.tr("Only unlabeled"))
        self.only_check.setToolTip(self.tr("Brush, superpixel, lasso, rectangle and GrabCut keep pixels that have "
                                           "a label"))
        self.only_check.toggled.connect(self.settings.set_only_unlabeled)
        self.settings.changed.connect(self._settings_changed)
        self.view_combo = QComboBox()
        self.view_combo.setAccessibleName(self.tr("View mode"))
        for mode in VIEW_MODES:
            self.view_combo.addItem(self.tr(VIEW_TITLES[mode]), mode)
        self.view_combo.activated.connect(lambda i: self.document.set_view_mode(self.view_combo.itemData(i)))
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setFixedWidth(120)
        self.opacity_slider.setAccessibleName(self.tr("Label overlay opacity"))
        self.opacity_slider.setValue(round(self.document.overlay_opacity * 100))
        self.opacity_slider.valueChanged.connect(lambda v: self.document.set_overlay_opacity(v / 100))
        for widget in (self.size_spin, self.shape_combo, self.global_check, self.only_check):
            options.addWidget(widget)
        options.addSeparator()
        options.addWidget(QLabel(self.tr(" View ")))
        options.addWidget(self.view_combo)
        options.addWidget(QLabel(self.tr(" Overlay ")))
        options.addWidget(self.opacity_slider)
        # the tools on one row, their options and the view on the next: both fit a 1280-px window, and only
        # a narrower one moves the last entries into the toolbar's » menu
        self.addToolBarBreak(Qt.ToolBarArea.TopToolBarArea)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, options)
        self.toolbars = {"tools": tools, "options": options}

    def _build_status_bar(self) -> None:
        self.hover_label = QLabel()
        self.zoom_label = QLabel()
        self.size_label = QLabel()
        bar = self.statusBar()
        # permanent widgets: temporary messages (tool hints, "Saved ...") appear beside them, never over them
        bar.addPermanentWidget(self.hover_label)
        bar.addPermanentWidget(self.size_label)
        bar.addPermanentWidget(self.zoom_label)

    def _fill_recent(self) -> None:
        menu = self.menus["recent"]
        menu.clear()
        for path in user_settings.recent_files():
            menu.addAction(path.name, lambda p=path: self.open_path(p)).setToolTip(str(path))
        if menu.isEmpty():
            menu.addAction(self.tr("(none)")).setEnabled(False)

    def shortcut_table(self) -> list[tuple[str, str]]:
        rows = [(action.text().split("\t")[0].replace("&", "").rstrip("…"),
                 ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()))
                for action in self.actions.values() if action.shortcuts()]
        return rows + [(self.tr("Before/After: the original photo or the result"), "\\"),
                       (self.tr("Show the original photo while held"), self.tr("hold \\")),
                       (self.tr("Move the compare divider"), self.tr("drag it on the canvas (Compare Split)")),
                       (self.tr("Pan"), self.tr("Space+drag, middle-drag")),
                       (self.tr("Zoom around the cursor"), self.tr("mouse wheel")),
                       (self.tr("Pick the label under the cursor"), self.tr("right-click")),
                       (self.tr("Fill everywhere"), self.tr("Shift+click with Fill")),
                       (self.tr("GrabCut: mark object / background"), self.tr("Shift+drag / Ctrl+drag"))]

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td>{name}</td><td><b>{keys}</b></td></tr>" for name, keys in self.shortcut_table())
        box = QMessageBox(self)
        box.setWindowTitle(self.tr("Keyboard shortcuts"))
        box.setText(f"<table cellspacing='4'>{rows}</table>")
        box.show()

    def find_label(self) -> None:
        """Keyboard path to the palette: type part of a name, Enter makes the first match the active label."""
        self.palette.show()
        self.palette.raise_()
        self.palette.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.palette.search.selectAll()

    def focus_candidates(self) -> None:
        """Keyboard path to the gallery: arrows preview candidates, Enter applies one."""
        gallery = getattr(self, "gallery", None)
        if gallery is None:
            self.statusBar().showMessage(self.tr("No candidate gallery in this window"), 4000)
            return
        gallery.show()
        gallery.raise_()
        tree = gallery.tree
        tree.setFocus(Qt.FocusReason.ShortcutFocusReason)
        if tree.currentItem() is None:
            ids = set(gallery.candidate_ids())
            items = QTreeWidgetItemIterator(tree)
            while items.value() is not None and items.value().data(0, CANDIDATE_ID) not in ids:
                items += 1
            if items.value() is not None:
                tree.setCurrentItem(items.value())

    def show_about(self) -> None:
        from engine import __version__

        hint = self.gpu_hint.text or cuda_hint()  # imports torch only when an NVIDIA GPU is present
        device = self.actions[f"device_{user_settings.device()}"].text().replace("&", "")
        text = (f"<h3>{APP_NAME} {__version__}</h3><p>"
                + self.tr("Semantic image editing: paint a photo's label map, generate candidates, blend the chosen "
                          "one back.") + "</p><p>" + self.tr("Processing device: {device}").format(device=device)
                + "</p>")
        if hint:
            text += f"<p>{hint}</p>"
        box = QMessageBox(self)
        box.setWindowTitle(self.tr("About {app}").format(app=APP_NAME))
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(text)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # the pip command can be copied
        box.show()

    def set_theme(self, choice: str) -> None:
        user_settings.set_theme(choice)
        self.theme.set_choice(choice)
        self.actions[f"theme_{choice}"].setChecked(True)

    def _theme_changed(self, dark: bool) -> None:
        self.canvas.setBackgroundBrush(CANVAS["dark" if dark else "light"])

    def set_device(self, choice: str) -> None:
        user_settings.set_device(choice)
        os.environ["SGRAFFITO_DEVICE"] = choice  # engine.device reads it when the engine starts
        self.actions[f"device_{choice}"].setChecked(True)
        device = self.actions[f"device_{choice}"].text().replace("&", "")
        self.statusBar().showMessage(self.tr("Processing device: {device} — used when the engine next starts "
                                             "(restart if it already generated)").format(device=device), 8000)

    def _gpu_hint_found(self, text: str) -> None:
        self.statusBar().showMessage(text, 60_000)
        user_settings.mark_seen(CUDA_NOTICE)

    def dragEnterEvent(self, event) -> None:
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        files_dropped = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if files_dropped:
            event.acceptProposedAction()
            self.open_path(files_dropped[0])

    # ---- reactions -----------------------------------------------------------------------------------------
    def select_tool(self, name: str) -> None:
        if not self.actions[f"tool_{name}"].isEnabled():
            return  # another mode's tool (the colour hint outside colorize mode)
        tool = self.tools[name]
        self.canvas.set_tool(tool)
        self.actions[f"tool_{name}"].setChecked(True)
        self.statusBar().showMessage(f"{tool_text(tool.title)}: {tool_text(tool.status_hint)}", 4000)

    @property
    def tool(self):
        return self.canvas.tool

    def _settings_changed(self) -> None:
        self.size_spin.blockSignals(True)
        self.size_spin.setValue(self.settings.radius)
        self.size_spin.blockSignals(False)
        self.shape_combo.setCurrentIndex(1 if self.settings.square else 0)
        self.global_check.setChecked(self.settings.global_fill)
        self.only_check.setChecked(self.settings.only_unlabeled)

    def toggle_labels(self) -> None:
        """V: the photo alone, or back to the last view with the label map."""
        doc = self.document
        doc.set_view_mode(self._label_view if doc.view_mode == "photo" else "photo")

    def eventFilter(self, watched, event) -> bool:
        """`\\` in this window (not while typing): down shows the original photo at once; released quickly it
        stays (a toggle), held longer it goes back on release (Lightroom's before view)."""
        kind = event.type()
        if kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease) and event.key() == Qt.Key.Key_Backslash \
                and not event.modifiers() & ~(Qt.KeyboardModifier.KeypadModifier
                                              | Qt.KeyboardModifier.GroupSwitchModifier) \
                and isinstance(watched, QWidget) and watched.window() is self \
                and not isinstance(QApplication.focusWidget(), (QLineEdit, QTextEdit, QPlainTextEdit,
                                                                QAbstractSpinBox)):
            if not event.isAutoRepeat() and self.document.is_open:
                if kind == QEvent.Type.KeyPress:
                    self.canvas.before_key_pressed()
                else:
                    self.canvas.before_key_released()
            return True
        return super().eventFilter(watched, event)

    def _view_changed(self) -> None:
        doc = self.document
        if doc.view_mode in LABEL_VIEWS:
            self._label_view = doc.view_mode
        self.actions[f"view_{doc.view_mode}"].setChecked(True)
        self.view_combo.setCurrentIndex(self.view_combo.findData(doc.view_mode))
        self.opacity_slider.blockSignals(True)
        self.opacity_slider.setValue(round(doc.overlay_opacity * 100))
        self.opacity_slider.blockSignals(False)

    def _hovered(self, x: int, y: int) -> None:
        info = describe(self.document, x, y)
        if info is None:
            return
        text = f"x {x}, y {y}"
        if self.document.mode in MODE_TOOLS:  # colorize mode: the label under the cursor means nothing there
            self.hover_label.setText(text)
            return
        text += f"   {info['name']} ({info['id']})"
        if info["id"] != info["original"]:
            text += "   " + self.tr("was {label}").format(label=info["original_name"])
        self.hover_label.setText(text)

    def _document_reset(self) -> None:
        doc = self.document
        # tools and views are per document: a grayscale photo's hint tool does not stay for a label map
        own = MODE_TOOLS.get(doc.mode, ())
        for name in self.tools:
            self.actions[f"tool_{name}"].setEnabled(name in own if own else name not in
                                                    {t for tools in MODE_TOOLS.values() for t in tools})
        # the brush options and the overlay belong to label painting: greyed out where no label tool works
        paints_labels = doc.mode not in MODE_TOOLS
        for widget in (self.size_spin, self.shape_combo, self.global_check, self.only_check, self.opacity_slider):
            widget.setEnabled(paints_labels)
        wanted = DEFAULT_TOOL.get(doc.mode, "brush")
        if self.canvas.tool is None or self.canvas.tool.name != wanted:
            self.select_tool(wanted)
        self._label_view = "labels" if doc.mode == "translate" else "both"
        hint = MODE_HINTS.get(doc.mode)
        hint = self.tr(hint) if hint else None
        self.banner.setText(hint or "")
        self.banner.setVisible(hint is not None)
        width, height = doc.size
        self.size_label.setText(f"{width} × {height}")
        self._update_title()
        self._update_enabled()

    def _update_enabled(self) -> None:
        is_open = self.document.is_open
        for name in ("save", "save_as", "export_labels", "open_labels", "keep_labels"):
            self.actions[name].setEnabled(is_open)
        self.actions["export_image"].setEnabled(is_open and self.document.image is not None)
        self.actions["open_labels"].setEnabled(is_open and self.document.image is not None)
        self.actions["keep_labels"].setEnabled(is_open and self.document.image is not None)

    def _update_title(self, *_) -> None:
        doc = self.document
        if not doc.is_open:
            self.setWindowTitle(APP_NAME)
            return
        name = doc.path.name if doc.path else doc.title
        self.setWindowTitle(f"{name}[*] — {APP_NAME}")
        self.setWindowModified(doc.dirty)

    # ---- dialogs (tests replace these) ---------------------------------------------------------------------
    def show_error(self, message: str, title: str = "") -> None:
        QMessageBox.critical(self, title or self.tr("Cannot do that"), message)

    def ask_save_changes(self) -> str:
        """'save', 'discard' or 'cancel' for a document with unsaved changes."""
        buttons = (QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                   | QMessageBox.StandardButton.Cancel)
        name = self.document.path.name if self.document.path else self.document.title
        answer = QMessageBox.question(self, self.tr("Unsaved changes"),
                                      self.tr("Save the changes to {name}?").format(name=name), buttons,
                                      QMessageBox.StandardButton.Save)
        return {QMessageBox.StandardButton.Save: "save",
                QMessageBox.StandardButton.Discard: "discard"}.get(answer, "cancel")

    def ask_recover(self, description: str) -> bool:
        answer = QMessageBox.question(
            self, self.tr("Recover unsaved work"),
            self.tr("Sgraffito closed without saving {description}. Recover it?").format(description=description),
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes)
        return answer == QMessageBox.StandardButton.Yes

    def ask_open_label_map(self, name: str, label_set: LabelSet) -> str:
        """A file that looks like a label map (its palette is the set's colours, or its few gray levels are the
        set's ids) opened like a photo: "labels" opens it in translation mode, "photo" as an image to edit,
        "cancel" not at all."""
        box = QMessageBox(QMessageBox.Icon.Question, self.tr("Open a label map"),
                          self.tr("{name} looks like a label map of {labels}: its colours or gray levels are the "
                                  "labels'. Open it as a label map to paint and render, or as a picture?").format(
                              name=name, labels=label_set.title), QMessageBox.StandardButton.Cancel, self)
        as_labels = box.addButton(self.tr("Label Map"), QMessageBox.ButtonRole.AcceptRole)
        as_photo = box.addButton(self.tr("Picture"), QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(as_labels)
        box.exec()
        return {as_labels: "labels", as_photo: "photo"}.get(box.clickedButton(), "cancel")

    def dialog_start_folder(self, save: bool) -> Path:
        """Where a file dialog opens: saving goes next to the document's own file when that folder is writable
        (a photo from a read-only wallpaper folder is saved where the last dialog was); opening starts where the
        last dialog chose a file; failing those, the user's Pictures folder or home, never the process's cwd."""
        source = self.document.source if self.document.is_open else None
        own = source.parent if source is not None and source.parent.is_dir() else None
        candidates = [own if own is not None and os.access(own, os.W_OK) else None, user_settings.dialog_folder()]
        if not save:
            candidates = [user_settings.dialog_folder(), own]
        pictures = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation))
        for folder in [*candidates, pictures, Path.home()]:
            if folder is not None and folder.is_dir():
                return folder
        return Path.home()

    def ask_path(self, title: str, file_filter: str, save: bool = False, suggestion: str = "") -> Path | None:
        start = str(self.dialog_start_folder(save) / suggestion)
        if save:
            path, _ = QFileDialog.getSaveFileName(self, title, start, file_filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, title, start, file_filter)
        if not path:
            return None
        user_settings.set_dialog_folder(Path(path).parent)
        return Path(path)

    def ask_quality(self) -> int | None:
        quality, ok = QInputDialog.getInt(self, self.tr("Export quality"), self.tr("JPEG / WebP quality (1-100):"),
                                          files.DEFAULT_QUALITY, 1, 100)
        return quality if ok else None

    def _attempt(self, action, *args) -> bool:
        """Run a file action; a problem is shown in a dialog and leaves the document as it was."""
        try:
            action(*args)
            return True
        except SgraffitoError as problem:
            self.show_error(str(problem))
        except MemoryError:
            self.show_error(self.tr("Not enough memory for this image."))
        except OSError as problem:
            self.show_error(f"{getattr(problem, 'filename', '') or 'file'}: {problem.strerror or problem}")
        return False

    # ---- opening -------------------------------------------------------------------------------------------
    def confirm_discard(self) -> bool:
        """True when the current document may be replaced (saved, discarded or never changed)."""
        if not self.document.dirty:
            return True
        answer = self.ask_save_changes()
        if answer == "save":
            return self.save()
        return answer == "discard"

    def open_dialog(self) -> bool:
        path = self.ask_path(self.tr("Open a photo or project"), self.tr(OPEN_FILTER))
        return path is not None and self.open_path(path)

    def open_path(self, path, labels=None, label_set: LabelSet | None = None) -> bool:
        """Open a photo (optionally with its label map) or a .sgraffito project."""
        if not self.confirm_discard():
            return False
        path = Path(path)
        label_set = label_set or self.document.label_set
        if path.suffix.lower() == files.PROJECT_SUFFIX:
            opened = self._attempt(self._load, files.read_project, path)
        elif labels is None and (is_label_map_export(path, label_set) or looks_like_id_map(path, label_set)):
            choice = self.ask_open_label_map(path.name, label_set)
            if choice == "cancel":
                return False
            reader = files.read_label_map_document if choice == "labels" else files.read_photo
            args = (path, label_set) if choice == "labels" else (path, None, label_set)
            opened = self._attempt(self._load, reader, *args)
        else:
            opened = self._attempt(self._load, files.read_photo, path, labels, label_set)
        if opened:
            user_settings.remember(path)
        return opened

    def new_from_label_map(self, path=None, label_set: LabelSet | None = None) -> bool:
        path = path or self.ask_path(self.tr("New document from a label map"), self.tr(LABEL_FILTER))
        if path is None or not self.confirm_discard():
            return False
        return self._attempt(self._load, files.read_label_map_document, Path(path),
                             label_set or self.document.label_set)

    def _load(self, reader, *args) -> None:
        content = reader(*args)  # raises before anything changes
        self._forget_autosave()  # the user chose to discard (or had saved) the document being replaced
        self.document.load(**content)

    def open_label_map(self, path=None) -> bool:
        """Give the open photo a label map: it becomes both the original (what the eraser restores) and the
        edited map, a new starting point that clears the undo history."""
        doc = self.document
        if not doc.is_open:
            return False
        path = path or self.ask_path(self.tr("Open the photo's label map"), self.tr(LABEL_FILTER))
        if path is None:
            return False
        return self._attempt(lambda: doc.replace_label_maps(files.read_labels_for(Path(path), doc.label_set,
                                                                                  doc.size)))

    def keep_labels_as_map(self) -> bool:
        """A photo opened without a label map: label it (Fill, brush), then keep that as its map; the edits
        painted after it are what Generate changes. Like Open Label Map, a new starting point."""
        doc = self.document
        if not doc.is_open or doc.image is None:
            return False
        doc.replace_label_maps(doc.labels.copy())
        self.statusBar().showMessage(self.tr("These labels now describe the photo: paint the change, then "
                                             "Generate"), 8000)
        return True

    # ---- saving, exporting, autosave -----------------------------------------------------------------------
    def save(self) -> bool:
        if self.document.path is None:
            return self.save_as()
        return self._attempt(self._save_to, self.document.path)

    def save_as(self, path=None) -> bool:
        if not self.document.is_open:
            return False
        if path is None:
            suggestion = Path(self.document.title).with_suffix(files.PROJECT_SUFFIX).name
            path = self.ask_path(self.tr("Save project"), self.tr(PROJECT_FILTER), save=True, suggestion=suggestion)
            if path is None:
                return False
        path = Path(path)
        if path.suffix.lower() != files.PROJECT_SUFFIX:
            path = path.with_name(path.name + files.PROJECT_SUFFIX)
        return self._attempt(self._save_to, path)

    def _save_to(self, path: Path) -> None:
        project = files.write_project(self.document, path)
        self.document.mark_saved(path, project)
        self._forget_autosave()
        user_settings.remember(path)
        self.statusBar().showMessage(self.tr("Saved {path}").format(path=path), 4000)

    def export_image(self, path=None) -> bool:
        doc = self.document
        if doc.image is None:
            return False
        quality = files.DEFAULT_QUALITY
        if path is None:
            path = self.ask_path(self.tr("Export image"), self.tr(EXPORT_FILTER), save=True,
                                 suggestion=Path(doc.title).stem + "-edited.png")
            if path is None:
                return False
            if not path.suffix:
                path = path.with_suffix(".png")
            if path.suffix.lower() in (".jpg", ".jpeg", ".webp"):
                quality = self.ask_quality()
                if quality is None:
                    return False
        ok = self._attempt(files.export_image, doc, Path(path), quality)
        if ok:
            self.statusBar().showMessage(self.tr("Exported {path}").format(path=path), 4000)
        return ok

    def export_label_map(self, path=None) -> bool:
        doc = self.document
        if not doc.is_open:
            return False
        if path is None:
            path = self.ask_path(self.tr("Export label map"), self.tr(LABEL_FILTER), save=True,
                                 suggestion=Path(doc.title).stem + "-labels.png")
            if path is None:
                return False
        ok = self._attempt(files.export_label_map, doc, Path(path))
        if ok:
            self.statusBar().showMessage(self.tr("Exported {path}").format(path=path), 4000)
        return ok

    def autosave(self, wait: bool = False) -> None:
        """Write unsaved work to the user data folder (a timer calls this). The arrays are copied here and the
        file is written by a worker thread, so painting goes on while a 24-MP project is compressed."""
        doc = self.document
        job = self.autosave_job
        if job is not None and job.done() and job.exception() is not None:
            self.statusBar().showMessage(self.tr("Autosave failed: {problem}").format(problem=job.exception()), 8000)
        state = (doc.doc_id, doc.revision, len(doc.candidates), len(doc.history), len(doc.hints))
        if doc.is_open and doc.dirty and state != self._autosaved and (job is None or job.done()):
            self._autosaved = state
            snapshot = files.to_project(doc, copy=True)
            self.autosave_job = self._autosave_pool.submit(files.write_autosave_project, doc.doc_id, snapshot,
                                                           doc.source)
        if wait and self.autosave_job is not None:
            self.autosave_job.exception()  # waits; a failure is reported above on the next call

    def _forget_autosave(self) -> None:
        if self.autosave_job is not None:
            self.autosave_job.exception()  # let a write in progress finish before its file is removed
        files.discard_autosave(self.document)
        self._autosaved = None

    def offer_recovery(self) -> bool:
        """At start: offer to reopen work an earlier session left unsaved (it crashed or was killed). A damaged
        autosave never stops start-up: it is moved to autosave/damaged/ and the window says so. Also removes
        temporary files that a killed save left next to the autosaves and the recent projects."""
        entries, damaged = files.scan_recovery()
        files.remove_stale_temp_files({path.parent for path in user_settings.recent_files()})
        notes = [self._set_aside(path, problem) for path, problem in damaged]
        recovered = False
        for entry in entries:
            if not self.ask_recover(files.describe_recoverable(entry)):
                files.forget_autosave(entry)  # declined: offered once
                continue
            try:
                self._load(files.read_autosave, entry)
            except (SgraffitoError, OSError, MemoryError) as problem:
                notes.append(self._set_aside(entry.path, str(problem) or type(problem).__name__))
                continue
            files.forget_autosave(entry)  # recovered: it autosaves anew
            recovered = True
            break
        if notes:
            self.show_startup_notice(self.tr("Sgraffito found damaged unsaved work and could not open it:")
                                     + "\n\n" + "\n\n".join(notes))
        return recovered

    def _set_aside(self, path: Path, problem: str) -> str:
        moved = files.set_aside_autosave(path)
        if moved is None:
            return self.tr("{problem}\n(the file was deleted)").format(problem=problem)
        return self.tr("{problem}\n(moved to {where}; delete it when you no longer need it)").format(
            problem=problem, where=moved)

    def show_startup_notice(self, message: str) -> None:
        """A notice that must not block start-up: a non-modal message box and the status bar (tests replace it)."""
        self.statusBar().showMessage(message.splitlines()[0], 15000)
        box = QMessageBox(QMessageBox.Icon.Warning, self.tr("Damaged autosave"), message,
                          QMessageBox.StandardButton.Ok, self)
        box.setModal(False)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.show()
        self.startup_notice = box

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.confirm_discard():
            event.ignore()
            return
        self.autosave_timer.stop()
        self._forget_autosave()
        self._autosave_pool.shutdown(wait=True)
        user_settings.save_window(self)
        event.accept()
