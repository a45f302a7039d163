"""Per-user preferences in QSettings: recent files, the last label set, the device, the theme, the window layout.

One INI file, `<config dir>/Sgraffito/Sgraffito.ini` (~/.config on Linux, %LOCALAPPDATA% on Windows). Qt reads
$XDG_CONFIG_HOME once per process and caches it, so `store()` sets the path every time it opens the file: a test
that points XDG_CONFIG_HOME at a temporary folder never reads or writes the real user's settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from PySide6.QtCore import QByteArray, QSettings, QSize, Qt

from engine.paths import APP_NAME

RECENT_COUNT = 10
DEVICES = ("auto", "cpu", "cuda")
THEMES = ("system", "light", "dark")
FIRST_START_SIZE = QSize(1400, 900)  # the window on first start, where the screen has room for it
LAYOUT_VERSION = 1  # bump when docks or toolbars change so much that an old saved state would misplace them


def store() -> QSettings:
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, platformdirs.user_config_dir())
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, APP_NAME, APP_NAME)


def _get(key: str, default: str = "") -> str:
    value = store().value(key, default)
    return value if isinstance(value, str) else default


def _choice(key: str, choices: tuple[str, ...]) -> str:
    value = _get(key, choices[0])
    return value if value in choices else choices[0]


def _set(key: str, value) -> None:
    settings = store()
    settings.setValue(key, value)
    settings.sync()


# ---- recent files -----------------------------------------------------------------------------------------------
def recent_files() -> list[Path]:
    """Files opened or saved lately, newest first, those that still exist."""
    entries = store().value("files/recent", [])
    if isinstance(entries, str):  # QSettings gives a one-item list back as a plain string
        entries = [entries]
    return [Path(entry) for entry in entries or [] if isinstance(entry, str) and Path(entry).is_file()]


def remember(path) -> None:
    path = Path(path).resolve()
    entries = [path] + [p for p in recent_files() if p != path]
    _set("files/recent", [str(p) for p in entries[:RECENT_COUNT]])


def dialog_folder() -> Path | None:
    """The folder the last file dialog chose a file in, while it still exists."""
    folder = _get("files/dialog_folder")
    return Path(folder) if folder and Path(folder).is_dir() else None


def set_dialog_folder(folder) -> None:
    _set("files/dialog_folder", str(Path(folder).resolve()))


# ---- choices ----------------------------------------------------------------------------------------------------
def label_set() -> str | None:
    """The label set the user last chose (a set name for engine.labels.load_label_set), or None."""
    return _get("editor/label_set") or None


def set_label_set(name: str) -> None:
    _set("editor/label_set", name)


def device() -> str:
    """"auto", "cpu" or "cuda" (engine.device.resolve_device reads the same words)."""
    return _choice("engine/device", DEVICES)


def set_device(choice: str) -> None:
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {choice!r}")
    _set("engine/device", choice)


def theme() -> str:
    return _choice("appearance/theme", THEMES)


def set_theme(choice: str) -> None:
    if choice not in THEMES:
        raise ValueError(f"theme must be one of {THEMES}, not {choice!r}")
    _set("appearance/theme", choice)


def segment_on_open() -> bool:
    """Whether a photo opened without a label map is segmented at once (Tools > Segment Photos When Opened).
    Until the user chooses, $SGRAFFITO_SEGMENT_ON_OPEN decides ("0" off; default on; the test suite sets "0")."""
    value = store().value("editor/segment_on_open", None)
    if value is None:
        return os.environ.get("SGRAFFITO_SEGMENT_ON_OPEN", "1").strip().lower() not in ("0", "false", "no", "off")
    return str(value).lower() in ("1", "true")


def set_segment_on_open(on: bool) -> None:
    _set("editor/segment_on_open", bool(on))


def segmenter() -> str:
    """The segmentation model the user chose last ("kind<TAB>name"), or "" for the default."""
    return _get("editor/segmenter")


def set_segmenter(choice: str) -> None:
    _set("editor/segmenter", choice)


def seen(notice: str) -> bool:
    """Whether a one-time notice (e.g. "cuda_build") was shown already."""
    return store().value(f"notices/{notice}", False, type=bool)


def mark_seen(notice: str) -> None:
    _set(f"notices/{notice}", True)


# ---- window layout ----------------------------------------------------------------------------------------------
def save_window(window) -> None:
    """Geometry (size, position, maximized) and the docks' and toolbars' places; they need objectName()s."""
    settings = store()
    settings.setValue("window/geometry", window.saveGeometry())
    settings.setValue("window/state", window.saveState(LAYOUT_VERSION))
    settings.sync()


def restore_window(window) -> bool:
    """Put the window back as it was closed; False when nothing was saved (first start)."""
    settings = store()
    geometry, state = settings.value("window/geometry"), settings.value("window/state")
    if not isinstance(geometry, QByteArray) or geometry.isEmpty():
        return False
    window.restoreGeometry(geometry)
    if isinstance(state, QByteArray):
        window.restoreState(state, LAYOUT_VERSION)
    return True


def place_window(window) -> bool:
    """Before the window is shown: as the user left it (True), else FIRST_START_SIZE, else (a screen too small for
    that, such as a 1366 x 768 laptop, where it would open cut off at the right and bottom) maximized."""
    if restore_window(window):
        return True
    available = window.screen().availableGeometry().size()
    if FIRST_START_SIZE.width() <= available.width() and FIRST_START_SIZE.height() <= available.height():
        window.resize(FIRST_START_SIZE)
        return False
    window.resize(FIRST_START_SIZE.boundedTo(available))  # what a desktop without a window manager shows
    window.setWindowState(window.windowState() | Qt.WindowState.WindowMaximized)
    return False
