"""Editing logic without the window: undo patches, brush footprints, fills, regions, smart tools."""

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from app.canvas import Canvas
from app.document import Document
from app.tools import (BrushTool, EraserTool, FillTool, GrabCutTool, LassoTool, PickerTool, RectangleTool,
                       SuperpixelTool, ToolSettings)
from engine.imageio import photo_from_rgb
from engine.labels import load_label_set

SKY, GRASS, ROCK = 156, 123, 149


class Press:
    """Just enough of a QMouseEvent for the tools."""

    def __init__(self, shift=False, ctrl=False):
        self._modifiers = Qt.KeyboardModifier.NoModifier
        if shift:
            self._modifiers |= Qt.KeyboardModifier.ShiftModifier
        if ctrl:
            self._modifiers |= Qt.KeyboardModifier.ControlModifier

    def button(self):
        return Qt.MouseButton.LeftButton

    def modifiers(self):
        return self._modifiers


def scene_rgb(width=96, height=64):
    """Sky above a dark square on grass: three colours with sharp edges for GrabCut and superpixels."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 2] = (110, 160, 235)
    rgb[height // 2:] = (50, 150, 40)
    rgb[20:44, 30:60] = (40, 40, 45)
    return rgb


@pytest.fixture
def doc(qapp):
    document = Document()
    rgb = scene_rgb()
    labels = np.full(rgb.shape[:2], 255, np.uint16)
    labels[: rgb.shape[0] // 2] = SKY
    document.load(label_set=load_label_set("coco-stuff-182"), labels=labels, photo=photo_from_rgb(rgb, "scene.png"))
    return document


@pytest.fixture
def canvas(doc, qtbot):
    view = Canvas(doc)
    qtbot.addWidget(view)
    return view


def make(tool_class, doc, canvas, **settings):
    tool_settings = ToolSettings()
    for key, value in settings.items():
        setattr(tool_settings, key, value)
    tool = tool_class(doc, canvas, tool_settings)
    canvas.set_tool(tool)
    return tool


def stroke(tool, points, **modifiers):
    tool.press(QPointF(*points[0]), Press(**modifiers))
    for point in points[1:]:
        tool.move(QPointF(*point), Press(**modifiers))
    tool.release(QPointF(*points[-1]), Press(**modifiers))


def test_a_stroke_is_one_undo_step_that_stores_only_its_rectangle(doc, canvas):
    before = doc.labels.copy()
    doc.set_active_label(ROCK)
    stroke(make(BrushTool, doc, canvas, radius=3), [(10.5, 40.5), (20.5, 40.5), (30.5, 41.5)])
    assert doc.undo_stack.count() == 1
    command = doc.undo_stack.command(0)
    changed = np.argwhere(doc.labels != before)
    (y0, x0), (y1, x1) = changed.min(axis=0), changed.max(axis=0)
    assert (command.x, command.y, command.after.shape) == (x0, y0, (y1 - y0 + 1, x1 - x0 + 1))
    assert doc.labels[40, 10] == doc.labels[40, 20] == doc.labels[41, 30] == ROCK
    assert doc.labels[40, 34] == 255 and doc.labels[40, 6] == 255  # radius 3 round brush stops there
    assert doc.dirty and doc.recent_labels == [ROCK]
    doc.undo_stack.undo()
    np.testing.assert_array_equal(doc.labels, before)
    assert not doc.dirty
    doc.undo_stack.redo()
    assert doc.labels[40, 20] == ROCK


def test_square_brush_covers_the_corners_a_round_one_leaves(doc, canvas):
    doc.set_active_label(ROCK)
    stroke(make(BrushTool, doc, canvas, radius=4, square=True), [(50.5, 50.5)])
    assert doc.labels[46, 46] == doc.labels[54, 54] == ROCK and doc.labels[55, 50] == 255
    stroke(make(BrushTool, doc, canvas, radius=4, square=False), [(20.5, 50.5)])
    assert doc.labels[46, 16] == 255 and doc.labels[46, 20] == ROCK


def test_eraser_restores_the_original_labels_not_unlabeled(doc, canvas):
    original = doc.labels.copy()
    doc.set_active_label(ROCK)
    stroke(make(BrushTool, doc, canvas, radius=6), [(40.5, 32.5)])  # crosses the sky/unlabeled border
    assert doc.labels[28, 40] == ROCK and doc.labels[36, 40] == ROCK
    stroke(make(EraserTool, doc, canvas, radius=10), [(40.5, 32.5)])
    np.testing.assert_array_equal(doc.labels, original)
    assert doc.undo_stack.count() == 2


def test_fill_is_contiguous_and_shift_fills_everywhere(doc, canvas):
    doc.labels[40:50, 70:80] = SKY  # a second sky island, not connected to the top
    doc.original_labels[...] = doc.labels
    doc.set_active_label(GRASS)
    tool = make(FillTool, doc, canvas)
    tool.press(QPointF(5, 5), Press())
    assert (doc.labels[:32] == GRASS).all() and (doc.labels[40:50, 70:80] == SKY).all()
    doc.undo_stack.undo()
    tool.press(QPointF(5, 5), Press(shift=True))
    assert (doc.labels[40:50, 70:80] == GRASS).all() and (doc.labels[:32] == GRASS).all()
    assert doc.undo_stack.count() == 1


def test_picker_takes_the_label_under_the_cursor(doc, canvas):
    make(PickerTool, doc, canvas).press(QPointF(3, 3), Press())
    assert doc.active_label == SKY


def test_rectangle_and_lasso_fill_what_they_enclose(doc, canvas):
    doc.set_active_label(ROCK)
    stroke(make(RectangleTool, doc, canvas), [(10.2, 40.7), (19.9, 49.1)])
    assert (doc.labels[40:50, 10:20] == ROCK).all() and (doc.labels != 255).sum() == 32 * 96 + 100
    doc.set_active_label(GRASS)
    stroke(make(LassoTool, doc, canvas), [(60, 40), (90, 40), (90, 60), (60, 60), (60, 41)])
    assert doc.labels[50, 75] == GRASS and doc.labels[50, 50] == 255
    assert doc.undo_stack.count() == 2


def test_superpixel_brush_labels_the_whole_region_it_touches(doc, canvas):
    doc.set_active_label(ROCK)
    tool = make(SuperpixelTool, doc, canvas, radius=1)
    stroke(tool, [(45.5, 30.5)])  # inside the dark square
    painted = doc.labels == ROCK
    assert painted.sum() > 9  # more than the 3x3 brush itself
    # the square's superpixels stay inside the square (allowing a pixel of edge blur)
    ys, xs = np.nonzero(painted)
    assert ys.min() >= 19 and ys.max() <= 44 and xs.min() >= 29 and xs.max() <= 60


def test_grabcut_labels_the_object_inside_the_rectangle(doc, canvas):
    doc.set_active_label(ROCK)
    stroke(make(GrabCutTool, doc, canvas), [(24, 14), (66, 50)])
    painted = doc.labels == ROCK
    square = np.zeros_like(painted)
    square[20:44, 30:60] = True
    overlap = (painted & square).sum() / (painted | square).sum()
    assert overlap > 0.8, overlap


def test_overlay_buffer_follows_label_changes_in_the_dirty_rectangle(doc, canvas):
    doc.set_active_label(GRASS)
    stroke(make(BrushTool, doc, canvas, radius=2), [(80.5, 50.5)])
    grass = load_label_set("coco-stuff-182").by_id[GRASS].color
    assert tuple(canvas.overlay[50, 80]) == (*grass, 255)
    assert canvas.overlay[60, 5, 3] == 0  # unlabeled stays transparent
    doc.undo_stack.undo()
    assert canvas.overlay[50, 80, 3] == 0


def test_grabcut_scribbles_refine_the_last_result_in_place(qtbot):
    rgb = scene_rgb()
    rgb[20:44, 30:45] = (200, 40, 40)  # the object: a red left half, the dark right half
    doc = Document()
    doc.load(label_set=load_label_set("coco-stuff-182"), labels=np.full(rgb.shape[:2], 255, np.uint16),
             photo=photo_from_rgb(rgb, "two-tone.png"))
    canvas = Canvas(doc)
    qtbot.addWidget(canvas)
    doc.set_active_label(ROCK)
    tool = make(GrabCutTool, doc, canvas, radius=8)
    stroke(tool, [(24, 14), (66, 50)])
    assert doc.labels[30, 35] == ROCK and doc.labels[30, 55] == ROCK
    # Ctrl+drag over the red half: it is background after all
    stroke(tool, [(33, 25), (33, 40), (40, 40)], ctrl=True)
    assert doc.labels[30, 35] == 255 and doc.labels[30, 55] == ROCK
    # Shift+drag over grass next to the object: it belongs to the object too
    stroke(tool, [(50, 47), (56, 47)], shift=True)
    assert doc.labels[47, 53] == ROCK and doc.labels[30, 55] == ROCK
    assert doc.undo_stack.count() == 1  # each refinement replaced the previous result
    doc.undo_stack.undo()
    assert not (doc.labels == ROCK).any()
    # with the result undone there is nothing to refine: a scribble alone changes nothing
    stroke(tool, [(50, 47), (56, 47)], shift=True)
    assert not (doc.labels == ROCK).any()


def test_only_unlabeled_keeps_pixels_that_have_a_label(doc, canvas):
    doc.set_active_label(ROCK)
    stroke(make(BrushTool, doc, canvas, radius=6, only_unlabeled=True), [(40.5, 32.5)])  # across the sky border
    assert doc.labels[28, 40] == SKY and doc.labels[36, 40] == ROCK
    stroke(make(RectangleTool, doc, canvas, only_unlabeled=True), [(0, 0), (95, 63)])
    assert (doc.labels[:32] == SKY).all() and (doc.labels[32:] == ROCK).all()


def test_random_edits_undo_and_redo_to_the_exact_states(doc, canvas, monkeypatch):
    """Tile-saving patches against full snapshots, with tiles small enough that strokes cross many of them."""
    monkeypatch.setattr("app.document.LayerEdit.TILE", 16)
    rng = np.random.default_rng(7)
    tools = {"brush": make(BrushTool, doc, canvas), "fill": make(FillTool, doc, canvas),
             "eraser": make(EraserTool, doc, canvas), "rect": make(RectangleTool, doc, canvas)}
    states = [doc.labels.copy()]
    for step in range(40):
        doc.set_active_label(int(rng.choice([SKY, GRASS, ROCK, 0])))
        kind = rng.choice(list(tools))
        tools[kind].settings.radius = int(rng.integers(1, 9))
        points = [(float(rng.uniform(-5, 100)), float(rng.uniform(-5, 70))) for _ in range(rng.integers(1, 5))]
        index = doc.undo_stack.index()
        if kind == "fill":
            tools[kind].fill(int(rng.integers(0, 96)), int(rng.integers(0, 64)), bool(rng.integers(0, 2)))
        else:
            stroke(tools[kind], points)
        if doc.undo_stack.index() > index:  # a command was pushed (and any redo branch dropped)
            states = states[: index + 1] + [doc.labels.copy()]
        np.testing.assert_array_equal(doc.labels, states[doc.undo_stack.index()])
        if rng.random() < 0.3:  # step back a few and sometimes forward again
            for _ in range(int(rng.integers(1, 4))):
                doc.undo_stack.undo()
            np.testing.assert_array_equal(doc.labels, states[doc.undo_stack.index()])
            if rng.random() < 0.5:
                doc.undo_stack.redo()
                np.testing.assert_array_equal(doc.labels, states[doc.undo_stack.index()])
        # the overlay was recoloured only in dirty rectangles, yet matches a full recolour
        np.testing.assert_array_equal(canvas.overlay.view(np.uint32)[..., 0], canvas.lut[doc.labels])
    while doc.undo_stack.canUndo():
        doc.undo_stack.undo()
    np.testing.assert_array_equal(doc.labels, states[0])
