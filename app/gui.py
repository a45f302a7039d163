"""Starting the editor: `app.gui.launch(args)` with the arguments of app.cli.gui_parser."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app import files
from app import settings as user_settings
from app.main_window import MainWindow
from engine.errors import SgraffitoError
from engine.labels import load_label_set
from engine.paths import APP_ID, APP_NAME, assets_dir


def application() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    app.setOrganizationDomain(".".join(reversed(APP_ID.split(".")[:-1])))  # sgraffito.github.io
    app.setDesktopFileName(APP_ID)
    # installed: the theme has it (packaging/); in a source checkout: the rendered PNG next to it
    icon = QIcon.fromTheme(APP_ID)
    if icon.isNull():
        icon = QIcon(str(Path(__file__).resolve().parent.parent / "packaging" / "icons" / "hicolor" / "256x256"
                         / "apps" / f"{APP_ID}.png"))
    app.setWindowIcon(icon)
    return app


def open_start_document(window: MainWindow, args) -> None:
    """What the command line asked for: a file (photo or project), a label map alone, or a bundled sample."""
    label_set = load_label_set(args.label_set) if args.label_set else remembered_label_set()
    if label_set is not None:
        window.document.set_label_set(label_set)
    if args.file:
        labels = Path(args.labels) if args.labels else None
        window.open_path(Path(args.file), labels=labels, label_set=label_set)
    elif args.labels:
        window.new_from_label_map(Path(args.labels), label_set)
    elif args.demo:
        sample = files.demo_sample(assets_dir() / "samples")
        if sample is not None:
            window.open_path(sample[0], labels=sample[1], label_set=label_set)
        else:
            window.statusBar().showMessage(QCoreApplication.translate("gui", "No sample photos in assets/samples"),
                                           8000)


def remembered_label_set():
    """The set the user chose last time, unless it has been removed since."""
    name = user_settings.label_set()
    try:
        return load_label_set(name) if name else None
    except SgraffitoError:
        return None


def launch(args) -> int:
    app = application()
    if args.label_set:
        try:
            load_label_set(args.label_set)
        except SgraffitoError as problem:
            print(f"sgraffito: error: {problem}", file=sys.stderr)
            return 2
    if user_settings.device() != "auto":
        os.environ.setdefault("SGRAFFITO_DEVICE", user_settings.device())  # an explicit $SGRAFFITO_DEVICE wins
    window = MainWindow()
    if args.screenshot:
        window.resize(user_settings.FIRST_START_SIZE)  # screenshots are taken at a known size
    if args.screenshot or not user_settings.place_window(window):
        QTimer.singleShot(0, window.share_dock_height)  # once shown at its size; a user's own split is kept
    window.show()
    if not args.screenshot:
        window.offer_recovery()
        window.gpu_hint.check()
    if not window.document.is_open:
        open_start_document(window, args)
    if args.screenshot:
        def grab() -> None:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            window.grab().save(str(args.screenshot))
            window.document.undo_stack.setClean()  # nothing was edited by hand: close without asking
            window.close()
            app.quit()
        QTimer.singleShot(args.quit_after or 1500, grab)
    elif args.quit_after:
        QTimer.singleShot(args.quit_after, app.quit)
    return app.exec()
