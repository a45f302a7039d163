"""A new user's first ten minutes (issue 17), in the real main window: each snag of that walk as a test.

Layouts that do not move under the cursor, a toolbar that fits 1280 px, the result visible after Apply, one
model chooser and one Generate per mode, no state leaking between documents, no stale failed group, and a
discoverable before/after compare (View menu, a tap or a hold of `\\`, a divider dragged on the canvas)."""

from types import SimpleNamespace as Info

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QKeyEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from tests import fake_backend
from tests.conftest import show_main_window

TIMEOUT = 20_000


@pytest.fixture
def files(tmp_path):
    photo, before, after = fake_backend.scene(size=64)
    Image.fromarray(photo).save(tmp_path / "scene.png")
    Image.fromarray(before.astype(np.uint8)).save(tmp_path / "scene-labels.png")
    Image.fromarray(np.full((48, 64), 120, np.uint8), "L").save(tmp_path / "gray.png")
    return Info(photo=tmp_path / "scene.png", labels=tmp_path / "scene-labels.png", gray=tmp_path / "gray.png",
                after=after)


@pytest.fixture
def win(qtbot, monkeypatch):
    window = show_main_window(qtbot, monkeypatch, size=(1280, 800))
    yield window
    window.gallery.bridge.shutdown()


def open_edit(win, files):
    """The photo with its label map, and the fake backend's edit painted in (as a stroke would)."""
    assert win.open_path(files.photo, labels=files.labels), win.errors
    doc = win.document
    doc.labels[:] = files.after
    win.gallery.add_backend_choice("Fake", fake_backend.NAME)
    win.gallery.samples.setValue(2)
    return doc


def generate(qtbot, win, count, **params):
    assert win.gallery.generate(params or None) is not None
    qtbot.waitUntil(lambda: len(win.document.candidates) >= count or bool(win.errors), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not win.gallery.bridge.busy(), timeout=TIMEOUT)


def key(win, kind, auto_repeat=False):
    """`\\` down or up, as the window system delivers it to the focused widget."""
    target = QApplication.focusWidget() or win.canvas
    QApplication.sendEvent(target, QKeyEvent(kind, Qt.Key.Key_Backslash, Qt.KeyboardModifier.NoModifier, "\\",
                                             auto_repeat))


def test_both_toolbars_fit_a_1280_px_window(win, qtbot):
    win.resize(1280, 800)
    qtbot.waitUntil(lambda: win.width() == 1280)
    for name, toolbar in win.toolbars.items():
        hidden = [action.text() for action in toolbar.actions()
                  if toolbar.widgetForAction(action) is not None and not toolbar.widgetForAction(action).isVisible()]
        assert hidden == [], f"{name} toolbar overflows at 1280 px: {hidden}"
        assert toolbar.geometry().right() < 1280
    assert win.toolbars["options"].y() > win.toolbars["tools"].y(), "two rows: tools, then options and view"


def test_the_label_list_does_not_move_when_the_recent_section_fills(win, files, qtbot):
    open_edit(win, files)
    palette = win.palette
    qtbot.waitUntil(lambda: palette.labels.isVisible())
    top = palette.labels.mapTo(palette, QPoint(0, 0)).y()
    assert palette.recent.isVisible() and palette.recent_title.isVisible(), "the section is there from the start"
    for label in (148, 154, 123):
        win.document.set_active_label(label)
        win.document.note_used(label)  # what a stroke does
        QApplication.processEvents()
        assert palette.labels.mapTo(palette, QPoint(0, 0)).y() == top, "the list moved under the cursor"
    assert palette.recent.count() == 3


def test_the_first_colour_hint_does_not_move_the_colorize_button(win, files, qtbot):
    assert win.open_path(files.gray), win.errors
    panel = win.colorize_panel
    qtbot.waitUntil(lambda: panel.generate_button.isVisible())
    qtbot.wait(100)  # the docks settle after the mode's panels were shown and hidden
    where = {name: widget.mapTo(panel, QPoint(0, 0)).y() for name, widget in
             (("colorize", panel.generate_button), ("tolerance", panel.tolerance), ("size", panel.size_spin))}
    panel.ask_colour = lambda initial: QColor(20, 90, 220)
    panel.choose_colour()  # the first recent colour: the swatch row fills in
    win.select_tool("hint")
    QTest.mouseClick(win.canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     win.canvas.mapFromScene(QPointF(20.5, 20.5)))
    QApplication.processEvents()
    assert len(win.document.hints) == 1 and panel.recent_buttons[0].isVisible()
    after = {name: widget.mapTo(panel, QPoint(0, 0)).y() for name, widget in
             (("colorize", panel.generate_button), ("tolerance", panel.tolerance), ("size", panel.size_spin))}
    assert after == where


def test_after_apply_the_result_shows_without_the_overlay_and_v_brings_the_labels_back(win, files, qtbot):
    doc = open_edit(win, files)
    assert doc.view_mode == "both"
    generate(qtbot, win, 2)
    candidate = doc.candidates[0]
    assert win.gallery.apply(candidate.id)
    assert doc.view_mode == "photo" and not win.canvas.overlay_item.isVisible()
    x0, y0, x1, y1 = candidate.meta["box"]
    np.testing.assert_array_equal(doc.image[y0:y1, x0:x1], candidate.image)
    assert "V shows the labels" in win.statusBar().currentMessage()
    QTest.keyClick(win, Qt.Key.Key_V)
    assert doc.view_mode == "both", "the previous view, one key away"
    QTest.keyClick(win, Qt.Key.Key_V)
    assert doc.view_mode == "photo"


def test_each_mode_has_one_model_chooser_one_generate_and_its_own_panels(win, files, qtbot):
    models = [Info(name="demo-coltran", kind="coltran", title="ColTran"),
              Info(name="demo-asapnet", kind="asapnet", title="ASAPNet"),
              Info(name="demo-asset", kind="asset", title="ASSET")]
    # the shown gallery lists the installed models off the UI thread: let that listing land before replacing it
    qtbot.waitUntil(lambda: bool(win.gallery.models), timeout=TIMEOUT)
    win.gallery.set_models(models)
    size = win.size()
    assert win.open_path(files.gray), win.errors
    qtbot.waitUntil(lambda: win.colorize_panel.isVisible())
    qtbot.wait(50)
    assert win.size() == size, "switching the mode's panels does not grow the window past the screen"
    assert not win.gallery.controls.isVisible() and not win.palette.isVisible()
    assert win.gallery.isVisible(), "the gallery shows the colourings"
    assert win.tool.name == "hint"

    assert win.new_from_label_map(files.labels), win.errors
    qtbot.waitUntil(lambda: win.gallery.controls.isVisible())
    assert not win.colorize_panel.isVisible() and win.palette.isVisible()
    qtbot.wait(50)
    assert win.size() == size
    listed = [win.gallery.model_box.itemData(i) for i in range(win.gallery.model_box.count())]
    assert listed == ["asapnet\tdemo-asapnet"], "translate mode lists only its engines: no ColTran"
    assert win.tool.name == "brush" and not win.actions["tool_hint"].isEnabled(), "no hint tool left over"
    win.select_tool("hint")
    assert win.tool.name == "brush", "another mode's tool cannot be picked"

    assert win.open_path(files.photo, labels=files.labels), win.errors
    listed = [win.gallery.model_box.itemData(i) for i in range(win.gallery.model_box.count())]
    assert listed == ["asset\tdemo-asset", "asapnet\tdemo-asapnet"]
    assert win.document.view_mode == "both" and win.tool.name == "brush"


def test_a_failed_generate_leaves_no_stale_group_and_a_later_failure_is_marked(win, files, qtbot):
    open_edit(win, files)
    generate(qtbot, win, 0, fail="input")
    qtbot.waitUntil(lambda: bool(win.errors), timeout=TIMEOUT)
    assert "no editable class" in win.errors[0]
    qtbot.waitUntil(lambda: win.gallery.tree.topLevelItemCount() == 0, timeout=TIMEOUT)
    assert win.workspace.groups == {}

    win.errors.clear()
    generate(qtbot, win, 2)
    candidate = win.document.candidates[0]
    group = win.workspace.groups[candidate.request_id]
    # more of the same group with a request that fails: the group keeps its candidates and says why
    from dataclasses import replace

    failing = replace(group.request, params={"fail": "input"}, seed=50, k=1)
    win.workspace._submit(group, failing, supersede=False)
    qtbot.waitUntil(lambda: group.status.startswith("failed"), timeout=TIMEOUT)
    assert "no editable class" in group.status
    item = win.gallery._group_item(group.id)
    assert "failed: fake model" in item.text(0) and group.candidate_ids


def test_compare_is_in_the_view_menu_and_the_shortcut_sheet(win):
    view = [action.text() for action in win.menus["view"].actions()]
    assert "&Before/After\t\\" in view and "Compare &Split" in view
    assert win.actions["compare_split"].shortcut().toString() == "Shift+\\"
    sheet = dict(win.shortcut_table())
    assert sheet["Show the original photo while held"] == "hold \\"
    assert "Move the compare divider" in sheet and sheet["Before/After: the original photo or the result"] == "\\"


def test_backslash_tap_toggles_and_hold_shows_the_original_while_held(win, files, qtbot, monkeypatch):
    doc = open_edit(win, files)
    generate(qtbot, win, 2)
    candidate = doc.candidates[0]
    assert win.gallery.apply(candidate.id)
    canvas = win.canvas
    result = canvas.photo_item.buffer
    assert result is doc.image

    key(win, QEvent.Type.KeyPress)  # a tap: toggles
    key(win, QEvent.Type.KeyRelease)
    assert canvas.before and canvas.photo_item.buffer is doc.photo.rgb, "the original photo, not the result"
    key(win, QEvent.Type.KeyPress)
    key(win, QEvent.Type.KeyRelease)
    assert not canvas.before and canvas.photo_item.buffer is doc.image

    clock = [100.0]
    monkeypatch.setattr("app.canvas.time.monotonic", lambda: clock[0])
    key(win, QEvent.Type.KeyPress)  # a hold, with the window system's auto-repeat in between
    assert canvas.before
    for _ in range(3):
        clock[0] += 0.1
        key(win, QEvent.Type.KeyRelease, auto_repeat=True)
        key(win, QEvent.Type.KeyPress, auto_repeat=True)
        assert canvas.before
    clock[0] += 0.2
    key(win, QEvent.Type.KeyRelease)
    assert not canvas.before, "released after a hold: back to the result"

    win.gallery.tree.setCurrentItem(win.gallery._item(doc.candidates[1].id))  # a previewed candidate hides too
    assert win.gallery.preview.isVisible()
    win.actions["before_after"].trigger()
    assert canvas.before and not win.gallery.preview.isVisible()
    win.actions["before_after"].trigger()
    assert win.gallery.preview.isVisible()

    win.palette.search.setFocus()
    key(win, QEvent.Type.KeyPress)  # typing a backslash into a text field is typing
    assert not canvas.before


def test_the_split_divider_drags_on_the_canvas_and_follows_zoom(win, files, qtbot):
    doc = open_edit(win, files)
    generate(qtbot, win, 2)
    gallery = win.gallery
    gallery.tree.setCurrentItem(gallery._item(doc.candidates[0].id))
    preview = gallery.preview
    win.actions["compare_split"].trigger()
    assert preview.split == pytest.approx(0.5) and gallery.split.value() == 500
    viewport = win.canvas.viewport()

    def divider_view():
        return win.canvas.mapFromScene(QPointF(preview.divider_x(), preview.pos().y() + 2))

    for zoom in (None, 3.0):
        if zoom:
            win.canvas.set_zoom(zoom, QPointF(preview.divider_x(), preview.pos().y() + 2))
        start = divider_view()
        QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
        target = win.canvas.mapFromScene(QPointF(preview.pos().x() + preview.image.width() * 0.25,
                                                 preview.pos().y() + 2))
        QTest.mouseMove(viewport, target)
        QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, target)
        assert preview.split == pytest.approx(0.25, abs=0.03 if zoom is None else 0.01)
        assert gallery.split.value() == round(preview.split * 1000), "the dock's slider follows"
        assert doc.labels.tolist() == files.after.tolist(), "the drag did not paint"
        win.actions["compare_split"].setChecked(False)
        win.actions["compare_split"].setChecked(True)
    win.actions["compare_split"].setChecked(False)
    assert preview.split == 1.0 and preview.divider_x() is None


def test_a_photo_without_a_label_map_says_how_to_get_one_when_the_engine_refuses(win, files, qtbot):
    assert win.open_path(files.photo), win.errors  # no label map: every pixel unlabeled
    win.document.labels[10:20, 10:20] = 154
    win.gallery.add_backend_choice("Fake", fake_backend.NAME)
    generate(qtbot, win, 0, fail="input")  # as ASSET does: "label id 255 is outside the 182 classes"
    qtbot.waitUntil(lambda: bool(win.errors), timeout=TIMEOUT)
    assert "no label map yet" in win.errors[-1] and "Open Label Map" in win.errors[-1]
    qtbot.waitUntil(lambda: win.workspace.groups == {}, timeout=TIMEOUT)
    win.document.labels[:] = 123  # labelled with Fill: grass everywhere
    assert win.keep_labels_as_map()
    assert (win.document.original_labels == 123).all() and win.document.undo_stack.count() == 0
    win.document.labels[10:20, 10:20] = 154  # then the change
    win.errors.clear()
    assert win.gallery.generate() is not None and win.errors == []


def test_enter_in_the_label_search_hands_the_keys_back_to_the_editor(win, files, qtbot):
    open_edit(win, files)
    win.activateWindow()
    win.find_label()
    qtbot.waitUntil(lambda: win.palette.search.hasFocus())
    QTest.keyClicks(win.palette.search, "sea")
    QTest.keyClick(win.palette.search, Qt.Key.Key_Return)
    assert win.document.active_label == 154
    assert not win.palette.search.hasFocus()
    QTest.keyClick(win, Qt.Key.Key_G)
    assert win.tool.name == "fill" and win.palette.search.text() == "sea"
