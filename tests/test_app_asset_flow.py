"""The headline flow in the real main window with the real ASSET backend (a tiny random model folder built here):
open a photo, paint with the mouse, Generate, wait for candidates, preview, Apply, undo, redo, save, reopen,
export, and the exported pixels are the photo with the applied candidate."""

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from engine.data.landscapes import generate_scene, ids
from tests.conftest import drag, show_main_window
from tests.test_asset_pipeline import make_bundle

SIZE = 256


@pytest.fixture(scope="module")
def tiny_asset(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("models") / "tiny-asset", resolution=SIZE, sga=False)


@pytest.mark.slow
def test_paint_generate_apply_undo_redo_save_reopen_export_with_real_asset(qtbot, monkeypatch, tmp_path, tiny_asset):
    torch.set_num_threads(1)
    scene = generate_scene(5, SIZE)
    Image.fromarray(scene.image).save(tmp_path / "valley.png")
    Image.fromarray(scene.labels.astype(np.uint8)).save(tmp_path / "valley-labels.png")
    win = show_main_window(qtbot, monkeypatch, size=(1280, 800))
    try:
        assert win.open_path(tmp_path / "valley.png", labels=tmp_path / "valley-labels.png"), win.errors
        doc = win.document
        photo = doc.image.copy()

        # paint sea over the lower left with the brush, through the mouse
        win.select_tool("brush")
        win.settings.set_radius(12)
        doc.set_active_label(ids().sea)
        drag(win, [(20, 200), (60, 210), (100, 220), (120, 235)])
        assert (doc.labels != doc.original_labels).any() and doc.undo_stack.count() == 1

        gallery = win.gallery
        gallery.add_backend_choice("Tiny ASSET", "asset", str(tiny_asset))
        gallery.samples.setValue(2)
        win.actions["generate"].trigger()  # Ctrl+Return
        qtbot.waitUntil(lambda: len(doc.candidates) == 2 or bool(win.errors), timeout=180_000)
        assert win.errors == []
        qtbot.waitUntil(lambda: not gallery.bridge.busy(), timeout=20_000)
        first, second = doc.candidates
        assert first.meta["backend"] == "asset" and first.meta["seed"] != second.meta["seed"]

        gallery.tree.setCurrentItem(gallery._item(second.id))  # preview
        assert gallery.preview.isVisible() and win.workspace.previewed == second.id
        QTest.keyClick(gallery.tree, Qt.Key.Key_Return)  # Enter applies the current candidate
        x0, y0, x1, y1 = second.meta["box"]
        applied = photo.copy()
        applied[y0:y1, x0:x1] = second.image
        np.testing.assert_array_equal(doc.image, applied)
        assert doc.view_mode == "photo", "the result is shown without the label overlay"

        win.actions["undo"].trigger()
        np.testing.assert_array_equal(doc.image, photo)
        win.actions["redo"].trigger()
        np.testing.assert_array_equal(doc.image, applied)

        assert win.save_as(tmp_path / "valley.sgraffito"), win.errors
        assert win.open_path(tmp_path / "valley.sgraffito"), win.errors
        doc = win.document
        np.testing.assert_array_equal(doc.image, applied)
        assert [c.id for c in doc.candidates] == [first.id, second.id]
        assert win.workspace.applied == {second.id}

        assert win.export_image(tmp_path / "out.png"), win.errors
        exported = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
        np.testing.assert_array_equal(exported, applied)
        np.testing.assert_array_equal(exported[y0:y1, x0:x1], second.image)
    finally:
        win.gallery.bridge.shutdown()
