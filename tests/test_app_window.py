"""The real MainWindow driven like a user: mouse strokes on the canvas, shortcuts, files in and out."""

import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest

from app.main_window import MainWindow
from engine.labels import load_label_set

SKY, GRASS, ROCK, UNLABELED = 156, 123, 149, 255
WIDTH, HEIGHT = 120, 80


def landscape_rgb(width=WIDTH, height=HEIGHT, seed=0):
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 2] = (110, 160, 235)
    rgb[height // 2:] = (50, 150, 40)
    rgb[50:70, 20:60] = (40, 40, 45)
    return np.clip(rgb.astype(np.int16) + rng.integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def photo_path(tmp_path):
    path = tmp_path / "valley.jpg"
    Image.fromarray(landscape_rgb()).save(path, quality=90)
    return path


@pytest.fixture
def labels_path(tmp_path):
    labels = np.full((HEIGHT, WIDTH), GRASS, np.uint8)
    labels[: HEIGHT // 2] = SKY
    path = tmp_path / "valley-labels.png"
    Image.fromarray(labels).save(path)
    return path


@pytest.fixture
def window(qtbot, monkeypatch):
    win = MainWindow()
    win.errors = []
    win.answers = []
    monkeypatch.setattr(win, "show_error", lambda message, title="": win.errors.append(message))
    monkeypatch.setattr(win, "ask_save_changes", lambda: win.answers.pop(0) if win.answers else "discard")
    qtbot.addWidget(win)
    win.resize(900, 650)
    win.show()
    qtbot.waitExposed(win)
    return win


@pytest.fixture
def opened(window, photo_path, labels_path):
    assert window.open_path(photo_path, labels=labels_path)
    return window


def view_point(window, x, y):
    return window.canvas.mapFromScene(QPointF(x + 0.5, y + 0.5))


def drag(window, points, button=Qt.MouseButton.LeftButton):
    viewport = window.canvas.viewport()
    QTest.mousePress(viewport, button, Qt.KeyboardModifier.NoModifier, view_point(window, *points[0]))
    for point in points[1:]:
        QTest.mouseMove(viewport, view_point(window, *point))
    QTest.mouseRelease(viewport, button, Qt.KeyboardModifier.NoModifier, view_point(window, *points[-1]))


def keys(window, sequence):
    QTest.keySequence(window, sequence)


def test_brush_stroke_fill_undo_redo_through_mouse_and_shortcuts(opened):
    window, doc = opened, opened.document
    start = doc.labels.copy()
    np.testing.assert_array_equal(start[:40], SKY)
    keys(window, "B")
    assert window.tool.name == "brush"
    window.size_spin.setValue(3)
    doc.set_active_label(ROCK)
    drag(window, [(10, 20), (30, 20), (50, 22)])
    painted = doc.labels.copy()
    assert painted[20, 10] == painted[20, 30] == painted[22, 50] == ROCK
    assert painted[20, 60] == SKY and painted[30, 30] == SKY
    assert doc.undo_stack.count() == 1 and window.isWindowModified()

    keys(window, "G")
    assert window.tool.name == "fill"
    doc.set_active_label(GRASS)
    drag(window, [(100, 5)])  # the sky region (contiguous), which the rock stroke does not split
    filled = doc.labels.copy()
    assert (filled[:40][painted[:40] == SKY] == GRASS).all() and filled[20, 30] == ROCK

    keys(window, "Ctrl+Z")
    np.testing.assert_array_equal(doc.labels, painted)
    keys(window, "Ctrl+Z")
    np.testing.assert_array_equal(doc.labels, start)
    assert not window.isWindowModified()
    keys(window, "Ctrl+Shift+Z")
    np.testing.assert_array_equal(doc.labels, painted)
    keys(window, "Ctrl+Y")
    np.testing.assert_array_equal(doc.labels, filled)
    assert doc.recent_labels[:2] == [GRASS, ROCK]
    assert window.palette.recent.count() == 2


def test_shortcuts_pick_tools_and_size_and_zoom(opened):
    window = opened
    for key, name in [("E", "eraser"), ("I", "picker"), ("L", "lasso"), ("R", "rectangle"), ("B", "brush")]:
        keys(window, key)
        assert window.tool.name == name
    radius = window.settings.radius
    keys(window, "]")
    assert window.settings.radius > radius and window.size_spin.value() == window.settings.radius
    keys(window, "[")
    keys(window, "[")
    assert window.settings.radius < radius
    keys(window, "1")
    assert window.canvas.zoom == pytest.approx(1.0)
    keys(window, "+")
    assert window.canvas.zoom == pytest.approx(1.25)
    keys(window, "0")
    assert window.canvas.zoom > 4  # a 120x80 photo fitted into the window


def test_eyedropper_hover_names_the_label_in_the_status_bar(opened):
    window = opened
    keys(window, "I")
    QTest.mouseMove(window.canvas.viewport(), view_point(window, 5, 60))
    assert "grass (123)" in window.hover_label.text()
    drag(window, [(5, 5)])
    assert window.document.active_label == SKY
    assert "sky-other" in window.palette.active.text()
    keys(window, "B")  # right-click picks with any tool, without painting
    labels = window.document.labels.copy()
    drag(window, [(5, 60)], button=Qt.MouseButton.RightButton)
    assert window.document.active_label == GRASS
    np.testing.assert_array_equal(window.document.labels, labels)


def test_view_modes_and_overlay_opacity(opened):
    window, canvas = opened, opened.canvas
    window.opacity_slider.setValue(80)
    assert canvas.overlay_item.opacity() == pytest.approx(0.8)
    window.actions["view_labels"].trigger()
    assert not canvas.photo_item.isVisible() and canvas.overlay_item.opacity() == 1.0
    window.actions["view_photo"].trigger()
    assert canvas.photo_item.isVisible() and not canvas.overlay_item.isVisible()
    window.document.set_active_label(ROCK)
    drag(window, [(60, 60)])
    window.actions["view_outline"].trigger()
    assert canvas.outline_item.isVisible()
    bounds = canvas.outline_item.path().boundingRect()
    assert bounds.contains(QPointF(60, 60)) and bounds.width() < 60


def test_save_close_reopen_round_trips_exactly(opened, photo_path, tmp_path, qtbot):
    window, doc = opened, opened.document
    doc.set_active_label(ROCK)
    drag(window, [(10, 10), (40, 30)])
    edited, original = doc.labels.copy(), doc.original_labels.copy()
    project_path = tmp_path / "work.sgraffito"
    assert window.save_as(project_path)
    assert not window.isWindowModified() and window.windowTitle().startswith("work.sgraffito")
    window.close()
    assert window.errors == []

    again = MainWindow()
    qtbot.addWidget(again)
    assert again.open_path(project_path)
    reopened = again.document
    assert reopened.photo.data == photo_path.read_bytes()
    np.testing.assert_array_equal(reopened.labels, edited)
    np.testing.assert_array_equal(reopened.original_labels, original)
    assert reopened.path == project_path and not reopened.dirty
    # a further edit then Save writes to the same file without asking
    reopened.set_active_label(SKY)
    again.tools["fill"].fill(100, 70, everywhere=False)
    assert again.save()
    assert (MainWindow().open_path(project_path))


def test_closing_with_unsaved_changes_asks(opened, tmp_path, monkeypatch):
    window = opened
    window.document.set_active_label(ROCK)
    drag(window, [(10, 10)])
    window.answers = ["cancel"]
    assert not window.close() and window.isVisible()
    saved = tmp_path / "asked.sgraffito"
    monkeypatch.setattr(window, "ask_path", lambda *a, **k: saved)
    window.answers = ["save"]
    assert window.close()
    assert saved.is_file()


def test_opening_over_unsaved_work_can_be_cancelled(opened, photo_path):
    window = opened
    window.document.set_active_label(ROCK)
    drag(window, [(10, 10)])
    labels = window.document.labels.copy()
    window.answers = ["cancel"]
    assert not window.open_path(photo_path)
    np.testing.assert_array_equal(window.document.labels, labels)
    window.answers = ["discard"]
    assert window.open_path(photo_path)
    assert (window.document.labels == UNLABELED).all()


def test_new_document_starts_unlabeled_in_the_landscape_palette(window, photo_path):
    assert window.open_path(photo_path)
    doc = window.document
    assert (doc.labels == UNLABELED).all() and doc.mode == "edit" and not window.banner.isVisible()
    assert doc.label_set.name == "coco-stuff-182"
    names = [window.palette.labels.item(i).text() for i in range(window.palette.labels.count())]
    assert names[0].startswith("sky-other") and len(names) == len(doc.label_set.subsets["landscape"]) + 1
    assert names[-1] == "unlabeled  (255)"
    doc.set_active_label(ROCK)
    drag(window, [(30, 30)])
    last = window.palette.labels.item(window.palette.labels.count() - 1)
    window.palette.labels.itemClicked.emit(last)
    assert doc.active_label == UNLABELED
    drag(window, [(30, 30)])
    assert (doc.labels == UNLABELED).all()
    window.palette.search.setText("riv")
    assert [window.palette.labels.item(i).text() for i in range(window.palette.labels.count())] == ["river  (147)"]


def test_label_map_alone_opens_in_translation_mode(window, labels_path):
    assert window.new_from_label_map(labels_path)
    doc = window.document
    assert doc.photo is None and doc.image is None and doc.mode == "translate"
    assert doc.view_mode == "labels" and not window.canvas.photo_item.isVisible()
    assert window.banner.isVisible() and "translation" in window.banner.text()
    assert not window.actions["export_image"].isEnabled()
    doc.set_active_label(ROCK)
    drag(window, [(5, 5)])
    assert doc.labels[5, 5] == ROCK


@pytest.mark.parametrize("choice", ["labels", "photo", "cancel"])
def test_a_label_map_opened_as_a_file_asks_how_to_open_it(window, tmp_path, monkeypatch, choice):
    """`sgraffito segment`'s maps (indexed PNG, the set's colours) used to open as a photo, which the demo
    segmenter then labelled from its flat colours. Photos, even palette ones, are not asked about."""
    from engine.commands.segment import write_label_png

    label_set = window.document.label_set
    labels = np.full((HEIGHT, WIDTH), GRASS, np.uint16)
    labels[: HEIGHT // 2] = SKY
    path = tmp_path / "map.png"
    write_label_png(labels, label_set, path)
    asked = []
    monkeypatch.setattr(window, "ask_open_label_map", lambda name, labels: asked.append(name) or choice)
    assert window.open_path(path) == (choice != "cancel"), window.errors
    assert asked == ["map.png"]
    doc = window.document
    if choice == "labels":
        assert doc.mode == "translate" and doc.photo is None and np.array_equal(doc.labels, labels)
    elif choice == "photo":
        assert doc.mode == "edit" and doc.photo is not None and doc.image.shape[:2] == (HEIGHT, WIDTH)
    else:
        assert not doc.is_open

    picture = tmp_path / "palette-photo.png"  # an indexed picture whose palette is not the labels' colours
    Image.fromarray(landscape_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(picture)
    assert window.open_path(picture), window.errors
    assert asked == ["map.png"] and window.document.mode == "edit"


def test_grayscale_photo_opens_in_colorize_mode(window, tmp_path):
    path = tmp_path / "old.png"
    Image.fromarray(landscape_rgb().mean(axis=2).astype(np.uint8)).save(path)
    assert window.open_path(path)
    assert window.document.mode == "colorize"
    assert window.banner.isVisible() and "colorize" in window.banner.text()
    # no label painting here: the brush options and the overlay are greyed out, the status bar names no label
    label_options = (window.size_spin, window.shape_combo, window.global_check, window.only_check,
                     window.opacity_slider)
    assert not any(widget.isEnabled() for widget in label_options)
    window.canvas.hovered.emit(10, 10)
    assert window.hover_label.text() == "x 10, y 10"

    colour = tmp_path / "colour.png"
    Image.fromarray(landscape_rgb()).save(colour)
    assert window.open_path(colour)  # a colour photo: label painting again
    assert all(widget.isEnabled() for widget in label_options)
    window.canvas.hovered.emit(10, 10)
    assert "(" in window.hover_label.text().removeprefix("x 10, y 10")


def test_switching_to_a_label_set_without_the_maps_ids_is_refused(opened):
    window = opened
    index = window.palette.set_combo.findData("cityscapes")
    window.palette.set_combo.activated.emit(index)
    assert window.errors and "cityscapes" in window.errors[0]
    assert window.document.label_set.name == "coco-stuff-182"
    assert window.palette.set_combo.currentData() == "coco-stuff-182"


# ---- bad inputs: a clear message, and the open document stays as it was ------------------------------------


def png_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(
        b"IEND", b"")


def bad_photo(kind, tmp_path, photo_path):
    path = tmp_path / f"bad-{kind}"
    if kind == "truncated.jpg":
        data = photo_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "tiny.png":
        Image.new("RGB", (1, 1)).save(path, format="PNG")
    elif kind == "huge.png":
        path.write_bytes(png_claiming(50000, 50000))
    return path


@pytest.fixture
def snapshot(opened):
    doc = opened.document
    doc.set_active_label(ROCK)
    drag(opened, [(15, 15)])
    state = (doc.photo, doc.labels.copy(), doc.original_labels.copy(), doc.title, doc.undo_stack.count())
    return lambda: (doc.photo, doc.labels.copy(), doc.original_labels.copy(), doc.title, doc.undo_stack.count()), state


def assert_unchanged(snapshot):
    now, before = snapshot[0](), snapshot[1]
    assert now[0] is before[0] and now[3:] == before[3:]
    np.testing.assert_array_equal(now[1], before[1])
    np.testing.assert_array_equal(now[2], before[2])


@pytest.mark.parametrize("kind, words", [("truncated.jpg", "truncated"), ("tiny.png", "1x1"),
                                         ("huge.png", "50000x50000")])
def test_bad_photos_show_an_error_and_keep_the_document(opened, snapshot, tmp_path, photo_path, kind, words):
    window = opened
    window.answers = ["discard"]
    path = bad_photo(kind, tmp_path, photo_path)
    assert not window.open_path(path)
    assert len(window.errors) == 1 and words in window.errors[0] and path.name in window.errors[0]
    assert_unchanged(snapshot)


def test_label_map_of_the_wrong_size_is_refused(opened, snapshot, tmp_path):
    path = tmp_path / "small-labels.png"
    Image.fromarray(np.full((40, 60), GRASS, np.uint8)).save(path)
    assert not opened.open_label_map(path)
    assert "60x40" in opened.errors[0] and "120x80" in opened.errors[0]
    assert_unchanged(snapshot)


def test_label_ids_outside_the_set_are_refused(opened, snapshot, tmp_path):
    labels = np.full((HEIGHT, WIDTH), GRASS, np.uint8)
    labels[3, 7] = 200  # coco-stuff-182 has 0..181 and 255
    path = tmp_path / "odd-labels.png"
    Image.fromarray(labels).save(path)
    assert not opened.open_label_map(path)
    assert "200" in opened.errors[0] and "x=7, y=3" in opened.errors[0]
    assert_unchanged(snapshot)


def test_open_label_map_is_a_new_starting_point(opened, tmp_path):
    doc = opened.document
    doc.set_active_label(SKY)
    drag(opened, [(60, 60)])
    labels = np.full((HEIGHT, WIDTH), ROCK, np.uint8)
    path = tmp_path / "rock.png"
    Image.fromarray(labels).save(path)
    assert opened.open_label_map(path)
    assert (doc.labels == ROCK).all() and (doc.original_labels == ROCK).all()
    assert doc.undo_stack.count() == 0 and doc.dirty and opened.isWindowModified()
    assert opened.canvas.overlay[10, 10, 3] == 255  # recoloured
    doc.set_active_label(SKY)
    drag(opened, [(30, 30)])
    keys(opened, "E")
    drag(opened, [(30, 30)])
    assert (doc.labels == ROCK).all()


def test_corrupted_project_is_refused(opened, snapshot, tmp_path):
    good = tmp_path / "good.sgraffito"
    assert opened.save_as(good)
    data = good.read_bytes()
    broken = tmp_path / "broken.sgraffito"
    broken.write_bytes(data[: len(data) // 3])
    assert not opened.open_path(broken)
    assert "broken.sgraffito" in opened.errors[0]
    assert_unchanged(snapshot)


def test_project_with_a_parent_path_member_is_refused(opened, snapshot, tmp_path):
    path = tmp_path / "escape.sgraffito"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", '{"format": "sgraffito-project", "format_version": [1, 0]}')
        archive.writestr("../evil.txt", "x")
    assert not opened.open_path(path)
    assert "../evil.txt" in opened.errors[0] and "outside" in opened.errors[0]
    assert_unchanged(snapshot)


# ---- autosave and recovery ----------------------------------------------------------------------------------


def test_autosave_is_offered_for_recovery_after_a_crash(opened, qtbot, monkeypatch):
    window, doc = opened, opened.document
    doc.set_active_label(ROCK)
    drag(window, [(30, 30)])
    window.autosave(wait=True)
    job = window.autosave_job
    window.autosave(wait=True)
    assert window.autosave_job is job  # nothing changed since: no second write
    edited = doc.labels.copy()
    # a crash: the window never closes, so its autosave stays behind
    fresh = MainWindow()
    qtbot.addWidget(fresh)
    offered = []
    monkeypatch.setattr(fresh, "ask_recover", lambda text: offered.append(text) or True)
    assert fresh.offer_recovery()
    assert "valley.jpg" in offered[0]
    np.testing.assert_array_equal(fresh.document.labels, edited)
    assert fresh.document.dirty and fresh.isWindowModified()
    # recovered once: the next start offers nothing
    later = MainWindow()
    qtbot.addWidget(later)
    monkeypatch.setattr(later, "ask_recover", lambda text: pytest.fail("offered twice"))
    assert not later.offer_recovery()
    fresh.document.unsaved = False


def test_a_clean_close_leaves_no_autosave(opened, qtbot, monkeypatch):
    window = opened
    window.document.set_active_label(ROCK)
    drag(window, [(30, 30)])
    window.autosave(wait=True)
    window.answers = ["discard"]
    assert window.close()
    fresh = MainWindow()
    qtbot.addWidget(fresh)
    monkeypatch.setattr(fresh, "ask_recover", lambda text: pytest.fail("nothing to recover"))
    assert not fresh.offer_recovery()


def test_label_sets_other_than_the_default_work(window, tmp_path):
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[:10] = 7
    path = tmp_path / "city.png"
    Image.fromarray(labels).save(path)
    assert window.new_from_label_map(path, load_label_set("cityscapes"))
    assert window.document.label_set.name == "cityscapes"
    assert window.palette.set_combo.currentData() == "cityscapes"
    assert not window.palette.subset_check.isVisible()
    assert window.palette.labels.count() >= 30


# ---- export -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp"])
def test_export_writes_the_native_size_with_metadata(opened, tmp_path, suffix):
    from engine.export import read_export_metadata

    window = opened
    path = tmp_path / f"out{suffix}"
    assert window.export_image(path)
    found = read_export_metadata(path)
    assert found["size"] == (WIDTH, HEIGHT)
    assert found["software"].startswith("Sgraffito")
    assert found["parameters"]["Source"] == "valley.jpg"
    assert found["digital_source_type"] is None  # nothing generated was applied yet
    if suffix == ".png":
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), window.document.image)


def test_export_marks_applied_candidates_as_ai_composites(opened, tmp_path):
    from engine.export import COMPOSITE_WITH_AI, read_export_metadata

    doc = opened.document
    patch = np.full((10, 10, 3), 200, np.uint8)
    doc.write_patch("image", 5, 5, patch, "Apply candidate")
    doc.history.append({"model": "asapnet-landscape", "seed": 7})
    assert (doc.image[5:15, 5:15] == 200).all() and doc.dirty
    path = tmp_path / "composite.png"
    assert opened.export_image(path)
    found = read_export_metadata(path)
    assert found["digital_source_type"] == COMPOSITE_WITH_AI
    assert found["parameters"]["History"] == [{"model": "asapnet-landscape", "seed": 7}]
    opened.document.undo_stack.undo()
    assert not (doc.image[5:15, 5:15] == 200).all()


def test_export_label_map_is_an_indexed_png_with_the_palette(opened, tmp_path):
    doc = opened.document
    doc.set_active_label(ROCK)
    drag(opened, [(60, 60)])
    path = tmp_path / "labels.png"
    assert opened.export_label_map(path)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), doc.labels)
        palette = image.getpalette()
        assert tuple(palette[3 * ROCK:3 * ROCK + 3]) == doc.label_set.by_id[ROCK].color


def test_edited_result_round_trips_through_the_project(opened, tmp_path, qtbot):
    doc = opened.document
    doc.write_patch("image", 0, 0, np.zeros((8, 8, 3), np.uint8), "Apply candidate")
    doc.history.append({"model": "test", "seed": 1})
    path = tmp_path / "result.sgraffito"
    assert opened.save_as(path)
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.open_path(path)
    np.testing.assert_array_equal(again.document.image, doc.image)
    assert again.document.history == [{"model": "test", "seed": 1}]


def test_palette_lists_labels_the_map_uses_beyond_the_landscape_subset(window, photo_path, tmp_path):
    labels = np.full((HEIGHT, WIDTH), GRASS, np.uint8)
    labels[:10, :10] = 95  # building-other: not a landscape label
    path = tmp_path / "with-building.png"
    Image.fromarray(labels).save(path)
    assert window.open_path(photo_path, labels=path)
    ids = [window.palette.labels.item(i).data(Qt.ItemDataRole.UserRole)
           for i in range(window.palette.labels.count())]
    assert ids[-2:] == [95, UNLABELED] and GRASS in ids and 0 in ids


def test_wheel_zooms_around_the_cursor_and_space_or_middle_drag_pans(opened):
    window, canvas = opened, opened.canvas
    canvas.set_zoom(8.0)
    target = QPointF(30.5, 20.5)
    under = canvas.mapFromScene(target)
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QWheelEvent

    wheel = QWheelEvent(QPointF(under), QPointF(canvas.viewport().mapToGlobal(under)), QPoint(), QPoint(0, 120),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    canvas.wheelEvent(wheel)
    assert canvas.zoom == pytest.approx(10.0)
    after = canvas.mapToScene(under)
    assert abs(after.x() - target.x()) < 0.2 and abs(after.y() - target.y()) < 0.2

    labels = window.document.labels.copy()
    viewport = canvas.viewport()
    for press in ("middle", "space"):
        before = canvas.mapToScene(viewport.rect().center())
        start, end = viewport.rect().center(), viewport.rect().center() + QPoint(-80, -40)
        if press == "space":
            canvas.setFocus()
            QTest.keyPress(canvas, Qt.Key.Key_Space)
            button = Qt.MouseButton.LeftButton
        else:
            button = Qt.MouseButton.MiddleButton
        QTest.mousePress(viewport, button, Qt.KeyboardModifier.NoModifier, start)
        QTest.mouseMove(viewport, end)
        QTest.mouseRelease(viewport, button, Qt.KeyboardModifier.NoModifier, end)
        if press == "space":
            QTest.keyRelease(canvas, Qt.Key.Key_Space)
        moved = canvas.mapToScene(viewport.rect().center()) - before
        assert moved.x() == pytest.approx(8, abs=0.5) and moved.y() == pytest.approx(4, abs=0.5)
    np.testing.assert_array_equal(window.document.labels, labels)  # panning never paints


def test_typing_in_the_label_search_does_not_switch_tools(opened):
    window = opened
    window.palette.search.setFocus()
    QTest.keyClicks(window.palette.search, "bridge")
    assert window.palette.search.text() == "bridge" and window.tool.name == "brush"
    QTest.keyClick(window.palette.search, Qt.Key.Key_Return)
    assert window.document.active_label == 94


def test_polygon_lasso_by_clicks_and_rectangle_by_drag(opened):
    window, doc = opened, opened.document
    doc.set_active_label(ROCK)
    keys(window, "L")
    viewport = window.canvas.viewport()
    for corner in [(70, 45), (110, 45), (110, 75)]:
        QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         view_point(window, *corner))
    QTest.mouseClick(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, view_point(window, 70, 75))
    window.canvas.setFocus()
    QTest.keyClick(window.canvas, Qt.Key.Key_Return)
    assert doc.labels[60, 90] == ROCK and doc.labels[44, 90] == GRASS
    assert doc.undo_stack.count() == 1
    keys(window, "R")
    doc.set_active_label(SKY)
    drag(window, [(5, 45), (15, 55)])
    assert (doc.labels[45:56, 5:16] == SKY).all() and doc.labels[56, 5] == GRASS
    assert doc.undo_stack.count() == 2


def test_export_dialog_asks_jpeg_quality(opened, tmp_path, monkeypatch):
    sizes = {}
    for quality in (30, 95):
        path = tmp_path / f"q{quality}.jpg"
        monkeypatch.setattr(opened, "ask_path", lambda *a, p=path, **k: p)
        monkeypatch.setattr(opened, "ask_quality", lambda q=quality: q)
        assert opened.actions["export_image"].isEnabled()
        opened.actions["export_image"].trigger()
        sizes[quality] = path.stat().st_size
    assert sizes[30] < sizes[95]
    monkeypatch.setattr(opened, "ask_path", lambda *a, **k: tmp_path / "plain")
    opened.actions["export_image"].trigger()
    assert (tmp_path / "plain.png").is_file() and opened.errors == []


def test_dropping_a_photo_opens_it_and_the_shortcut_sheet_lists_the_tools(window, photo_path):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDropEvent

    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(photo_path))])
    drop = QDropEvent(QPointF(100, 100), Qt.DropAction.CopyAction, data, Qt.MouseButton.NoButton,
                      Qt.KeyboardModifier.NoModifier)
    window.dropEvent(drop)
    assert window.document.title == "valley.jpg"
    table = dict(window.shortcut_table())
    assert table["Brush"] == "B" and table["Lasso"] == "L" and "Ctrl+Shift+Z" in table["Redo"]


def test_the_canvas_shows_label_colours_over_the_photo(opened):
    window, doc = opened, opened.document
    doc.set_active_label(ROCK)
    drag(window, [(90, 60)])
    rock = np.array(doc.label_set.by_id[ROCK].color)

    def shown(x, y):
        image = window.canvas.viewport().grab().toImage()
        colour = image.pixelColor(view_point(window, x, y))
        return np.array([colour.red(), colour.green(), colour.blue()])

    window.actions["view_labels"].trigger()
    np.testing.assert_array_equal(shown(90, 60), rock)
    np.testing.assert_array_equal(shown(10, 10), doc.label_set.by_id[SKY].color)
    window.actions["view_photo"].trigger()
    photo = doc.image[60, 90].astype(int)
    assert np.abs(shown(90, 60) - photo).max() <= 2
    window.actions["view_both"].trigger()
    window.opacity_slider.setValue(50)
    assert np.abs(shown(90, 60) - (photo + rock) / 2).max() <= 3


def test_fit_follows_the_window_size_until_the_user_zooms(opened, qtbot):
    window, canvas = opened, opened.canvas
    fitted = canvas.zoom
    window.resize(1200, 900)
    qtbot.waitUntil(lambda: canvas.zoom > fitted * 1.1)
    keys(window, "1")
    window.resize(900, 650)
    qtbot.wait(50)
    assert canvas.zoom == pytest.approx(1.0)


def test_open_recent_lists_opened_and_saved_files(window, photo_path, tmp_path):
    assert window.open_path(photo_path)
    project = tmp_path / "kept.sgraffito"
    assert window.save_as(project)
    window.menus["recent"].aboutToShow.emit()
    actions = window.menus["recent"].actions()
    assert [a.text() for a in actions] == ["kept.sgraffito", "valley.jpg"]
    actions[1].trigger()
    assert window.document.path is None and window.document.title == "valley.jpg"


def test_label_map_document_round_trips_through_a_project(window, labels_path, tmp_path, qtbot):
    assert window.new_from_label_map(labels_path)
    window.document.set_active_label(ROCK)
    drag(window, [(20, 20)])
    edited = window.document.labels.copy()
    path = tmp_path / "map-only.sgraffito"
    assert window.save_as(path)
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.open_path(path)
    doc = again.document
    assert doc.photo is None and doc.image is None and doc.mode == "translate" and doc.title == "map-only.sgraffito"
    np.testing.assert_array_equal(doc.labels, edited)
    assert (doc.original_labels[20, 20] == SKY) and doc.labels[20, 20] == ROCK


def test_hovering_the_canvas_gives_it_the_keys_unless_the_user_is_typing(opened, qtbot):
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QEnterEvent

    window, canvas = opened, opened.canvas
    window.size_spin.setFocus()
    qtbot.waitUntil(window.size_spin.hasFocus)
    enter = QEnterEvent(QPointF(5, 5), QPointF(5, 5), QPointF(5, 5))
    assert enter.type() == QEvent.Type.Enter
    canvas.enterEvent(enter)
    qtbot.waitUntil(canvas.hasFocus)
    window.palette.search.setFocus()
    qtbot.waitUntil(window.palette.search.hasFocus)
    canvas.enterEvent(enter)
    assert window.palette.search.hasFocus()


def test_file_dialogs_open_next_to_the_photo_and_where_the_last_one_chose(window, tmp_path, monkeypatch):
    """Save goes next to the photo when that folder is writable, else where the last dialog chose a file; Open
    starts where the last dialog chose, also in the next session; never in the folder the app was started from."""
    import os
    from pathlib import Path

    from PySide6.QtWidgets import QFileDialog

    shown = []

    def dialog(answer):
        def ask(parent, title, start, file_filter):
            shown.append(start)
            return (str(answer) if answer else "", file_filter)
        return ask

    writable, read_only, chosen = tmp_path / "photos", tmp_path / "wallpapers", tmp_path / "projects"
    for folder in (writable, read_only, chosen):
        folder.mkdir()
    Image.fromarray(landscape_rgb()).save(writable / "lake.png")
    Image.fromarray(landscape_rgb(seed=1)).save(read_only / "dune.png")
    elsewhere = tmp_path / "started-here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert window.open_path(writable / "lake.png")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", dialog(chosen / "lake.sgraffito"))
    assert window.save_as()
    assert shown[-1] == str(writable / "lake.sgraffito")  # next to the photo, with the suggested name
    assert (chosen / "lake.sgraffito").is_file()

    real_access = os.access  # root may write anywhere, so this folder is read-only by decree
    monkeypatch.setattr("app.main_window.os.access",
                        lambda path, mode: False if Path(path) == read_only else real_access(path, mode))
    assert window.open_path(read_only / "dune.png")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", dialog(None))  # the user cancels
    assert not window.save_as()
    assert shown[-1] == str(chosen / "dune.sgraffito")  # the photo's folder is read-only: the last one chosen

    later = MainWindow()  # a new session remembers the folder
    monkeypatch.setattr(QFileDialog, "getOpenFileName", dialog(None))
    assert later.ask_path("Open", "*") is None
    assert shown[-1] == str(chosen)
    later.close()


@pytest.mark.parametrize("bits", [8, 16])
def test_a_dataset_id_map_asks_how_to_open_it_and_a_grayscale_photo_does_not(window, tmp_path, monkeypatch, bits):
    """COCO-Stuff, ADE20K and SPADE keep label maps as single-channel id PNGs; opened as a file, one used to
    become a dark grayscale photo in colorize mode. A grayscale photo (an unbroken run of levels) is not asked
    about, nor is a single-channel PNG with a level that is no label of the set, nor one flat gray."""
    labels = np.full((HEIGHT, WIDTH), GRASS, np.uint16)
    labels[: HEIGHT // 2] = SKY
    labels[60:, 90:] = UNLABELED
    path = tmp_path / "coco-map.png"
    Image.fromarray(labels.astype(np.uint8) if bits == 8 else labels).save(path)
    asked = []
    monkeypatch.setattr(window, "ask_open_label_map", lambda name, labels: asked.append(name) or "labels")
    assert window.open_path(path), window.errors
    assert asked == ["coco-map.png"]
    doc = window.document
    assert doc.mode == "translate" and doc.photo is None and np.array_equal(doc.labels, labels)

    gray = tmp_path / "foggy-photo.png"  # a flat photo: 40 gray levels, every one of them a COCO-Stuff id
    fog = np.linspace(100, 135, WIDTH)[None, :] + np.random.default_rng(0).normal(0, 1.5, (HEIGHT, WIDTH))
    Image.fromarray(np.clip(fog, 100, 139).astype(np.uint8)).save(gray)
    not_ids = tmp_path / "two-tone.png"  # 200 is no COCO-Stuff id
    Image.fromarray(np.where(labels == SKY, 200, GRASS).astype(np.uint8)).save(not_ids)
    blank = tmp_path / "blank.png"  # one flat gray: a blank picture, even though 119 is an id (fog)
    Image.fromarray(np.full((HEIGHT, WIDTH), 119, np.uint8)).save(blank)
    for picture in (gray, not_ids, blank):
        assert window.open_path(picture), window.errors
        assert window.document.mode == "colorize"
    assert asked == ["coco-map.png"]
