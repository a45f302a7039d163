"""The Colorize panel, shown for grayscale documents: the colorizer (model folders of the engines serving the
"colorize" mode in engine.registry), temperature, number of candidates, the hint colour with the last colours
used, the hint size and the hint list.

Generating goes through the document's workspace (app.workspace), so colourings land in the same gallery,
progress bar and undoable Apply as edits do: the panel calls `workspace.generate(mode="colorize", ...)` with
`{"temperature", "hints"}` (hints in photo pixels, as the backends read them). In colorize mode the window's
Generate action (Ctrl+Return) and the gallery's Generate button come here too.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QColorDialog, QComboBox, QDockWidget, QDoubleSpinBox, QFormLayout, QFrame,
                               QHBoxLayout, QListWidget, QListWidgetItem, QPushButton, QScrollArea, QSpinBox,
                               QToolButton, QVBoxLayout, QWidget)

from app.gallery import install_gallery
from app.hints import MAX_LEVEL, MIN_LEVEL, RECENT_COLOURS, HintsModel
from app.workspace import colorize_params
from engine import registry
from engine.model_store import list_models

SWATCH = 16


def swatch(colour: QColor, size: int = SWATCH) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(colour)
    return QIcon(pixmap)


class ColorizePanel(QDockWidget):
    def __init__(self, window):
        super().__init__("Colorize", window)
        self.setObjectName("colorize")
        self.window_ = window
        self.document = window.document
        self.hints = HintsModel.of(self.document)

        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.model_box = QComboBox()
        self.model_box.setAccessibleName("Colorization model")
        self.model_box.setPlaceholderText("No colorization models installed")
        self.model_box.setToolTip("ColTran: best colours, slow on a CPU. PixelCNN: fast, more varied.")
        form.addRow("&Model", self.model_box)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, value=1.0, decimals=2)
        self.temperature.setAccessibleName("Sampling temperature")
        self.temperature.setToolTip("1: the model's own distribution; lower: safer, duller colours; 0: the most "
                                    "likely colour everywhere")
        form.addRow("&Temperature", self.temperature)
        self.samples = QSpinBox(minimum=1, maximum=16, value=3)
        self.samples.setAccessibleName("Number of colourings")
        form.addRow("C&andidates", self.samples)
        self.tolerance = QSpinBox(minimum=0, maximum=3, value=0)
        self.tolerance.setAccessibleName("Hint tolerance")
        self.tolerance.setToolTip("ColTran: how far (in coarse colour levels per channel) a hinted area may stray "
                                  "from the hint's colour")
        form.addRow("Hint t&olerance", self.tolerance)
        self.model_box.currentIndexChanged.connect(self._model_changed)
        # Colorize sits under the sampling settings, above everything that grows with the hints: adding a hint
        # never moves it (nor the settings) under the cursor
        self.generate_button = QPushButton("Colori&ze")
        self.generate_button.setToolTip("Sample colourings with these hints (Ctrl+Return)")
        self.generate_button.clicked.connect(lambda: self.generate())
        form.addRow(self.generate_button)

        self.colour_button = QPushButton("Hint &colour…")
        self.colour_button.setAccessibleName("Hint colour")
        self.colour_button.setToolTip("The colour new hints get; with a hint selected, recolours it")
        self.colour_button.clicked.connect(self.choose_colour)
        form.addRow(self.colour_button)
        self.recent_row = QHBoxLayout()
        self.recent_row.setSpacing(2)
        self.recent_buttons: list[QToolButton] = []
        for n in range(RECENT_COLOURS):
            button = QToolButton()
            button.setIconSize(QSize(SWATCH, SWATCH))
            button.setFixedSize(SWATCH + 8, SWATCH + 8)
            button.setAccessibleName(f"Recent hint colour {n + 1}")
            button.clicked.connect(lambda _=False, i=n: self._use_recent(i))
            policy = button.sizePolicy()
            policy.setRetainSizeWhenHidden(True)  # the row keeps its height: nothing below moves on the first hint
            button.setSizePolicy(policy)
            button.hide()
            self.recent_buttons.append(button)
            self.recent_row.addWidget(button)
        self.recent_row.addStretch(1)
        form.addRow(self.recent_row)
        self.size_spin = QSpinBox(minimum=MIN_LEVEL, maximum=MAX_LEVEL, value=self.hints.level)
        self.size_spin.setAccessibleName("Hint size")
        self.size_spin.setToolTip("Patch size of the selected hint and of new ones (the wheel over a hint too)")
        self.size_spin.valueChanged.connect(self._size_chosen)
        form.addRow("Hint &size", self.size_spin)
        layout.addLayout(form)

        self.hint_list = QListWidget()
        self.hint_list.setMinimumHeight(3 * SWATCH)  # scrolls: it must not crowd out the gallery
        self.hint_list.setAccessibleName("Colour hints")
        self.hint_list.currentRowChanged.connect(lambda row: self.hints.select(row))
        layout.addWidget(self.hint_list, 1)
        buttons = QHBoxLayout()
        self.delete_button = QPushButton("&Delete hint")
        self.delete_button.clicked.connect(lambda: self.hints.selected >= 0 and self.hints.delete(self.hints.selected))
        self.clear_button = QPushButton("C&lear hints")
        self.clear_button.clicked.connect(self.hints.clear)
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.clear_button)
        layout.addLayout(buttons)
        # on a short screen (1280 x 720 at 150 %) the panel scrolls instead of pushing the window past the screen
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        # wide enough for the fields beside a scroll bar: it must not cover their arrows
        scroll.setMinimumWidth(body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        self.setWidget(scroll)

        self.hints.changed.connect(self._fill_hints)
        self.hints.selection_changed.connect(self._selection_changed)
        self.hints.colour_changed.connect(self._show_colour)
        self.hints.recent_changed.connect(self._fill_recent)
        self.document.reset.connect(self._document_reset)
        self._show_colour(self.hints.colour)
        self._fill_hints()

    # ---- models --------------------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        current = self.model_box.currentData()
        self.model_box.clear()
        for kind in (spec.kind for spec in registry.specs("colorize")):
            for info in list_models(kind):
                self.model_box.addItem(f"{info.title} ({kind})", f"{kind}\t{info.name}")
        index = self.model_box.findData(current) if current is not None else -1
        self.model_box.setCurrentIndex(index if index >= 0 else min(0, self.model_box.count() - 1))

    def choose_model(self, data: str) -> bool:
        index = self.model_box.findData(data)
        if index >= 0:
            self.model_box.setCurrentIndex(index)
        return index >= 0

    # ---- generating ----------------------------------------------------------------------------------------
    def _model_changed(self) -> None:
        self.tolerance.setEnabled(str(self.model_box.currentData()).startswith("coltran\t"))

    def params(self) -> dict:
        backend = str(self.model_box.currentData()).split("\t")[0]
        return colorize_params(self.document, backend, self.temperature.value(), self.tolerance.value())

    def generate(self) -> int | None:
        """Queue k colourings with the chosen model and the hints; the job id, or None after saying why not."""
        choice = self.model_box.currentData()
        if choice is None:
            self.window_.show_error("No colorization model installed: import ColTran's checkpoints with "
                                    "`sgraffito import coltran` or train the demo PixelCNN (see the README).")
            return None
        engine, model = choice.split("\t")
        gallery = install_gallery(self.window_)
        gallery.show()
        return gallery.workspace.generate(mode="colorize", engine=engine, model=model, k=self.samples.value(),
                                          params=self.params())

    # ---- hints ---------------------------------------------------------------------------------------------
    def ask_colour(self, initial: QColor) -> QColor:
        """The colour dialog (tests replace this)."""
        return QColorDialog.getColor(initial, self, "Hint colour")

    def choose_colour(self) -> None:
        colour = self.ask_colour(self.hints.colour)
        if colour.isValid():
            self.hints.set_colour(colour)

    def _use_recent(self, index: int) -> None:
        if index < len(self.hints.recent):
            self.hints.set_colour(self.hints.recent[index])

    def _show_colour(self, colour: QColor) -> None:
        self.colour_button.setIcon(swatch(colour))
        self.colour_button.setToolTip(f"Hint colour {colour.name()}: the colour new hints get; with a hint "
                                      "selected, recolours it")

    def _fill_recent(self) -> None:
        for button, colour in zip(self.recent_buttons, self.hints.recent + [None] * RECENT_COLOURS):
            button.setVisible(colour is not None)
            if colour is not None:
                button.setIcon(swatch(colour))
                button.setToolTip(colour.name())

    def _size_chosen(self, level: int) -> None:
        if self.hints.selected >= 0:
            self.hints.resize(self.hints.selected, level)
        else:
            self.hints.level = level

    def _fill_hints(self) -> None:
        self.hint_list.blockSignals(True)
        self.hint_list.clear()
        for index, hint in enumerate(self.hints.hints):
            item = QListWidgetItem(swatch(QColor(*hint["rgb"])), f"({hint['x']:.0f}, {hint['y']:.0f})  size "
                                   f"{self.hints.level_of(index)}  {QColor(*hint['rgb']).name()}")
            self.hint_list.addItem(item)
        self.hint_list.setCurrentRow(self.hints.selected)
        self.hint_list.blockSignals(False)
        self.delete_button.setEnabled(self.hints.selected >= 0)
        self.clear_button.setEnabled(bool(self.hints.hints))

    def _selection_changed(self, index: int) -> None:
        self.hint_list.blockSignals(True)
        self.hint_list.setCurrentRow(index)
        self.hint_list.blockSignals(False)
        self.delete_button.setEnabled(index >= 0)
        if index >= 0:
            self.size_spin.blockSignals(True)
            self.size_spin.setValue(self.hints.level_of(index))
            self.size_spin.blockSignals(False)

    def _document_reset(self) -> None:
        """The panel belongs to colorize mode: shown with it, hidden otherwise; in colorize mode it is the one
        model chooser and the one Generate (the gallery's own controls are hidden, the Labels panel too)."""
        colorize = self.document.mode == "colorize"
        if colorize:
            self.refresh_models()
        else:
            self.setVisible(False)
        # what goes, goes first: shown beside the Labels panel and the gallery's controls, the panel would not
        # fit and the main window would grow past the screen
        gallery = getattr(self.window_, "gallery", None)
        if gallery is not None:
            gallery.set_controls_visible(not colorize)
        palette = getattr(self.window_, "palette", None)
        if palette is not None and self.document.is_open:
            palette.setVisible(not colorize)
        if colorize:
            self.setVisible(True)
            if gallery is not None:  # once laid out, in the window's final size
                QTimer.singleShot(0, self._share_height_with_gallery)
        self._fill_hints()

    def _share_height_with_gallery(self) -> None:
        """The panel gets the height its fields and a few hints need, the colourings the rest; on a short screen
        the panel scrolls."""
        gallery = getattr(self.window_, "gallery", None)
        if gallery is None or not self.isVisible():
            return
        total = gallery.height() + self.height()
        need = min(self.widget().widget().minimumSizeHint().height() + 2 * self.fontMetrics().height(),
                   total * 11 // 20)  # on a short screen the colourings keep nearly half
        self.window_.resizeDocks([gallery, self], [max(1, total - need), need], Qt.Orientation.Vertical)


def install_colorize(window) -> ColorizePanel:
    """Add the Colorize panel to app.main_window.MainWindow (with the gallery, which shows the colourings) and
    send Generate to the panel while the document is grayscale. Idempotent."""
    if getattr(window, "colorize_panel", None) is not None:
        return window.colorize_panel
    panel = ColorizePanel(window)
    window.colorize_panel = panel
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, panel)
    gallery = install_gallery(window)
    panel._document_reset()

    def generate() -> None:
        panel.generate() if window.document.mode == "colorize" else gallery.generate()

    for signal in (window.actions["generate"].triggered, gallery.generate_button.clicked):
        signal.disconnect()
        signal.connect(generate)
    if "view" in getattr(window, "menus", {}):
        window.menus["view"].addAction(panel.toggleViewAction())
    return panel
