"""Issue 15 in the real window: a photo opened without a label map is segmented in the background by the runtime
(the shipped demo segmenter on a tiny photo), the result is one undo step, Generate fills whatever is still
unlabeled (never "label id 255"), and a failed or cancelled segmentation leaves the document as it was."""

import numpy as np
import pytest
from PIL import Image

from app.workspace import fill_unlabeled, nearest_labels
from engine import registry
from engine.errors import InputError
from engine.model_store import ModelInfo
from tests import fake_backend
from tests.conftest import drag, show_main_window

TIMEOUT = 60_000
UNLABELED = 255
SKY, GRASS, SEA = 156, 123, 154


@pytest.fixture
def scene():
    """A small procedural landscape (held-out seed): what the demo segmenter was trained on."""
    from engine.data.landscapes import generate_scene

    return generate_scene(9001, (64, 96))


@pytest.fixture
def photo(tmp_path, scene):
    path = tmp_path / "field.png"
    Image.fromarray(scene.image).save(path)
    return path


@pytest.fixture
def win(qtbot, monkeypatch):
    monkeypatch.setenv("SGRAFFITO_SEGMENT_ON_OPEN", "1")
    window = show_main_window(qtbot, monkeypatch, size=(1100, 760))
    yield window
    window.gallery.bridge.shutdown()


def wait_segmented(qtbot, win, outcomes=("done",)):
    seen = []
    win.segmentation.finished.connect(seen.append)
    qtbot.waitUntil(lambda: bool(seen) or bool(win.errors), timeout=TIMEOUT)
    assert seen and seen[0] in outcomes, (seen, win.errors)
    return seen[0]


class FailingSegmenter:
    name = "failing-segmenter"

    def run(self, request, ctx):
        raise InputError("this segmenter cannot read the photo")


class HoldingSegmenter:
    """Waits (checking cancel) until cancelled: a deterministic mid-job cancel."""

    name = "holding-segmenter"

    def run(self, request, ctx):
        import time

        ctx.progress(0.3, "segmenting")
        while True:
            ctx.check_cancelled()
            time.sleep(0.002)


@pytest.fixture
def test_segmenters():
    for backend in (FailingSegmenter, HoldingSegmenter):
        registry.add_spec(registry.ModelSpec(kind=backend.name, title=backend.name, models=__name__,
                                             modes=("segment",), backend=backend))
    yield
    for backend in (FailingSegmenter, HoldingSegmenter):
        registry.remove_spec(backend.name)


def use_only(qtbot, win, kind):
    """Pretend the installed segmentation models are one model of engine `kind` (after the shown window's own
    listing of the installed models landed, so that it cannot replace this one)."""
    qtbot.waitUntil(lambda: bool(win.gallery.models), timeout=TIMEOUT)
    win.segmentation._models_listed([ModelInfo(name=f"{kind}-model", kind=kind, title=kind, path=None,
                                               source="demo")])


# ---- the whole flow with the shipped demo segmenter ------------------------------------------------------------
def test_an_unlabeled_photo_is_segmented_then_a_stroke_generates_and_undo_restores_it(win, photo, scene, qtbot):
    assert win.open_path(photo), win.errors
    doc = win.document
    assert (doc.labels == UNLABELED).all()
    assert win.segmentation.running, "the segmentation starts by itself"
    qtbot.waitUntil(lambda: win.segmentation.progress.isVisible() or not win.segmentation.running, timeout=TIMEOUT)
    wait_segmented(qtbot, win)
    assert win.errors == []
    assert not (doc.labels == UNLABELED).any(), "every pixel labelled"
    np.testing.assert_array_equal(doc.labels, doc.original_labels)  # the photo's map, not an edit
    assert (doc.labels == scene.labels).mean() > 0.6, "the demo segmenter's labels, not noise"
    assert doc.undo_stack.count() == 1 and doc.undo_stack.text(0).startswith("Segment the photo")
    assert win.actions["segment_again"].isEnabled()
    assert "Labelled by" in win.statusBar().currentMessage()
    segmented = doc.labels.copy()

    # undo: the unlabeled map as opened; redo: the segmentation again
    win.actions["undo"].trigger()
    assert (doc.labels == UNLABELED).all() and (doc.original_labels == UNLABELED).all()
    win.actions["redo"].trigger()
    np.testing.assert_array_equal(doc.labels, segmented)

    # a stroke of sea over the grass, Generate: candidates, no "label id 255"
    win.select_tool("brush")
    win.settings.set_radius(5)
    doc.set_active_label(SEA)
    drag(win, [(20, 50), (50, 52), (70, 54)])
    assert (doc.labels != doc.original_labels).any()
    win.gallery.add_backend_choice("Fake", fake_backend.NAME)
    win.gallery.samples.setValue(2)
    win.actions["generate"].trigger()
    qtbot.waitUntil(lambda: len(doc.candidates) == 2 or bool(win.errors), timeout=TIMEOUT)
    assert win.errors == []
    request = next(iter(win.workspace.groups.values())).request
    assert not (request.labels_after == UNLABELED).any() and not (request.labels_before == UNLABELED).any()

    # undo the stroke and the segmentation: the map is unlabeled again, and Generate still works (filled from
    # the segmentation the workspace kept)
    win.actions["undo"].trigger()
    win.actions["undo"].trigger()
    assert (doc.labels == UNLABELED).all()
    doc.labels[40:50, 10:30] = SEA  # a change painted on the unlabeled map
    win.errors.clear()
    assert win.gallery.generate() is not None and win.errors == []
    qtbot.waitUntil(lambda: len(doc.candidates) == 4 or bool(win.errors), timeout=TIMEOUT)
    assert win.errors == []
    request = list(win.workspace.groups.values())[-1].request
    np.testing.assert_array_equal(request.labels_before, segmented)
    assert request.mask[45, 20] and not request.mask[5, 5], "the change is the stroke, not the filled pixels"


@pytest.fixture(scope="module")
def tiny_asset(tmp_path_factory):
    from tests.test_asset_pipeline import make_bundle

    return make_bundle(tmp_path_factory.mktemp("models") / "tiny-asset", resolution=256, sga=False)


@pytest.mark.parametrize("segmented", [True, False], ids=["segmented", "segmentation-undone"])
def test_real_asset_generates_on_a_photo_opened_without_labels(win, photo, qtbot, tiny_asset, segmented):
    """The engine that used to refuse with "label id 255 is outside the 182 classes"."""
    import torch

    torch.set_num_threads(1)
    assert win.open_path(photo), win.errors
    doc = win.document
    wait_segmented(qtbot, win)
    if not segmented:
        win.actions["undo"].trigger()
        assert (doc.labels == UNLABELED).all()
    win.select_tool("brush")
    win.settings.set_radius(6)
    doc.set_active_label(SEA)
    drag(win, [(15, 48), (45, 50), (80, 52)])
    win.gallery.add_backend_choice("Tiny ASSET", "asset", str(tiny_asset))
    win.gallery.samples.setValue(1)
    win.actions["generate"].trigger()  # Ctrl+Return
    qtbot.waitUntil(lambda: len(doc.candidates) == 1 or bool(win.errors), timeout=180_000)
    assert win.errors == [], win.errors
    assert doc.candidates[0].meta["backend"] == "asset"


def test_segment_again_with_another_model_is_one_step_and_keeps_what_was_painted(win, photo, qtbot, monkeypatch):
    monkeypatch.setenv("SGRAFFITO_SEGMENT_ON_OPEN", "0")
    assert win.open_path(photo), win.errors
    doc = win.document
    assert not win.segmentation.running and (doc.labels == UNLABELED).all(), "the preference is off"
    doc.labels[0:4, 0:4] = SEA  # painted before the segmentation
    win.actions["segment_again"].trigger()
    if not win.segmentation.running:  # the models were still being listed: it starts once they are
        qtbot.waitUntil(lambda: win.segmentation.running, timeout=TIMEOUT)
    menu = win.menus["segmentation_model"]
    assert any("demo-segmenter-landscape" in action.text() for action in menu.actions())
    wait_segmented(qtbot, win)
    assert (doc.labels[0:4, 0:4] == SEA).all(), "the stroke painted meanwhile stays"
    assert doc.original_labels[0, 0] != UNLABELED and doc.undo_stack.count() == 1
    win.actions["undo"].trigger()
    assert (doc.original_labels == UNLABELED).all() and (doc.labels[0:4, 0:4] == SEA).all()


# ---- failure and cancel leave the document unchanged -----------------------------------------------------------
def test_a_failed_segmentation_leaves_the_document_unchanged_and_says_what_to_do(win, photo, qtbot,
                                                                                  test_segmenters):
    use_only(qtbot, win, FailingSegmenter.name)
    assert win.open_path(photo), win.errors
    doc = win.document
    doc.labels[10:12, 10:12] = SEA
    win.workspace.generate(engine=fake_backend.NAME, k=1)  # waits for the segmentation
    assert win.workspace.deferred is not None
    before = doc.labels.copy()
    qtbot.waitUntil(lambda: bool(win.errors), timeout=TIMEOUT)
    assert "Automatic segmentation failed: this segmenter cannot read the photo" in win.errors[0]
    assert "Keep Labels as the Photo's Map" in win.errors[0] and "did not start" in win.errors[0]
    np.testing.assert_array_equal(doc.labels, before)
    assert (doc.original_labels == UNLABELED).all() and doc.undo_stack.count() == 0
    assert win.workspace.deferred is None and win.workspace.groups == {}
    assert not win.segmentation.progress.isVisible()


def test_a_cancelled_segmentation_leaves_the_document_unchanged(win, photo, qtbot, test_segmenters):
    use_only(qtbot, win, HoldingSegmenter.name)
    assert win.open_path(photo), win.errors
    doc = win.document
    qtbot.waitUntil(lambda: win.segmentation.progress.isVisible()
                    and "segmenting" in win.segmentation.progress.stage.text(), timeout=TIMEOUT)
    assert win.segmentation.progress.stage.text().startswith("Labelling the photo")
    win.actions["cancel_generation"].trigger()  # Cancel Generation does not touch the segmentation
    qtbot.wait(100)
    assert win.segmentation.running
    win.segmentation.progress.cancel_button.click()  # the status bar's Cancel
    assert wait_segmented(qtbot, win, ("cancelled",)) == "cancelled"
    assert (doc.labels == UNLABELED).all() and doc.undo_stack.count() == 0 and win.errors == []
    assert "Segmentation cancelled" in win.statusBar().currentMessage()
    assert not win.segmentation.progress.isVisible()


# ---- Generate without any segmentation -------------------------------------------------------------------------
def test_generate_on_an_unlabeled_photo_without_a_segmentation_fills_with_the_nearest_label(win, photo, qtbot,
                                                                                           monkeypatch):
    monkeypatch.setenv("SGRAFFITO_SEGMENT_ON_OPEN", "0")
    assert win.open_path(photo), win.errors
    doc = win.document
    doc.labels[:, :48] = GRASS  # part of it labelled by hand, the rest unlabeled
    win.keep_labels_as_map()
    doc.labels[40:50, 10:30] = SEA
    notices = []
    win.workspace.events.notice.connect(notices.append)
    win.gallery.add_backend_choice("Fake", fake_backend.NAME)
    assert win.gallery.generate() is not None and win.errors == []
    request = next(iter(win.workspace.groups.values())).request
    assert not (request.labels_after == UNLABELED).any()
    assert (request.labels_before[:, 48:] == GRASS).all(), "the nearest label"
    assert any("Segment Again" in note for note in notices), notices


def test_fill_unlabeled_keeps_the_change_exactly():
    before = np.full((6, 8), UNLABELED, np.uint16)
    before[:, :2] = GRASS
    after = before.copy()
    after[2:4, 5:7] = SEA
    fallback = np.full_like(before, SKY)
    b, a, note = fill_unlabeled(before, after, UNLABELED, fallback)
    assert (b[:, 2:] == SKY).all() and (b[:, :2] == GRASS).all()
    np.testing.assert_array_equal(a != b, after != before)
    b, a, note = fill_unlabeled(before, after, UNLABELED, None)
    assert (b == GRASS).all() and "Segment Again" in note
    only_stroke = np.full((6, 8), UNLABELED, np.uint16)
    painted = only_stroke.copy()
    painted[2:4, 5:7] = SEA
    b, a, _ = fill_unlabeled(only_stroke, painted, UNLABELED, None)
    assert not (a == UNLABELED).any() and not (b == UNLABELED).any()
    holes = np.zeros((3, 5), bool)
    holes[:, 1:] = True
    labels = np.array([[1, 0, 0, 0, 0], [2, 0, 0, 0, 0], [3, 0, 0, 0, 0]], np.uint16)
    assert nearest_labels(labels, holes).tolist() == [[1] * 5, [2] * 5, [3] * 5]
