"""Preferences kept between sessions (QSettings), the theme, and the CUDA-build notice."""

import os

import numpy as np
import pytest
from PIL import Image
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QStyle

from app import gpu_hint, settings
from app.gui import remembered_label_set
from app.main_window import MainWindow


def fail(message, title=""):
    raise AssertionError(message)


@pytest.fixture
def make_window(qtbot, monkeypatch):
    def make():
        window = MainWindow()
        monkeypatch.setattr(window, "show_error", fail)  # a modal dialog would hang the test
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        return window

    yield make
    QApplication.instance().setPalette(QApplication.style().standardPalette())


def glyph_lightness(glyph) -> int:
    """The lightest opaque pixel of a style's icon."""
    image = QApplication.style().standardIcon(glyph).pixmap(16, 16).toImage()
    return max((image.pixelColor(x, y).lightness() for x in range(image.width()) for y in range(image.height())
                if image.pixelColor(x, y).alpha() > 128), default=0)


def window_colour():
    return QApplication.instance().palette().color(QPalette.ColorRole.Window)


def test_settings_file_lives_in_the_test_config_dir_not_the_users(tmp_path):
    settings.set_theme("dark")
    path = settings.store().fileName()
    assert path.startswith(str(tmp_path / "config")), path
    assert os.path.isfile(path)


def test_recent_files_newest_first_without_duplicates_or_vanished_files(tmp_path, make_window):
    paths = []
    for name in ("a.png", "b.png", "c.png"):
        paths.append(tmp_path / name)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), np.uint8)).save(paths[-1])
    window = make_window()
    for path in paths:
        assert window.open_path(path)
    window.open_path(paths[0])  # opened again: moves to the top, not listed twice
    paths[1].unlink()
    assert settings.recent_files() == [paths[0], paths[2]]
    window._fill_recent()
    assert [a.toolTip() for a in window.menus["recent"].actions()] == [str(paths[0]), str(paths[2])]


def test_window_size_and_dock_layout_come_back(make_window, qtbot):
    window = make_window()
    window.resize(640, 470)  # the offscreen screen is 800 x 600
    window.palette.hide()
    closed_size = window.size()
    window.close()
    restored = MainWindow()  # as app.gui.launch: restored before it is shown
    qtbot.addWidget(restored)
    assert restored.size() != closed_size
    assert settings.restore_window(restored)
    restored.show()
    assert restored.size() == closed_size
    assert not restored.palette.isVisible()


def test_nothing_to_restore_on_first_start(make_window):
    assert not settings.restore_window(make_window())


def test_first_start_on_a_screen_smaller_than_the_default_window_fits_it(qtbot):
    """1400 x 900 on a 1366 x 768 laptop opened with Generate and the gallery's buttons off the screen."""
    window = MainWindow()
    qtbot.addWidget(window)
    settings.place_window(window)  # nothing saved yet; the offscreen screen is 800 x 600
    window.show()
    qtbot.waitExposed(window)
    available = window.screen().availableGeometry()
    assert window.isMaximized()
    assert window.width() <= available.width() and window.height() <= available.height()
    window.showNormal()
    window.resize(700, 500)
    left_as = window.size()
    window.close()
    again = MainWindow()  # the next start: as the user left it, not maximized again
    qtbot.addWidget(again)
    settings.place_window(again)
    assert not again.isMaximized() and again.size() == left_as


SHORT_SCREEN_CLIENT_HEIGHT = 641  # 1280 x 720 (a 1920 x 1080 laptop at 150 %) less a taskbar and a title bar


def test_the_window_fits_a_short_screen_in_both_modes_and_the_colorize_panel_scrolls_there(tmp_path, qtbot,
                                                                                              monkeypatch):
    window = MainWindow()  # as app.gui.launch starts it the first time
    monkeypatch.setattr(window, "show_error", fail)
    qtbot.addWidget(window)
    window.resize(settings.FIRST_START_SIZE)
    window.show()
    qtbot.waitExposed(window)
    window.share_dock_height()
    qtbot.wait(20)
    recent = window.palette.recent
    assert recent.height() == recent.maximumHeight() > 2 * recent.minimumHeight(), "a full Recent section"
    assert window.minimumSizeHint().height() <= SHORT_SCREEN_CLIENT_HEIGHT, "label mode"
    Image.fromarray((np.add.outer(np.arange(300), np.arange(400)) % 200 + 30).astype(np.uint8), "L").save(
        tmp_path / "old.png")
    assert window.open_path(tmp_path / "old.png") and window.document.mode == "colorize"
    assert window.minimumSizeHint().height() <= SHORT_SCREEN_CLIENT_HEIGHT, "colorize mode"
    panel = window.colorize_panel
    qtbot.wait(50)
    assert panel.widget().verticalScrollBar().maximum() == 0, "where there is room, every field shows at once"
    window.resize(1000, 580)
    qtbot.wait(50)
    assert panel.widget().verticalScrollBar().maximum() > 0, "the panel scrolls on a short window"
    assert window.gallery.height() >= 0.4 * (window.gallery.height() + panel.height()), "the colourings keep room"


def test_label_set_choice_is_remembered(make_window):
    window = make_window()
    assert remembered_label_set() is None
    index = window.palette.set_combo.findData("ade20k-150")
    window.palette.set_combo.setCurrentIndex(index)
    window.palette.set_combo.activated.emit(index)
    assert settings.label_set() == "ade20k-150"
    assert remembered_label_set().name == "ade20k-150"


def test_device_choice_is_stored_and_handed_to_the_engine(make_window, monkeypatch):
    monkeypatch.delenv("SGRAFFITO_DEVICE", raising=False)
    window = make_window()
    assert window.actions["device_auto"].isChecked()
    window.actions["device_cpu"].trigger()
    assert settings.device() == "cpu"
    assert os.environ["SGRAFFITO_DEVICE"] == "cpu"
    assert make_window().actions["device_cpu"].isChecked()


def test_dark_theme_darkens_the_palette_and_canvas_and_light_brings_them_back(make_window):
    window = make_window()
    assert window_colour().lightness() > 128, "no desktop here: the system scheme is light"
    window.actions["theme_dark"].trigger()
    assert window_colour().lightness() < 80
    assert window.canvas.backgroundBrush().color().lightness() < 80
    text = QApplication.instance().palette().color(QPalette.ColorRole.WindowText)
    assert text.lightness() - window_colour().lightness() > 150, "text stays legible"
    assert settings.theme() == "dark"
    assert glyph_lightness(QStyle.StandardPixmap.SP_DockWidgetCloseButton) > 180, "dock buttons stay visible"
    window.actions["theme_light"].trigger()
    assert window_colour().lightness() > 200
    assert window.canvas.backgroundBrush().color().lightness() > 120


def test_theme_choice_is_applied_at_start(make_window):
    settings.set_theme("dark")
    window = make_window()
    assert window.actions["theme_dark"].isChecked()
    assert window_colour().lightness() < 80


def test_cuda_hint_only_for_a_gpu_with_a_cpu_build_of_torch(monkeypatch):
    monkeypatch.setattr(gpu_hint, "nvidia_gpu_present", lambda: False)
    monkeypatch.setattr(gpu_hint, "torch_cuda_version", lambda: None)
    monkeypatch.setattr(gpu_hint, "torch_version", lambda: "2.13.0")
    assert gpu_hint.cuda_hint() is None
    monkeypatch.setattr(gpu_hint, "nvidia_gpu_present", lambda: True)
    text = gpu_hint.cuda_hint()
    assert "pip install --force-reinstall 'torch==2.13.0'" in text and "--index-url https://download.pytorch.org/whl/cu" in text
    monkeypatch.setattr(gpu_hint, "torch_cuda_version", lambda: "12.8")
    assert gpu_hint.cuda_hint() is None


def test_gpu_detection_reads_the_driver_or_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_hint.shutil, "which", lambda name: None)
    monkeypatch.setattr(gpu_hint, "Path", lambda path: tmp_path / "no-driver")
    assert not gpu_hint.nvidia_gpu_present()
    monkeypatch.setattr(gpu_hint.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert gpu_hint.nvidia_gpu_present()


def test_cuda_hint_is_shown_once_in_the_status_bar(make_window, qtbot, monkeypatch):
    monkeypatch.setattr(gpu_hint, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(gpu_hint, "torch_cuda_version", lambda: None)
    monkeypatch.setattr(gpu_hint, "torch_version", lambda: "2.13.0")
    window = make_window()
    with qtbot.waitSignal(window.gpu_hint.found, timeout=5000):
        window.gpu_hint.check()
    assert "--index-url" in window.statusBar().currentMessage()
    assert settings.seen(gpu_hint.NOTICE)
    started = []
    monkeypatch.setattr(gpu_hint.threading, "Thread", lambda **kw: started.append(kw))
    window.gpu_hint.check()
    assert not started, "told once: no second check"
