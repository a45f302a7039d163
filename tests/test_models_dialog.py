"""Help > Models…: the catalogue in the GUI, a download off the UI thread with progress and Cancel (against a
real HTTP server on 127.0.0.1), and the Generate area's notice while only demo models are installed."""

from pathlib import Path

import pytest

from app.models_dialog import ModelsDialog
from engine.model_store import ModelInfo, user_models_dir
from tests.conftest import show_main_window
from tests.model_server import entry, start_server, taming_checkpoint_bytes, write_catalogue


@pytest.fixture(scope="module")
def served():
    state, httpd = start_server()
    data = taming_checkpoint_bytes()
    yield state, data
    httpd.shutdown()
    httpd.server_close()


def catalogue_with(tmp_path, monkeypatch, served, path, **route):
    state, data = served
    url = state.add(path, data, **route)
    monkeypatch.setenv("SGRAFFITO_CATALOGUE", str(write_catalogue(
        tmp_path / "catalogue.json", [entry("tiny-vqgan", "vqgan", url, data, file_name="last.ckpt")])))


def test_dialog_lists_the_catalogue_with_licence_and_manual_command(qtbot):
    dialog = ModelsDialog()
    qtbot.addWidget(dialog)
    names = [dialog.table.item(row, 0).text() for row in range(dialog.table.rowCount())]
    assert "asset-landscape" in names and "coltran" in names
    assert dialog.select("asset-landscape")
    text = dialog.details.toPlainText()
    assert "Adobe Research License" in text and "sgraffito import asset" in text and "dropbox.com" in text
    assert dialog.get_button.isEnabled()
    dialog.select("asapnet-cityscapes")  # no direct link: download by hand, or import a file
    assert not dialog.get_button.isEnabled() and dialog.file_button.isEnabled()


def test_download_runs_off_the_ui_thread_with_progress_and_installs(qtbot, tmp_path, monkeypatch, served):
    catalogue_with(tmp_path, monkeypatch, served, "/dialog/last.ckpt", throttle=0.002)
    dialog = ModelsDialog()
    qtbot.addWidget(dialog)
    assert dialog.select("tiny-vqgan")
    seen = []
    with qtbot.waitSignal(dialog.models_changed, timeout=30_000):
        assert dialog.start()
        dialog.thread.progressed.connect(lambda p: seen.append((p.phase, dialog.status.text())))
        assert dialog.cancel_button.isEnabled() and not dialog.get_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.thread is None, timeout=10_000)
    assert any(phase == "download" and "/s" in text for phase, text in seen)  # speed (and ETA) shown
    assert "Installed tiny-vqgan" in dialog.status.text()
    row = next(r for r in range(dialog.table.rowCount()) if dialog.table.item(r, 0).text() == "tiny-vqgan")
    assert dialog.table.item(row, 3).text() == "installed"
    assert (user_models_dir() / "tiny-vqgan" / "download.json").is_file()


def test_cancel_stops_the_download_and_keeps_the_part(qtbot, tmp_path, monkeypatch, served):
    catalogue_with(tmp_path, monkeypatch, served, "/dialog-slow/last.ckpt", throttle=0.05)
    dialog = ModelsDialog()
    qtbot.addWidget(dialog)
    dialog.select("tiny-vqgan")
    dialog.start()
    qtbot.waitUntil(lambda: "MB" in dialog.status.text() or "KB" in dialog.status.text(), timeout=10_000)
    dialog.cancel()
    qtbot.waitUntil(lambda: dialog.thread is None, timeout=10_000)
    assert "cancelled" in dialog.status.text()
    assert not (user_models_dir() / "tiny-vqgan").exists()
    assert (user_models_dir() / ".downloads" / "tiny-vqgan" / "last.ckpt.part").is_file()


def test_help_menu_opens_the_dialog_and_the_demo_only_notice_links_to_it(qtbot, monkeypatch):
    win = show_main_window(qtbot, monkeypatch)
    action = win.actions["models"]
    assert action in win.menus["help"].actions()
    notice = win.gallery.demo_notice
    demo = [ModelInfo("demo-asset-landscape", "asset", "ASSET demo", Path("."), "demo")]
    win.gallery.bridge.models_listed.emit(demo)
    assert notice.isVisible() and "Only the demo models" in notice.text()
    notice.linkActivated.emit("models")
    assert win.models_dialog is not None and win.models_dialog.isVisible()
    win.models_dialog.close()
    win.gallery.bridge.models_listed.emit(demo + [ModelInfo("asset-landscape", "asset", "ASSET", Path("."),
                                                            "imported")])
    assert not notice.isVisible()
    win.gallery.bridge.models_listed.emit(demo)
    notice.linkActivated.emit("hide")
    win.gallery.bridge.models_listed.emit(demo)
    assert not notice.isVisible()  # said once: hidden stays hidden


def test_candidates_and_exports_name_the_model_that_made_them(tmp_path):
    """A request for an engine's default model (model "") records that model's name, which the gallery's group,
    the applied history and the exported metadata ("Models") show."""
    import numpy as np

    from app.workspace import Workspace
    from engine.export import export_image, history_models, read_export_metadata
    from tests.test_workspace import PlainDocument, RecordingJobs, finish

    workspace = Workspace(PlainDocument(), jobs=RecordingJobs())
    job = workspace.generate(engine="asset", model="", k=1, seed=3)
    finish(workspace, job)
    [group] = workspace.groups.values()
    [stored] = workspace.document.candidates
    assert group.title == "demo-asset-landscape" and stored.meta["model"] == "demo-asset-landscape"
    workspace.apply(stored.id)
    history = workspace.document.history
    assert history[-1]["model"] == "demo-asset-landscape"
    assert history_models(history + [{"backend": "asapnet", "model": ""}]) == [
        "demo-asset-landscape", "asapnet (default model)"]
    out = export_image(tmp_path / "out.png", np.zeros((8, 8, 3), np.uint8),
                       metadata={"Models": history_models(history), "History": history}, generated=True)
    assert read_export_metadata(out)["parameters"]["Models"] == ["demo-asset-landscape"]


def test_the_list_does_not_jump_when_a_download_starts_or_fails(qtbot, tmp_path, monkeypatch):
    """Offline, the failure message runs to ten lines (the manual download and import commands); it used to push
    the catalogue up by that much, and the progress bar appearing moved it again. Both keep their room now."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the download fails at once with "connection refused"
    data = b"not reached"
    monkeypatch.setenv("SGRAFFITO_CATALOGUE", str(write_catalogue(
        tmp_path / "catalogue.json", [entry("tiny-vqgan", "vqgan", f"http://127.0.0.1:{port}/last.ckpt", data,
                                            file_name="last.ckpt")])))
    dialog = ModelsDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    assert dialog.select("tiny-vqgan")
    before = dialog.table.geometry()
    assert dialog.start()
    qtbot.wait(50)
    assert dialog.table.geometry() == before
    qtbot.waitUntil(lambda: dialog.thread is None, timeout=10_000)
    message = dialog.status.text()
    assert "tiny-vqgan" in message and "sgraffito models get" in message and message.count("\n") >= 3
    qtbot.wait(50)
    assert dialog.table.geometry() == before, "the catalogue moved when the message arrived"
