"""Every action and control of the real main window has a name for screen readers and a keyboard path, and the
open -> paint -> generate -> pick -> apply -> export flow works from the keyboard (painting aside)."""

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtTest import QTest
from PySide6.QtWidgets import (QAbstractButton, QAbstractItemView, QAbstractSlider, QAbstractSpinBox, QApplication,
                               QComboBox, QGraphicsView, QHeaderView, QLineEdit, QPushButton, QScrollBar, QTabBar,
                               QToolButton, QWidget, QWidgetAction)

from app.main_window import MainWindow
from tests import fake_backend

from tests.conftest import show_main_window

INTERACTIVE = (QAbstractButton, QComboBox, QAbstractSpinBox, QAbstractSlider, QLineEdit, QAbstractItemView,
               QGraphicsView, QTabBar)
COMPOUND = (QLineEdit, QAbstractSpinBox, QComboBox)  # their inner parts are announced as the control itself


@pytest.fixture
def window(qtbot, monkeypatch):
    """The window as the application builds it, with the gallery and the live preview when they are not
    installed by MainWindow itself."""
    monkeypatch.setenv("SGRAFFITO_DEVICE", "cpu")
    from app.gallery import install_gallery
    from app.live_preview import install_live_preview

    def install_docks(win):
        install_gallery(win)
        if "live_preview" not in win.actions:
            install_live_preview(win, lambda: None)

    win = show_main_window(qtbot, monkeypatch, (1400, 900), install_docks)
    yield win
    win.gallery.bridge.shutdown()


def internal(widget: QWidget, window: QWidget) -> bool:
    """Qt's own parts of a control (scroll bars, a spin box's editor, a combo's popup, toolbar overflow)."""
    if widget.window() is not window or isinstance(widget, (QScrollBar, QHeaderView)):
        return True
    if widget.objectName().startswith("qt_"):
        return True
    return isinstance(widget.parent(), COMPOUND)


def spoken_name(widget: QWidget) -> str:
    if widget.accessibleName().strip():
        return widget.accessibleName()
    if isinstance(widget, QToolButton) and widget.defaultAction() is not None:
        return widget.defaultAction().text().replace("&", "").strip()
    if isinstance(widget, QAbstractButton):
        return widget.text().replace("&", "").strip()
    return ""


def unnamed_widgets(window: QWidget) -> list[str]:
    return [f"{type(w).__name__} in {type(w.parent()).__name__} (tooltip {w.toolTip()!r})"
            for w in window.findChildren(QWidget)
            if isinstance(w, INTERACTIVE) and not internal(w, window) and not spoken_name(w)]


def all_actions(window: MainWindow) -> list[QAction]:
    for menu in window.menus.values():
        menu.aboutToShow.emit()  # menus filled on opening (Open Recent)
    found = set(window.findChildren(QAction)) | set(window.actions.values())
    for menu in window.menuBar().findChildren(QWidget):
        found |= set(menu.actions())
    for menu in window.menus.values():
        found |= set(menu.actions())
    # a QWidgetAction only places a widget (a toolbar's spin box): the widget walk checks the widget
    # a drop-down menu's own action is spoken as the button that opens it (named by the widget walk)
    return [action for action in found if not action.isSeparator() and not isinstance(action, QWidgetAction)
            and not action.objectName().startswith("_q_")
            and not (action.menu() is not None and action.associatedObjects()
                     and all(isinstance(o, QToolButton) for o in action.associatedObjects()))]


def unnamed_actions(window: MainWindow) -> list[str]:
    return [f"{type(action).__name__} {action.objectName()!r} in {type(action.parent()).__name__}, "
            f"shortcut {action.shortcut().toString()!r}"
            for action in all_actions(window) if not action.text().replace("&", "").strip()]


def test_every_control_has_an_accessible_name(window):
    assert len([w for w in window.findChildren(QWidget) if isinstance(w, INTERACTIVE)]) > 30, "the walk sees the UI"
    assert unnamed_widgets(window) == []


def test_every_action_has_a_text(window):
    assert len(all_actions(window)) > 40
    assert unnamed_actions(window) == []


def test_the_walk_finds_an_unnamed_button_and_action(window):
    QPushButton(parent=window.palette.widget())  # an icon-only button someone forgot to name
    window.addAction(QAction(window))
    assert any("QPushButton" in entry for entry in unnamed_widgets(window))
    assert len(unnamed_actions(window)) == 1


def test_every_menu_opens_with_its_own_alt_key(window):
    titles = [action.text() for action in window.menuBar().actions()]
    assert all("&" in title for title in titles), titles
    keys = [title[title.index("&") + 1].lower() for title in titles]
    assert len(keys) == len(set(keys)), f"clashing mnemonics: {titles}"


def key(window, key, modifiers=Qt.KeyboardModifier.NoModifier):
    target = QApplication.focusWidget() or window
    QTest.keyClick(target, key, modifiers)


def test_open_generate_pick_apply_export_from_the_keyboard(window, qtbot, tmp_path):
    photo, before, after = fake_backend.scene(size=64)
    Image.fromarray(photo).save(tmp_path / "scene.png")
    answers = [tmp_path / "scene.png", tmp_path / "out.png"]
    window.ask_path = lambda *args, **kwargs: answers.pop(0)
    window.activateWindow()

    key(window, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier)
    assert window.document.is_open and window.document.image.shape == photo.shape

    key(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)  # to the label search
    assert QApplication.focusWidget() is window.palette.search
    QTest.keyClicks(window.palette.search, "sea")
    key(window, Qt.Key.Key_Return)
    sea = window.document.label_set.id_of("sea")
    assert window.document.active_label == sea

    edit = window.document.edit("Paint")  # the painting itself: the one step that needs the mouse
    edit.paint(0, 0, after != before, sea)
    edit.commit()

    window.gallery.add_backend_choice("Fake", fake_backend.NAME)
    window.gallery.samples.setValue(2)
    key(window, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(window.document.candidates) == 2, timeout=20_000)

    key(window, Qt.Key.Key_J, Qt.KeyboardModifier.ControlModifier)  # to the candidates
    assert QApplication.focusWidget() is window.gallery.tree
    key(window, Qt.Key.Key_Down)
    key(window, Qt.Key.Key_Return)
    assert len(window.document.history) == 1, window.errors
    assert not np.array_equal(window.document.image, photo)

    key(window, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)
    assert (tmp_path / "out.png").is_file(), window.errors
    with Image.open(tmp_path / "out.png") as exported:
        assert np.array_equal(np.asarray(exported.convert("RGB")), window.document.image)


def test_tab_visits_every_visible_control_once_and_comes_back(window):
    window.activateWindow()
    window.canvas.setFocus()
    visited = []
    for _ in range(200):
        QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        if QApplication.focusWidget() is window.canvas:
            break
        visited.append(QApplication.focusWidget())
    else:
        pytest.fail("Tab never came back to the canvas")
    reachable = {w for w in window.findChildren(QWidget)
                 if isinstance(w, INTERACTIVE) and not internal(w, window) and w.isVisible() and w.isEnabled()
                 and w.focusPolicy() & Qt.FocusPolicy.TabFocus and w is not window.canvas}
    assert len(visited) == len(set(visited))
    assert reachable - set(visited) == set(), [spoken_name(w) for w in reachable - set(visited)]
    order = [spoken_name(w) for w in visited]
    assert order.index("Generate") < order.index("Candidates") < order.index("Apply")
