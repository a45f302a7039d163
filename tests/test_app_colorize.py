"""The colorize flow of the real main window: the Colorize panel lists the coltran and pixelcnn models, Generate
(Ctrl+Return, the gallery's button or the panel's) sends the chosen colorizer with the temperature and the hints in
photo pixels, and a tiny PixelCNN run through the runtime honours a hint placed with the mouse."""

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor
from PySide6.QtTest import QTest

from app.document import Document
from app.workspace import colorize_request
from engine.model_store import save_model_dir
from engine.imageio import load_photo
from engine.jobs import thaw
from engine.labels import DEFAULT_SET, load_label_set
from engine.models.pixelcnn import PixelCNNColorizer, PixelCNNConfig

from tests.conftest import show_main_window

# chroma on a 32-wide grid like the demo model's, so a default-size hint covers more than one chroma cell
TINY = PixelCNNConfig(channels=12, layers=3, kernel=3, cond_channels=6, embed_channels=6, bins=8, work_size=64,
                      downsample=2)
HINT_RGB = (200, 90, 60)
LUMA = round(float(np.array(HINT_RGB) @ np.array([0.299, 0.587, 0.114])))


@pytest.fixture
def models(isolated_user_data):
    """A tiny random PixelCNN and a ColTran folder (config only: only listed, never run) as imported models."""
    torch.manual_seed(0)
    save_model_dir(isolated_user_data / "models" / "tiny-pixelcnn", {"model": PixelCNNColorizer(TINY).state_dict()},
                   {"kind": "pixelcnn", "title": "Tiny PixelCNN", **TINY.to_dict()})
    save_model_dir(isolated_user_data / "models" / "tiny-coltran", {}, {"kind": "coltran", "title": "Tiny ColTran"})
    return ["coltran\ttiny-coltran", "pixelcnn\ttiny-pixelcnn"]


@pytest.fixture
def window(qtbot, monkeypatch, tmp_path, models):
    win = show_main_window(qtbot, monkeypatch)
    Image.fromarray(np.full((48, 64), LUMA, np.uint8), "L").save(tmp_path / "gray.png")
    assert win.open_path(tmp_path / "gray.png"), win.errors
    yield win
    win.gallery.bridge.shutdown()


def click(window, x, y):
    QTest.mouseClick(window.canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     window.canvas.mapFromScene(QPointF(x + 0.5, y + 0.5)))


def add_hint(window, x, y, rgb=HINT_RGB):
    window.select_tool("hint")
    window.colorize_panel.ask_colour = lambda initial: QColor(*rgb)
    window.colorize_panel.choose_colour()
    click(window, x, y)


def test_request_builder_carries_backend_model_temperature_and_hints(tmp_path):
    Image.fromarray(np.full((40, 50), 90, np.uint8), "L").save(tmp_path / "g.png")
    document = Document()
    photo = load_photo(tmp_path / "g.png")
    document.load(label_set=load_label_set(DEFAULT_SET), labels=np.zeros((40, 50), np.uint16), photo=photo)
    assert document.mode == "colorize"
    document.hints = [{"x": 12.5, "y": 30.5, "radius": 2.0, "rgb": [10, 200, 30]}]
    request = colorize_request(document, "coltran", "some-model", k=3, seed=7, temperature=0.6, hint_tolerance=1)
    assert (request.backend, request.model, request.k, request.seed) == ("coltran", "some-model", 3, 7)
    assert thaw(request.params) == {"temperature": 0.6, "hints": document.hints, "hint_tolerance": 1}
    request = colorize_request(document, "pixelcnn", "other", k=1, seed=0)
    assert thaw(request.params) == {"temperature": 1.0, "hints": document.hints}
    assert request.photo.shape[:2] == (40, 50)


def test_panel_lists_both_colorizers_and_generate_sends_the_chosen_one(window, models, monkeypatch):
    panel = window.colorize_panel
    assert panel.isVisible()
    listed = [panel.model_box.itemData(i) for i in range(panel.model_box.count())]
    assert set(models) <= set(listed) and {choice.split("\t")[0] for choice in listed} == {"coltran", "pixelcnn"}
    sent = []
    monkeypatch.setattr(window.gallery.bridge, "submit", lambda request, supersede=True: sent.append(request) or 1)
    add_hint(window, 20, 10)
    panel.choose_model("coltran\ttiny-coltran")
    panel.temperature.setValue(0.4)
    panel.samples.setValue(2)
    panel.tolerance.setValue(1)

    window.actions["generate"].trigger()  # Ctrl+Return
    window.gallery.generate_button.click()
    panel.generate_button.click()
    assert window.errors == [] and len(sent) == 3
    for request in sent:
        assert (request.backend, request.model, request.k) == ("coltran", "tiny-coltran", 2)
        params = thaw(request.params)
        assert params["temperature"] == pytest.approx(0.4) and params["hint_tolerance"] == 1
        assert params["hints"] == [{"x": 20.5, "y": 10.5, "radius": window.document.hints[0]["radius"],
                                    "rgb": list(HINT_RGB)}]

    # one model chooser and one Generate in colorize mode: the panel's; the gallery's are hidden, the Labels
    # panel too (it belongs to label-map editing)
    assert not window.gallery.controls.isVisible() and window.gallery.isVisible()
    assert not window.palette.isVisible()
    assert panel.choose_model("pixelcnn\ttiny-pixelcnn")
    assert not panel.tolerance.isEnabled(), "only ColTran has a hint tolerance"
    window.actions["generate"].trigger()
    assert sent[-1].backend == "pixelcnn" and "hint_tolerance" not in thaw(sent[-1].params)


def test_no_colorizer_installed_says_so(window, monkeypatch):
    window.colorize_panel.model_box.clear()
    assert window.colorize_panel.generate() is None
    assert "No colorization model" in window.errors[-1]


def hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0] * 360


def run_with_a_hint(window, qtbot, choice: str) -> list:
    """Mouse -> hint -> Ctrl+Return -> runtime -> backend -> gallery; the candidates, checked at the hint."""
    panel = window.colorize_panel
    torch.set_num_threads(1)
    add_hint(window, 40, 20)
    assert panel.choose_model(choice)
    panel.samples.setValue(2)
    window.actions["generate"].trigger()
    qtbot.waitUntil(lambda: len(window.document.candidates) == 2 or bool(window.errors), timeout=60_000)
    assert window.errors == []
    for candidate in window.document.candidates:
        assert candidate.meta["model"] == choice.split("\t")[1] and candidate.meta["info"]["hints"] == 1
        pixel = candidate.image[20, 40]
        assert np.abs(pixel.astype(int) - HINT_RGB).max() <= 12
        assert abs(hue(pixel) - hue(HINT_RGB)) < 10
    assert window.gallery.apply(window.document.candidates[0].id)
    assert np.abs(window.document.image[20, 40].astype(int) - HINT_RGB).max() <= 12
    return window.document.candidates


def test_tiny_pixelcnn_honours_a_hint_placed_with_the_mouse(window, qtbot):
    candidates = run_with_a_hint(window, qtbot, "pixelcnn\ttiny-pixelcnn")
    # the mean of a far corner, not one pixel: a random tiny model samples a pixel near the hint now and then
    far = np.mean([c.image[32:, :16].reshape(-1, 3).mean(0) for c in candidates], 0)
    assert np.abs(far - HINT_RGB).max() > 12, "away from the hint the colour is the model's"


def test_demo_pixelcnn_honours_a_hint_placed_with_the_mouse(window, qtbot):
    if window.colorize_panel.model_box.findData("pixelcnn\tdemo-pixelcnn-colorizer") < 0:
        pytest.skip("the demo PixelCNN weights are not in assets/models")
    run_with_a_hint(window, qtbot, "pixelcnn\tdemo-pixelcnn-colorizer")
