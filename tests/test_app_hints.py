"""Colour hints in the real main window on a grayscale photo: the hint tool adds a hint where the user clicks, in
the chosen colour; drag moves it, right-click deletes it, the wheel resizes it; each is one undo step; hints
are drawn on the canvas and survive saving and reopening the project."""

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from app.hints import DEFAULT_LEVEL, HintsModel
from engine.composite import transfer_chroma

from tests.conftest import show_main_window

W, H = 96, 64
RED = QColor(200, 40, 30)


@pytest.fixture
def window(qtbot, monkeypatch, tmp_path):
    win = show_main_window(qtbot, monkeypatch)
    gray = (np.add.outer(np.arange(H), np.arange(W)) % 200 + 30).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "old.png")
    assert win.open_path(tmp_path / "old.png"), win.errors
    win.select_tool("hint")
    win.colorize_panel.ask_colour = lambda initial: QColor(RED)
    win.colorize_panel.choose_colour()
    yield win
    win.gallery.bridge.shutdown()


def view_point(window, x: float, y: float) -> QPoint:
    """Whole numbers name a photo pixel: aim at its centre, which survives the round trip through view pixels."""
    x, y = (v + 0.5 if isinstance(v, int) else v for v in (x, y))
    return window.canvas.mapFromScene(QPointF(x, y))


def click(window, x, y, button=Qt.MouseButton.LeftButton):
    QTest.mouseClick(window.canvas.viewport(), button, Qt.KeyboardModifier.NoModifier, view_point(window, x, y))


def wheel(window, x, y, steps):
    pos = QPointF(view_point(window, x, y))
    viewport = window.canvas.viewport()
    event = QWheelEvent(pos, QPointF(viewport.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 120 * steps),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(viewport, event)


def hints(window):
    return window.document.hints


def test_grayscale_photo_opens_in_colorize_mode_with_the_panel(window):
    assert window.document.mode == "colorize"
    assert window.colorize_panel.isVisible()
    assert window.tool.name == "hint" and window.actions["tool_hint"].shortcut().toString() == "H"


def test_click_adds_a_hint_in_the_chosen_colour_and_undo_redo(window):
    click(window, 30.4, 20.7)
    assert len(hints(window)) == 1
    hint = hints(window)[0]
    assert (hint["x"], hint["y"]) == (30.5, 20.5), "the centre of the clicked photo pixel"
    assert hint["rgb"] == [200, 40, 30]
    assert hint["radius"] == HintsModel.of(window.document).radius_for(DEFAULT_LEVEL)
    assert window.windowTitle().startswith("old.png") and window.isWindowModified()
    assert window.colorize_panel.hint_list.count() == 1

    window.undo_stack.undo()
    assert hints(window) == []
    assert window.colorize_panel.hint_list.count() == 0
    window.undo_stack.redo()
    assert hints(window) == [hint]


def test_hints_are_drawn_as_coloured_disks(window):
    window.canvas.set_zoom(4.0, QPointF(40, 30))
    click(window, 40.5, 30.5)
    QApplication.processEvents()
    image = window.canvas.viewport().grab().toImage()
    centre = view_point(window, 40.5, 30.5)
    # the colour the result will have: the photo's luminance there with the hint's chroma
    shown = transfer_chroma(window.document.image[30:31, 40:41], np.array([[[200, 40, 30]]], np.uint8))[0, 0]
    assert np.abs(np.array(QColor(image.pixel(centre)).getRgb()[:3]) - shown).max() <= 1
    assert shown[0] > shown[1] + 40, "reddish"
    assert abs(float(shown @ [0.299, 0.587, 0.114]) - window.document.image[30, 40, 0]) <= 1.5
    # outside the disk: the gray photo
    far = view_point(window, 40.5 + 3 * hints(window)[0]["radius"], 30.5)
    r, g, b = QColor(image.pixel(far)).getRgb()[:3]
    assert r == g == b


def test_drag_moves_a_hint_as_one_undo_step(window):
    click(window, 20, 20)
    viewport = window.canvas.viewport()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, view_point(window, 20, 20))
    for x in (30, 45, 60):
        QTest.mouseMove(viewport, view_point(window, x, 40))
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                       view_point(window, 60, 40))
    assert len(hints(window)) == 1, "dragging a hint must not add another"
    assert (hints(window)[0]["x"], hints(window)[0]["y"]) == (60.5, 40.5)
    assert window.undo_stack.count() == 2
    window.undo_stack.undo()
    assert (hints(window)[0]["x"], hints(window)[0]["y"]) == (20.5, 20.5)
    window.undo_stack.redo()
    assert (hints(window)[0]["x"], hints(window)[0]["y"]) == (60.5, 40.5)


def test_right_click_deletes_a_hint_and_elsewhere_still_picks_the_label(window):
    click(window, 20, 20)
    click(window, 70, 40)
    click(window, 70, 40, Qt.MouseButton.RightButton)
    assert [(h["x"], h["y"]) for h in hints(window)] == [(20.5, 20.5)]
    window.undo_stack.undo()
    assert [(h["x"], h["y"]) for h in hints(window)] == [(20.5, 20.5), (70.5, 40.5)]
    window.undo_stack.redo()
    assert len(hints(window)) == 1
    window.document.set_active_label(window.document.label_set.labels[5].id)
    click(window, 80, 10, Qt.MouseButton.RightButton)  # no hint there: picks the (unlabeled) label as before
    assert len(hints(window)) == 1
    assert window.document.active_label == int(window.document.labels[10, 80])


def test_wheel_over_a_hint_resizes_it_and_elsewhere_zooms(window):
    model = HintsModel.of(window.document)
    click(window, 40, 30)
    before = hints(window)[0]["radius"]
    wheel(window, 40, 30, 1)
    wheel(window, 40, 30, 1)
    assert hints(window)[0]["radius"] == model.radius_for(DEFAULT_LEVEL + 2) > before
    assert window.colorize_panel.size_spin.value() == DEFAULT_LEVEL + 2
    window.undo_stack.undo()  # the wheel steps on one hint are one undo step
    assert hints(window)[0]["radius"] == before
    window.undo_stack.redo()
    for _ in range(20):
        wheel(window, 40, 30, -1)
    assert hints(window)[0]["radius"] == model.radius_for(1), "1x1 is the smallest patch"
    zoom = window.canvas.zoom
    wheel(window, 5, 60, 1)
    assert window.canvas.zoom > zoom


def test_colour_button_recolours_the_selected_hint_and_keeps_recent_colours(window):
    panel = window.colorize_panel
    click(window, 40, 30)
    panel.ask_colour = lambda initial: QColor(20, 90, 220)
    panel.choose_colour()
    assert hints(window)[0]["rgb"] == [20, 90, 220]
    assert [c.name() for c in HintsModel.of(window.document).recent[:2]] == ["#145adc", "#c8281e"]
    assert panel.recent_buttons[1].isVisible()
    window.undo_stack.undo()
    assert hints(window)[0]["rgb"] == [200, 40, 30]
    panel.recent_buttons[0].click()  # the blue again, from the recent colours
    assert hints(window)[0]["rgb"] == [20, 90, 220]
    QTest.keyClick(window.canvas, Qt.Key.Key_Escape)  # deselected: a colour is for the next hint only
    panel.recent_buttons[1].click()
    assert hints(window)[0]["rgb"] == [20, 90, 220]
    click(window, 10, 10)
    assert hints(window)[1]["rgb"] == [200, 40, 30]
    QTest.keyClick(window.canvas, Qt.Key.Key_Delete)
    assert len(hints(window)) == 1


def test_hints_survive_save_and_reopen(window, tmp_path):
    click(window, 10, 10)
    click(window, 80, 50)
    wheel(window, 80, 50, 2)
    saved = [dict(h) for h in hints(window)]
    assert window.save_as(tmp_path / "old.sgraffito"), window.errors
    assert not window.isWindowModified()
    assert window.open_path(tmp_path / "old.sgraffito"), window.errors
    assert hints(window) == saved
    assert window.document.mode == "colorize"
    assert window.colorize_panel.hint_list.count() == 2
    click(window, 80, 50, Qt.MouseButton.RightButton)  # the reopened hints are editable
    assert len(hints(window)) == 1


def test_colour_photos_take_no_hints(window, tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (200, 40, 30)
    rgb[:, W // 2:] = (30, 90, 220)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    assert window.open_path(tmp_path / "colour.png"), window.errors
    assert window.document.mode == "edit" and not window.colorize_panel.isVisible()
    window.select_tool("hint")
    click(window, 20, 20)
    assert hints(window) == []
