"""Light and dark appearance: follow the system's colour scheme, or the user's choice (View > Theme).

Qt 6.8+ can ask the platform for a scheme (QStyleHints.setColorScheme), but X11 without a desktop portal,
offscreen and older desktops ignore the request and keep a light palette. So the dark palette is set
explicitly on the Fusion style, whose widgets draw everything from the palette; light is the style's own.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPalette
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle, QToolBar, QToolButton

# dark Fusion colours: inputs (base) are clearly darker wells than the window, so an unchecked box stays visible
_DARK = {
    QPalette.ColorRole.Window: "#383838",
    QPalette.ColorRole.WindowText: "#eeeeee",
    QPalette.ColorRole.Base: "#1f1f1f",
    QPalette.ColorRole.AlternateBase: "#2a2a2a",
    QPalette.ColorRole.ToolTipBase: "#202020",
    QPalette.ColorRole.ToolTipText: "#eeeeee",
    QPalette.ColorRole.PlaceholderText: "#9a9a9a",
    QPalette.ColorRole.Text: "#eeeeee",
    QPalette.ColorRole.Button: "#444444",
    QPalette.ColorRole.ButtonText: "#eeeeee",
    QPalette.ColorRole.BrightText: "#ff6060",
    QPalette.ColorRole.Light: "#505050",
    QPalette.ColorRole.Midlight: "#444444",
    QPalette.ColorRole.Mid: "#2c2c2c",
    QPalette.ColorRole.Dark: "#1e1e1e",
    QPalette.ColorRole.Shadow: "#141414",
    QPalette.ColorRole.Highlight: "#3d7fd6",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#6ea8ff",
    QPalette.ColorRole.LinkVisited: "#b78cff",
}
_DARK_DISABLED = {
    QPalette.ColorRole.WindowText: "#808080",
    QPalette.ColorRole.Text: "#808080",
    QPalette.ColorRole.ButtonText: "#808080",
    QPalette.ColorRole.Highlight: "#505050",
    QPalette.ColorRole.HighlightedText: "#a0a0a0",
}
# the canvas around the photo: neutral so it does not tint how the photo's colours are judged
CANVAS = {"dark": QColor(40, 40, 43), "light": QColor(150, 150, 154)}


# Fusion draws these from fixed dark-grey pixmaps that vanish on a dark window: dock float/close, toolbar overflow
_GLYPHS = (QStyle.StandardPixmap.SP_TitleBarNormalButton, QStyle.StandardPixmap.SP_TitleBarCloseButton,
           QStyle.StandardPixmap.SP_DockWidgetCloseButton, QStyle.StandardPixmap.SP_ToolBarHorizontalExtensionButton,
           QStyle.StandardPixmap.SP_ToolBarVerticalExtensionButton, QStyle.StandardPixmap.SP_LineEditClearButton)


class DarkFusion(QProxyStyle):
    """Fusion with those glyphs in the light text colour."""

    def __init__(self):
        super().__init__("Fusion")

    def standardIcon(self, pixmap, option=None, widget=None) -> QIcon:
        icon = super().standardIcon(pixmap, option, widget)
        if pixmap not in _GLYPHS or icon.isNull():
            return icon
        light = QIcon()
        for size in icon.availableSizes() or [QSize(16, 16)]:
            glyph = icon.pixmap(size)
            painter = QPainter(glyph)
            painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceIn)  # keep the shape
            painter.fillRect(glyph.rect(), QColor(_DARK[QPalette.ColorRole.WindowText]))
            painter.end()
            light.addPixmap(glyph)
        return light


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, colour in _DARK.items():
        palette.setColor(role, QColor(colour))
    for role, colour in _DARK_DISABLED.items():
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(colour))
    return palette


def system_is_dark(app: QApplication) -> bool:
    return app.styleHints().colorScheme() == Qt.ColorScheme.Dark


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


class Theme(QObject):
    """The application's appearance; `changed(dark)` tells widgets that draw their own colours (the canvas)."""

    changed = Signal(bool)

    def __init__(self, app: QApplication, parent: QObject | None = None):
        super().__init__(parent)
        self.app = app
        self.choice = "system"
        self._light = app.palette()  # the platform's palette and style before we change anything
        self._style_name = app.style().name()
        self._dark_style: DarkFusion | None = None
        app.styleHints().colorSchemeChanged.connect(self._system_changed)  # a method: disconnected with self

    def _system_changed(self, _scheme) -> None:
        if self.choice == "system":
            self.apply()

    @property
    def dark(self) -> bool:
        return self.choice == "dark" or (self.choice == "system" and system_is_dark(self.app))

    def set_choice(self, choice: str) -> None:
        """"system", "light" or "dark"."""
        self.choice = choice
        self.apply()

    def apply(self) -> None:
        dark = self.dark
        if self.choice != "system":  # platforms that can switch (Windows, macOS, GNOME portal) switch too
            self.app.styleHints().setColorScheme(Qt.ColorScheme.Dark if dark else Qt.ColorScheme.Light)
        else:
            self.app.styleHints().unsetColorScheme()
        if dark and not is_dark(self.app.palette()):
            # native styles (Windows Vista, macOS) draw parts in fixed light colours; Fusion draws from the palette
            self._dark_style = DarkFusion()
            self.app.setStyle(self._dark_style)
            self.app.setPalette(dark_palette())
        elif not dark and is_dark(self.app.palette()):
            if self._dark_style is not None:
                self.app.setStyle(self._style_name)
                self._dark_style = None
            self.app.setPalette(self._light if not is_dark(self._light) else self.app.style().standardPalette())
        self._refresh_overflow_buttons()
        self.changed.emit(dark)

    def _refresh_overflow_buttons(self) -> None:
        """A toolbar takes its overflow icon once, when it is made; a new style does not reach it."""
        for top in self.app.topLevelWidgets():
            for button in top.findChildren(QToolButton, "qt_toolbar_ext_button"):
                toolbar = button.parent()
                if isinstance(toolbar, QToolBar):
                    glyph = (QStyle.StandardPixmap.SP_ToolBarHorizontalExtensionButton
                             if toolbar.orientation() == Qt.Orientation.Horizontal
                             else QStyle.StandardPixmap.SP_ToolBarVerticalExtensionButton)
                    button.setIcon(self.app.style().standardIcon(glyph, None, button))
