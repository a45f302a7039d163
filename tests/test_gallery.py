"""The candidate workflow in the editor with the fake backend: generate, progress, errors, preview, apply/undo,
pin/discard, more like this, the size cap, and candidates surviving a project round-trip bit for bit."""

import numpy as np
import pytest
from PIL import Image

from app import files
from app.document import Document
from app.engine_bridge import EngineBridge
from app.gallery import GalleryDock
from app.workspace import build_request
from engine.errors import InputError
from engine.imageio import load_photo
from engine.labels import DEFAULT_SET, load_label_set
from tests import fake_backend

TIMEOUT = 20_000


@pytest.fixture
def document(qtbot, tmp_path):
    photo, before, after = fake_backend.scene(size=64)
    path = tmp_path / "scene.png"
    Image.fromarray(photo).save(path)
    doc = Document()
    doc.load(label_set=load_label_set(DEFAULT_SET), labels=after, original_labels=before,
             photo=load_photo(path), mode="edit")
    return doc


def make_dock(qtbot, document, runtime, samples=3) -> GalleryDock:
    """A gallery on `document` with a canvas and the fake backend; shut its bridge down when done."""
    from app.canvas import Canvas

    bridge = EngineBridge(runtime)
    canvas = Canvas(document)
    dock = GalleryDock(document, bridge, canvas)
    qtbot.addWidget(canvas)
    qtbot.addWidget(dock)
    dock.add_backend_choice("Fake", fake_backend.NAME)
    dock.samples.setValue(samples)
    return dock


@pytest.fixture
def gallery(qtbot, document, runtime):
    dock = make_dock(qtbot, document, runtime)
    yield dock
    dock.bridge.shutdown()


def generate(qtbot, gallery, count):
    job = gallery.generate()
    assert job is not None
    qtbot.waitUntil(lambda: len(gallery.document.candidates) >= count, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not gallery.bridge.busy(), timeout=TIMEOUT)
    return job


def test_k_candidates_appear_in_the_gallery_grouped_by_request(qtbot, gallery):
    generate(qtbot, gallery, 3)
    assert gallery.tree.topLevelItemCount() == 1
    group = gallery.tree.topLevelItem(0)
    assert group.childCount() == 3 and "3 candidates" in group.text(0)
    seeds = [c.meta["seed"] for c in gallery.document.candidates]
    assert seeds == list(range(seeds[0], seeds[0] + 3))
    tip = group.child(0).toolTip(0)
    assert "fake" in tip and f"Seed: {seeds[0]}" in tip and "Time:" in tip
    assert "3 candidates" in gallery.size_label.text()
    assert gallery.document.dirty, "new candidates are an unsaved change"
    generate(qtbot, gallery, 6)
    assert gallery.tree.topLevelItemCount() == 2


def held_request(gallery, group_id, k=2):
    request = build_request(gallery.document, "fake", "", k=k, seed=1, params={"hold_at_row": 0})
    gallery.workspace.submit(request, group_id=group_id, supersede=False)


def test_progress_shows_stage_and_queue_while_jobs_run_and_hides_after(qtbot, gallery):
    progress = gallery.progress
    assert progress.isHidden()
    held_request(gallery, "one")
    qtbot.waitUntil(lambda: "holding" in progress.stage.text(), timeout=TIMEOUT)
    assert not progress.isHidden()
    held_request(gallery, "two")
    qtbot.waitUntil(lambda: "(+1 queued)" in progress.stage.text(), timeout=TIMEOUT)
    gallery.bridge.cancel_all()
    qtbot.waitUntil(progress.isHidden, timeout=TIMEOUT)


def test_cancel_from_the_status_bar_widget_keeps_no_partial_results(qtbot, gallery):
    held_request(gallery, "held")
    qtbot.waitUntil(lambda: "holding" in gallery.progress.stage.text(), timeout=TIMEOUT)
    gallery.progress.cancel_button.click()
    # the group disappears when the cancelled job's final event reaches the UI thread
    qtbot.waitUntil(lambda: gallery.tree.topLevelItemCount() == 0, timeout=TIMEOUT)
    assert not gallery.bridge.busy()
    assert gallery.document.candidates == []


def test_an_engine_error_reaches_the_ui_as_a_message(qtbot, gallery):
    messages = []
    gallery.error.connect(messages.append)
    request = build_request(gallery.document, "fake", "lake", k=1, seed=0, params={"fail": "input"})
    gallery.workspace.submit(request, group_id="bad", supersede=True)
    qtbot.waitUntil(lambda: bool(messages), timeout=TIMEOUT)
    assert messages == ["fake model 'lake': the label map has no editable class"]


def test_generate_without_a_painted_change_says_what_to_do(qtbot, gallery):
    messages = []
    gallery.error.connect(messages.append)
    gallery.document.labels[:] = gallery.document.original_labels
    assert gallery.generate() is None
    assert "paint a new label" in messages[0]


def test_preview_split_and_before_after(qtbot, gallery):
    generate(qtbot, gallery, 3)
    first = gallery.tree.topLevelItem(0).child(0)
    gallery.tree.setCurrentItem(first)
    preview = gallery.preview
    assert preview.isVisible()
    stored = gallery.document.candidates[0]
    assert (preview.pos().x(), preview.pos().y()) == tuple(stored.meta["box"][:2])
    gallery.split.setValue(300)
    assert preview.split == pytest.approx(0.3)
    gallery.toggle_before_after()
    assert not preview.isVisible()
    gallery.toggle_before_after()
    assert preview.isVisible()


def test_apply_undo_redo_of_a_candidate(qtbot, gallery):
    document = gallery.document
    generate(qtbot, gallery, 3)
    original = document.image.copy()
    stored = document.candidates[1]
    x0, y0, x1, y1 = stored.meta["box"]
    assert gallery.apply(stored.id)
    np.testing.assert_array_equal(document.image[y0:y1, x0:x1], stored.image)
    assert document.history[-1]["seed"] == stored.meta["seed"]
    assert stored.id in gallery.workspace.applied and "applied" in gallery._item(stored.id).text(0)
    assert document.undo_stack.count() == 1, "one undo step"
    document.undo_stack.undo()
    np.testing.assert_array_equal(document.image, original)
    assert document.history == [] and stored.id not in gallery.workspace.applied
    document.undo_stack.redo()
    np.testing.assert_array_equal(document.image[y0:y1, x0:x1], stored.image)
    assert len(document.history) == 1


def test_a_rendering_applies_to_a_document_made_from_a_label_map_alone(qtbot, document, runtime, tmp_path):
    """Translate mode: no photo; the first applied candidate starts the image layer, and undo/redo work."""
    doc = Document()
    doc.load(label_set=load_label_set(DEFAULT_SET), labels=document.labels.copy())
    assert doc.mode == "translate" and doc.image is None
    dock = make_dock(qtbot, doc, runtime, samples=1)
    bridge = dock.bridge
    try:
        assert dock.generate() is not None
        qtbot.waitUntil(lambda: len(doc.candidates) >= 1 and not bridge.busy(), timeout=TIMEOUT)
        stored = doc.candidates[0]
        x0, y0, x1, y1 = stored.meta["box"]
        assert dock.apply(stored.id)
        np.testing.assert_array_equal(doc.image[y0:y1, x0:x1], stored.image)
        assert doc.view_mode != "labels", "the applied rendering is shown"
        doc.undo_stack.undo()
        assert not doc.image.any()
        doc.undo_stack.redo()
        np.testing.assert_array_equal(doc.image[y0:y1, x0:x1], stored.image)
        path = tmp_path / "rendered.sgraffito"
        files.write_project(doc, path)
        reopened = files.read_project(path)
        assert reopened["photo"] is None
        np.testing.assert_array_equal(reopened["image"], doc.image)
    finally:
        bridge.shutdown()


def test_enter_applies_the_current_candidate(qtbot, gallery):
    generate(qtbot, gallery, 3)
    gallery.tree.setCurrentItem(gallery.tree.topLevelItem(0).child(0))
    gallery.tree.setFocus()
    from PySide6.QtCore import Qt
    qtbot.keyClick(gallery.tree, Qt.Key.Key_Return)
    assert len(gallery.document.history) == 1


def test_pin_discard_and_clear_all_but_pinned(qtbot, gallery):
    document = gallery.document
    generate(qtbot, gallery, 3)
    a, b, c = (s.id for s in document.candidates)
    gallery.toggle_pin(a)
    assert document.candidates[0].pinned and "pinned" in gallery._item(a).text(0)
    assert gallery.discard([b]) == 1
    assert [s.id for s in document.candidates] == [a, c]
    assert gallery.clear_unpinned() == 1
    assert [s.id for s in document.candidates] == [a]
    assert gallery.candidate_ids() == [a]


def test_more_like_this_adds_new_seeds_to_the_same_group(qtbot, gallery):
    document = gallery.document
    generate(qtbot, gallery, 3)
    first_seeds = [s.meta["seed"] for s in document.candidates]
    gallery.samples.setValue(2)
    gallery.more_like_this(document.candidates[0].id)
    qtbot.waitUntil(lambda: len(document.candidates) == 5, timeout=TIMEOUT)
    assert gallery.tree.topLevelItemCount() == 1 and gallery.tree.topLevelItem(0).childCount() == 5
    new_seeds = [s.meta["seed"] for s in document.candidates[3:]]
    assert new_seeds == [first_seeds[-1] + 1, first_seeds[-1] + 2]
    assert {s.request_id for s in document.candidates} == {document.candidates[0].request_id}


def test_the_size_cap_removes_the_oldest_unpinned_candidates_visibly(qtbot, document, runtime):
    bridge = EngineBridge(runtime)
    patch_bytes = 16 * 32 * 3  # the fake backend's region for this scene
    gallery = GalleryDock(document, bridge, cap_bytes=4 * patch_bytes)
    qtbot.addWidget(gallery)
    gallery.add_backend_choice("Fake", fake_backend.NAME)
    gallery.samples.setValue(3)
    notices = []
    gallery.notice.connect(notices.append)
    generate(qtbot, gallery, 3)
    oldest, second, _ = (s.id for s in document.candidates)
    gallery.toggle_pin(oldest)
    gallery.generate()
    qtbot.waitUntil(lambda: bool(notices), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not bridge.busy(), timeout=TIMEOUT)
    ids = [s.id for s in document.candidates]
    assert oldest in ids, "pinned candidates are never removed"
    assert second not in ids and len(ids) == 4
    assert "removed the 2 oldest unpinned candidates" in notices[0]
    assert "removed the 2 oldest" in gallery.size_label.text()
    bridge.shutdown()


def test_candidates_survive_a_project_round_trip_bit_exact(qtbot, gallery, tmp_path):
    document = gallery.document
    generate(qtbot, gallery, 3)
    gallery.toggle_pin(document.candidates[2].id)
    gallery.apply(document.candidates[0].id)
    path = tmp_path / "work.sgraffito"
    files.write_project(document, path)
    reopened = Document()
    reopened.load(**files.read_project(path))
    assert len(reopened.candidates) == 3
    for saved, loaded in zip(document.candidates, reopened.candidates):
        assert loaded.id == saved.id and loaded.request_id == saved.request_id
        assert loaded.image.dtype == np.uint8
        np.testing.assert_array_equal(loaded.image, saved.image)
        assert loaded.meta == saved.meta and loaded.pinned == saved.pinned
    np.testing.assert_array_equal(reopened.image, document.image)
    view = GalleryDock(reopened, gallery.bridge)
    qtbot.addWidget(view)
    assert view.candidate_ids() == [c.id for c in document.candidates]
    assert document.candidates[0].id in view.workspace.applied


def test_build_request_snapshots_the_document(document):
    request = build_request(document, "fake", "", k=2, seed=5)
    document.labels[:] = 0
    assert request.edit_mask().sum() == 16 * 32
    assert request.slot == document.doc_id
    document.labels[:] = document.original_labels
    with pytest.raises(InputError):
        build_request(document, "fake", "", k=2, seed=5)


def test_the_gallery_installs_into_the_main_window_and_ctrl_return_generates(qtbot, tmp_path, monkeypatch):
    from PySide6.QtGui import QKeySequence

    monkeypatch.setenv("SGRAFFITO_DEVICE", "cpu")  # no CUDA probing (a torch import) for the fake backend

    from app.gallery import install_gallery
    from app.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.ask_save_changes = lambda: "discard"
    photo, before, after = fake_backend.scene(size=64)
    path = tmp_path / "scene.png"
    Image.fromarray(photo).save(path)
    window.document.load(label_set=load_label_set(DEFAULT_SET), labels=after, original_labels=before,
                         photo=load_photo(path), mode="edit")
    gallery = install_gallery(window)
    assert install_gallery(window) is gallery, "installing twice is harmless"
    assert QKeySequence("Ctrl+Return") in window.actions["generate"].shortcuts()
    assert gallery.progress.parent() is not None
    gallery.add_backend_choice("Fake", fake_backend.NAME)
    gallery.samples.setValue(2)
    window.actions["generate"].trigger()
    qtbot.waitUntil(lambda: len(window.document.candidates) == 2, timeout=TIMEOUT)
    window.focus_candidates()  # the editor's Ctrl+J: the first candidate becomes current and is previewed
    assert gallery._candidate_id(gallery.tree.currentItem()) == window.document.candidates[0].id
    assert gallery.preview.isVisible()
    errors = []
    window.show_error = lambda message, title="": errors.append(message)
    gallery.error.disconnect()
    gallery.error.connect(window.show_error)
    window.document.labels[:] = window.document.original_labels
    window.actions["generate"].trigger()
    assert errors and "paint a new label" in errors[0]
    gallery.bridge.shutdown()


def test_the_model_chooser_lists_only_the_generators_of_the_documents_mode(qtbot, gallery):
    from types import SimpleNamespace as Info

    gallery.set_models([Info(name="pc", kind="pixelcnn", title="PixelCNN"),
                        Info(name="tok", kind="vqgan", title="Tokenizer"),
                        Info(name="r", kind="asapnet", title="ASAPNet"),
                        Info(name="land", kind="asset", title="ASSET landscape")])
    items = [gallery.model_box.itemText(i) for i in range(gallery.model_box.count())]
    assert items == ["ASSET landscape (asset)", "ASAPNet (asapnet)", "Fake"], \
        "edit engines in the registry's order; no colorizer, no tokenizer"
    assert gallery.model_box.currentText() == "Fake", "the user's choice survives a rescan"


def test_models_are_listed_off_the_ui_thread(qtbot):
    bridge = EngineBridge()
    with qtbot.waitSignal(bridge.models_listed, timeout=60_000) as signal:
        bridge.list_models_async()
    assert isinstance(signal.args[0], list)
    assert bridge.pending() == (0, 0), "listing models starts no engine worker"
    bridge.shutdown()
