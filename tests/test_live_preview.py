"""Live preview: renders off the UI thread after each stroke, shows the newest labels, never edits the document.

The preview submits live-preview jobs to an engine runtime; these tests give it a runtime of its own and a test
engine (tests.fake_backend.RendererBackend) that renders with a tiny ASAPNet, so the results can be compared."""

import threading
import time

import numpy as np
import pytest
import torch

from app.canvas import Canvas
from app.document import Document
from app.live_preview import LivePreview
from engine.labels import load_label_set
from engine.models.asapnet import ASAPNetConfig, ASAPNetsGenerator, dataset_preset, model_config
from engine.pipelines.asapnet import ASAPNetRenderer
from tests.fake_backend import register_renderer


@pytest.fixture
def renderer():
    torch.manual_seed(0)
    preset = dataset_preset("landscape")
    cfg = ASAPNetConfig(in_channels=preset.encoding.channels, downsampling=16, lr_width=8, lr_max_width=16,
                        lr_depth=1, hr_width=8)
    model = ASAPNetsGenerator(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return ASAPNetRenderer(model_config(cfg, preset, "tiny"), model.state_dict())


class SlowRenderer:
    """Wraps a renderer: records what it rendered and can hold the worker thread until released."""

    def __init__(self, inner):
        self.inner, self.label_set = inner, inner.label_set
        self.calls = []
        self.gate = threading.Event()
        self.gate.set()

    def render(self, labels, size=None):
        self.calls.append(labels.copy())
        self.gate.wait(10)
        return self.inner.render(labels, size)


@pytest.fixture
def preview_of():
    """preview_of(document, canvas, load_renderer, **options): a LivePreview whose engine renders with
    load_renderer() (registered for this test only), on a runtime of its own."""
    from engine import registry

    kinds = []

    def make(document, canvas, load_renderer, **options):
        kind = register_renderer(f"test-renderer-{len(kinds)}", load_renderer)
        kinds.append(kind)
        return LivePreview(document, canvas, backend=kind, **options)

    yield make
    for kind in kinds:
        registry.remove_spec(kind)


@pytest.fixture
def editor(qtbot):
    label_set = load_label_set("coco-stuff-182")
    labels = np.full((96, 128), label_set.id_of("sky-other"), np.uint16)
    labels[60:] = label_set.id_of("grass")
    document = Document()
    document.load(label_set=label_set, labels=labels)
    canvas = Canvas(document)
    qtbot.addWidget(canvas)
    return document, canvas


def stroke(document, label_name, rows):
    edit = document.edit("Brush")
    mask = np.zeros((rows.stop - rows.start, 40), bool)
    mask[:] = True
    edit.paint(10, rows.start, mask, document.label_set.id_of(label_name))
    edit.commit()


def test_preview_follows_strokes_without_editing_the_document(qtbot, editor, renderer, preview_of):
    document, canvas = editor
    preview = preview_of(document, canvas, lambda: renderer, debounce_ms=10)
    assert document.view_mode == "labels"  # a label-map document
    with qtbot.waitSignal(preview.rendered, timeout=10_000):
        preview.set_enabled(True)
    assert document.view_mode == "both" and canvas.photo_item.isVisible()
    first = preview.image.copy()
    assert canvas.photo_item.image.size().toTuple() == (128, 96)
    np.testing.assert_array_equal(first, renderer.render(document.labels))

    with qtbot.waitSignal(preview.rendered, timeout=10_000) as blocker:
        stroke(document, "sea", slice(70, 90))
    assert 0 < blocker.args[0] < 10
    np.testing.assert_array_equal(preview.image, renderer.render(document.labels))
    assert np.abs(preview.image[70:90, 10:50].astype(int) - first[70:90, 10:50]).mean() > 2  # the sea shows
    assert document.image is None and document.undo_stack.count() == 1  # a view, not an edit

    preview.set_enabled(False)
    assert canvas.photo_item.image.isNull() and preview.image is None
    preview.shutdown()


def test_strokes_during_a_rendering_are_coalesced_and_the_newest_labels_win(qtbot, editor, renderer, preview_of):
    document, canvas = editor
    slow = SlowRenderer(renderer)
    preview = preview_of(document, canvas, lambda: slow, debounce_ms=5)
    slow.gate.clear()
    preview.set_enabled(True)
    qtbot.waitUntil(lambda: len(slow.calls) == 1, timeout=10_000)
    started = time.perf_counter()
    for i, name in enumerate(["sea", "sand", "tree"]):  # the worker is blocked: painting must not be
        stroke(document, name, slice(10 * i, 10 * i + 8))
        qtbot.wait(20)
    assert time.perf_counter() - started < 5
    slow.gate.set()
    qtbot.waitUntil(lambda: len(slow.calls) == 2 and not preview._busy, timeout=10_000)
    qtbot.wait(50)
    assert len(slow.calls) == 2  # three strokes while busy -> one more rendering, of the final labels
    np.testing.assert_array_equal(slow.calls[1], document.labels)
    np.testing.assert_array_equal(preview.image, renderer.render(document.labels))
    preview.shutdown()


def test_a_model_for_another_label_set_reports_instead_of_rendering(qtbot, editor, renderer, preview_of):
    document, canvas = editor
    renderer.label_set = "ade20k-150"
    preview = preview_of(document, canvas, lambda: renderer, debounce_ms=5)
    with qtbot.waitSignal(preview.failed, timeout=10_000) as blocker:
        preview.set_enabled(True)
    assert "ade20k-150" in blocker.args[0] and "coco-stuff-182" in blocker.args[0]
    assert canvas.photo_item.image.isNull()
    preview.shutdown()


def test_main_window_turns_the_preview_on_for_documents_made_from_label_maps(qtbot, tmp_path):
    from PIL import Image

    from app.main_window import MainWindow

    window = MainWindow()  # renders with the shipped demo model
    qtbot.addWidget(window)
    preview = window.live_preview
    assert preview.bridge is window.gallery.bridge, "one runtime for generation and live preview"
    action = window.actions["live_preview"]
    assert action in window.menus["view"].actions() and action.isEnabled() and not action.isChecked()
    labels = np.full((64, 96), 156, np.uint8)  # sky
    labels[40:] = 123  # grass
    Image.fromarray(labels, mode="L").save(tmp_path / "map.png")
    with qtbot.waitSignal(preview.rendered, timeout=30_000):
        assert window.new_from_label_map(tmp_path / "map.png", load_label_set("coco-stuff-182"))
    assert action.isChecked() and preview.enabled
    assert window.canvas.photo_item.image.size().toTuple() == (96, 64)
    sky, grass = preview.image[5:30].reshape(-1, 3).mean(0), preview.image[45:].reshape(-1, 3).mean(0)
    assert sky[2] > sky[1] and grass[1] > grass[2]  # blue above, green below
    action.setChecked(False)
    assert window.canvas.photo_item.image.isNull()
    preview.shutdown()


def test_large_documents_get_a_quick_pass_then_the_full_rendering(qtbot, editor, renderer, preview_of):
    import cv2

    document, canvas = editor  # 128 x 96
    preview = preview_of(document, canvas, lambda: renderer, debounce_ms=5, quick_side=64)
    passes = []
    preview.rendered.connect(lambda seconds, full: passes.append((full, preview.image.copy())))
    preview.set_enabled(True)
    qtbot.waitUntil(lambda: len(passes) == 2, timeout=10_000)
    (first_full, quick), (second_full, full) = passes
    assert (first_full, second_full) == (False, True)
    small = renderer.render(document.labels, (64, 48))
    np.testing.assert_array_equal(quick, cv2.resize(small, (128, 96), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(full, renderer.render(document.labels))
    preview.shutdown()


def test_a_photo_shows_its_edited_region_re_rendered_by_the_asapnet_demo(qtbot):
    label_set = load_label_set("coco-stuff-182")
    labels = np.full((96, 128), label_set.id_of("sky-other"), np.uint16)
    labels[60:] = label_set.id_of("grass")
    photo = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    document = Document()
    document.load(label_set=label_set, labels=labels, image=photo.copy(), mode="edit")
    canvas = Canvas(document)
    qtbot.addWidget(canvas)
    preview = LivePreview(document, canvas, debounce_ms=5)  # the shipped demo model, a runtime of its own
    preview.set_enabled(True)
    qtbot.wait(100)
    assert preview.image is None and preview._latest is None, "nothing edited: the photo shows, no job"

    with qtbot.waitSignal(preview.rendered, timeout=30_000):
        stroke(document, "sea", slice(70, 90))
    image = preview.image
    assert image.shape == photo.shape and document.image is not None
    assert np.abs(image[72:88, 12:48].astype(int) - photo[72:88, 12:48]).mean() > 20, "the sea is rendered"
    np.testing.assert_array_equal(image[:8, 100:], photo[:8, 100:])  # far from the edit: the photo
    np.testing.assert_array_equal(document.image, photo)  # a view, not an edit
    preview.shutdown()
