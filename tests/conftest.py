import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# One intra-op thread per test process (pytest-xdist runs one process per core): tests run chains of small
# tensor ops, and two OpenMP threads per process on two shared cores spin against each other (measured: a
# sampler test took 94 s with two threads and under 1 s with one). Subprocesses inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A photo opened without a label map is segmented in the background (app/segmentation.py). Tests that open one
# expect it unlabeled unless they ask for the segmentation (tests/test_app_segment.py turns it on).
os.environ.setdefault("SGRAFFITO_SEGMENT_ON_OPEN", "0")

import pytest


def _shipped_weights() -> dict:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "assets" / "models"
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def shipped_models_stay_untouched():
    """A training task's export defaults to the shipped demo folder; a test that forgets its export_dir would
    overwrite the demo weights. Fail the run if any file under assets/models changed."""
    before = _shipped_weights()
    yield
    changed = [str(p) for p, mtime in _shipped_weights().items() if before.get(p) != mtime]
    assert not changed, f"tests wrote into the shipped models: {changed}"


@pytest.fixture(autouse=True)
def isolated_user_data(tmp_path, monkeypatch):
    """Autosaves, settings and imported models of a test never touch the real user's folders."""
    data = tmp_path / "user-data"
    monkeypatch.setenv("SGRAFFITO_DATA", str(data))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return data


def show_main_window(qtbot, monkeypatch, size=(900, 700), prepare=None):
    """The real main window, shown offscreen, with errors collected in `win.errors` instead of dialogs and
    unsaved changes discarded without asking. `prepare(win)` runs before it is shown."""
    from app.main_window import MainWindow

    monkeypatch.setenv("SGRAFFITO_DEVICE", "cpu")
    win = MainWindow()
    qtbot.addWidget(win)
    if prepare is not None:
        prepare(win)
    win.errors = []
    monkeypatch.setattr(win, "show_error", lambda message, title="": win.errors.append(message))
    monkeypatch.setattr(win, "ask_save_changes", lambda: "discard")
    win.resize(*size)
    win.show()
    qtbot.waitExposed(win)
    return win


@pytest.fixture
def runtime():
    """An engine runtime on the CPU, shut down after the test."""
    from engine.jobs import Runtime

    rt = Runtime(device="cpu")
    yield rt
    rt.shutdown()


def drag(win, points):
    """Press, move through `points` (photo pixels) and release the left button on the real window's canvas."""
    from PySide6.QtCore import QPointF, Qt
    from PySide6.QtTest import QTest

    viewport = win.canvas.viewport()
    to_view = [win.canvas.mapFromScene(QPointF(x + 0.5, y + 0.5)) for x, y in points]
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, to_view[0])
    for point in to_view[1:]:
        QTest.mouseMove(viewport, point)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, to_view[-1])


@pytest.fixture(autouse=True)
def no_modal_dialogs(monkeypatch):
    """Offscreen, a modal dialog waits for a click that never comes and the run hangs until CI's timeout. A test
    that opens one unexpectedly fails at once, naming it; tests that answer a dialog patch the asking method
    (or these functions) themselves."""
    from PySide6.QtWidgets import QColorDialog, QDialog, QFileDialog, QInputDialog, QMessageBox

    def refuse(what):
        def opened(*args, **kwargs):
            detail = " ".join(str(a) for a in args if isinstance(a, str))[:200]
            raise AssertionError(f"a test opened a modal {what} nobody can answer offscreen: {detail}")
        return opened

    for owner, names in ((QDialog, ("exec",)), (QMessageBox, ("exec", "question", "information", "warning",
                                                               "critical")),
                         (QFileDialog, ("getOpenFileName", "getSaveFileName", "getExistingDirectory")),
                         (QInputDialog, ("getInt", "getText", "getItem", "getDouble")), (QColorDialog, ("getColor",))):
        for name in names:
            monkeypatch.setattr(owner, name, refuse(f"{owner.__name__}.{name}"))
