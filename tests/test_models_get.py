"""`sgraffito models get` and `models --available` (engine/catalogue.py, engine/downloads.py) against a real HTTP
server on 127.0.0.1 in the test process, serving tiny checkpoints in the official layouts and archive formats.
No test reaches the internet."""

import hashlib
import io
import json
import socket
import time
import zipfile

import pytest

from app.cli import main
from engine import catalogue, downloads
from engine.errors import Cancelled, CheckpointError
from engine.model_store import list_models, user_models_dir
from tests.model_server import asset_bundle_zip, entry, start_server, taming_checkpoint_bytes, write_catalogue

OFFICIAL = {"asset-landscape", "asset-coco", "vqgan-imagenet-f16-1024", "vqgan-imagenet-f16-16384", "vqgan-sflckr",
            "taming-sflckr",
            "coltran", "asapnet-cityscapes", "asapnet-facades512", "asapnet-facades1024", "deeplab-cocostuff164k"}


@pytest.fixture(scope="module")
def server():
    state, httpd = start_server()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint():
    return taming_checkpoint_bytes()


@pytest.fixture
def fresh(server):
    """An empty request log for this test."""
    server.log.clear()
    return server


def add_catalogue(tmp_path, monkeypatch, *entries):
    monkeypatch.setenv("SGRAFFITO_CATALOGUE", str(write_catalogue(tmp_path / "catalogue.json", list(entries))))


def nothing_installed(name):
    assert not (user_models_dir() / name).exists()
    assert not (user_models_dir() / ".downloads").exists() or not any((user_models_dir() / ".downloads").iterdir())


# ---- the catalogue -----------------------------------------------------------------------------------------


def test_catalogue_has_every_official_model_with_source_licence_and_an_importable_command():
    from engine import registry

    entries = {e.name: e for e in catalogue.entries()}
    assert OFFICIAL <= set(entries)
    for e in entries.values():
        assert e.engine in registry.KINDS and e.licence and e.paper and e.purpose and e.files
        assert all(f.url or f.page for f in e.files)
        # the manual command parses with the importer's own arguments
        words = e.import_command("/tmp/x").split()
        assert words[:3] == ["sgraffito", "import", e.engine] and words[-2:] == ["--name", e.name]
        importer = registry.resolve(registry.spec(e.engine).importer)
        import argparse
        parser = argparse.ArgumentParser(exit_on_error=False)
        parser.add_argument("file")
        parser.add_argument("--name")
        importer.add_arguments(parser)
        parser.parse_args(words[3:])
    assert entries["vqgan-imagenet-f16-1024"].size == 957_954_257
    assert entries["asset-landscape"].files[0].url.startswith("https://www.dropbox.com/s/5kyov71ko340ra0/")


def test_models_available_lists_the_catalogue_beside_installed_models(capsys):
    assert main(["models", "--available"]) == 0
    out = capsys.readouterr().out
    assert "demo-asset-landscape" in out and "official models" in out
    for name in OFFICIAL:
        assert name in out
    assert "Adobe Research License" in out


@pytest.mark.parametrize("url, direct", [
    ("https://www.dropbox.com/s/5kyov71ko340ra0/landscape.zip?dl=0",
     "https://www.dropbox.com/s/5kyov71ko340ra0/landscape.zip?dl=1"),
    ("https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/?p=%2Fckpts%2Flast.ckpt",
     "https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/files/?p=%2Fckpts%2Flast.ckpt&dl=1"),
    ("https://heibox.uni-heidelberg.de/f/0e42b04e2e904890a9b6/",
     "https://heibox.uni-heidelberg.de/f/0e42b04e2e904890a9b6/?dl=1"),
    ("https://drive.google.com/file/d/1AbC_d-9/view?usp=sharing",
     "https://drive.google.com/uc?export=download&id=1AbC_d-9"),
    ("https://storage.cloud.google.com/gresearch/coltran/coltran.zip",
     "https://storage.googleapis.com/gresearch/coltran/coltran.zip"),
    ("https://github.com/a/b/releases/download/v1.0/x.pth", "https://github.com/a/b/releases/download/v1.0/x.pth"),
])
def test_host_quirks_give_direct_download_links(url, direct):
    assert downloads.direct_url(url) == direct


def test_mirror_replaces_every_host(monkeypatch):
    monkeypatch.setenv("SGRAFFITO_MODEL_MIRROR", "http://lab.example/models/")
    e = catalogue.entry("asset-landscape")
    assert downloads.source_url(e, e.files[0]) == "http://lab.example/models/asset-landscape/landscape.zip"


# ---- get -------------------------------------------------------------------------------------------------------


def test_get_downloads_verifies_imports_records_and_a_second_get_does_nothing(tmp_path, monkeypatch, fresh,
                                                                              checkpoint, capsys):
    url = fresh.add("/ok/last.ckpt", checkpoint)
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, checkpoint, file_name="last.ckpt"))
    seen = []
    result = downloads.install(catalogue.entry("tiny-vqgan"), progress=seen.append)
    assert not result.already and result.path == user_models_dir() / "tiny-vqgan"
    done = [p.done for p in seen if p.phase == "download"]
    assert done == sorted(done) and done[-1] == len(checkpoint)
    assert all(p.total == len(checkpoint) for p in seen if p.phase == "download")
    assert [p.phase for p in seen if p.phase != "download"] == ["verify", "import", "done"]
    record = json.loads((result.path / downloads.RECORD).read_text())
    assert record["files"] == [{"name": "last.ckpt", "url": url, "size": len(checkpoint),
                                "sha256": hashlib.sha256(checkpoint).hexdigest()}]
    assert record["licence"] == "test licence"
    assert [m.name for m in list_models("vqgan") if m.source == "imported"] == ["tiny-vqgan"]
    assert not (user_models_dir() / ".downloads").exists()

    requests_before = len(fresh.log)
    assert main(["models", "get", "tiny-vqgan"]) == 0
    assert "already installed" in capsys.readouterr().out
    assert len(fresh.log) == requests_before  # nothing downloaded


def test_get_an_asset_bundle_zip_from_the_mirror_with_the_catalogue_name(tmp_path, monkeypatch, fresh, capsys):
    """The built-in asset-landscape entry: landscape.zip unpacked, its yaml/ckpt/guiding found and imported."""
    fresh.add("/mirror/asset-landscape/landscape.zip", asset_bundle_zip(heads=2))
    monkeypatch.setenv("SGRAFFITO_MODEL_MIRROR", fresh.base + "/mirror")
    assert main(["models", "get", "asset-landscape"]) == 0
    assert "installed asset-landscape" in capsys.readouterr().out
    config = json.loads((user_models_dir() / "asset-landscape" / "config.json").read_text())
    assert config["sga"]["encoder_attention_heads"] == 2  # from landscape_1024.yaml, not d_model // 64 = 0 -> 1
    record = json.loads((user_models_dir() / "asset-landscape" / downloads.RECORD).read_text())
    assert record["files"][0]["url"] == fresh.base + "/mirror/asset-landscape/landscape.zip"


def test_cancel_keeps_the_part_and_the_next_get_resumes_with_a_range_request(tmp_path, monkeypatch, fresh,
                                                                              checkpoint):
    url = fresh.add("/cancel/last.ckpt", checkpoint, throttle=0.002)
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, checkpoint, file_name="last.ckpt"))
    seen = []

    def cancelled():
        return any(p.phase == "download" and p.done >= 2 << 20 for p in seen)

    with pytest.raises(Cancelled, match="resume"):
        downloads.install(catalogue.entry("tiny-vqgan"), progress=seen.append, cancelled=cancelled)
    part = user_models_dir() / ".downloads" / "tiny-vqgan" / "last.ckpt.part"
    kept = part.stat().st_size
    assert 0 < kept < len(checkpoint)
    assert not (user_models_dir() / "tiny-vqgan").exists()

    downloads.install(catalogue.entry("tiny-vqgan"))
    assert fresh.log[-1] == ("/cancel/last.ckpt", f"bytes={kept}-")
    assert (user_models_dir() / "tiny-vqgan" / "config.json").is_file()


def test_a_dropped_connection_is_resumed_where_it_stopped(tmp_path, monkeypatch, fresh, checkpoint):
    url = fresh.add("/drop/last.ckpt", checkpoint, drop_after=1_000_000)
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, checkpoint, file_name="last.ckpt"))
    result = downloads.install(catalogue.entry("tiny-vqgan"))
    first, resumed = [r for _, r in fresh.log]
    assert first is None and 1_000_000 - (64 << 10) < int(resumed[6:-1]) <= 1_000_000  # at most a block again
    record = json.loads((result.path / downloads.RECORD).read_text())
    assert record["files"][0]["sha256"] == hashlib.sha256(checkpoint).hexdigest()


def test_wrong_size_is_refused_before_downloading_and_nothing_is_left(tmp_path, monkeypatch, fresh, checkpoint,
                                                                      capsys):
    url = fresh.add("/size/last.ckpt", checkpoint)
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, checkpoint, file_name="last.ckpt",
                                               size=len(checkpoint) + 1))
    assert main(["models", "get", "tiny-vqgan"]) == 2
    err = capsys.readouterr().err
    assert f"{len(checkpoint):,} bytes, the catalogue says {len(checkpoint) + 1:,}" in err
    nothing_installed("tiny-vqgan")


def test_wrong_sha256_is_refused_and_the_file_deleted(tmp_path, monkeypatch, fresh, checkpoint):
    url = fresh.add("/sha/last.ckpt", checkpoint)
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, checkpoint, file_name="last.ckpt",
                                               sha="0" * 64))
    with pytest.raises(downloads.DownloadError, match="sha256"):
        downloads.install(catalogue.entry("tiny-vqgan"))
    nothing_installed("tiny-vqgan")


def test_wrong_content_fails_the_strict_import_and_leaves_nothing_installed(tmp_path, monkeypatch, fresh):
    from tests.model_server import tiny_vqgan_state_dict

    sd = tiny_vqgan_state_dict()
    sd["encoder.mid.attn_1.proj.weight"] = sd.pop("encoder.mid.attn_1.proj_out.weight")
    data = taming_checkpoint_bytes(sd)
    url = fresh.add("/renamed/last.ckpt", data)
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, data, file_name="last.ckpt"))
    with pytest.raises(CheckpointError, match="proj_out"):
        downloads.install(catalogue.entry("tiny-vqgan"))
    nothing_installed("tiny-vqgan")
    assert not [m for m in list_models() if m.source == "imported"]


def test_404_says_url_size_and_the_manual_import_command(tmp_path, monkeypatch, fresh, capsys):
    url = fresh.base + "/missing/last.ckpt"
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, b"x" * 1234, file_name="last.ckpt",
                                               sha=None))
    assert main(["models", "get", "tiny-vqgan"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and url in err and "1.2 KB" in err
    assert "sgraffito import vqgan DOWNLOAD_FOLDER/last.ckpt --name tiny-vqgan" in err
    assert "sgraffito models get tiny-vqgan --from last.ckpt" in err
    nothing_installed("tiny-vqgan")


def test_a_slow_server_times_out_with_a_message(tmp_path, monkeypatch, fresh, checkpoint):
    url = fresh.add("/slow/last.ckpt", checkpoint, delay=3.0)
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", url, checkpoint, file_name="last.ckpt"))
    monkeypatch.setenv("SGRAFFITO_DOWNLOAD_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(downloads.DownloadError, match="did not answer within 0.5 s"):
        downloads.install(catalogue.entry("tiny-vqgan"))
    assert time.monotonic() - start < 2.5
    nothing_installed("tiny-vqgan")


def test_a_zip_with_dotdot_members_is_refused_whole(tmp_path, monkeypatch, fresh):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("landscape/landscape_1024.yaml", "model: {}\n")
        z.writestr("../../escaped.txt", "gotcha")
    data = out.getvalue()
    url = fresh.add("/evil/landscape.zip", data)
    add_catalogue(tmp_path, monkeypatch, entry("evil", "asset", url, data, file_name="landscape.zip", archive="zip",
                                               import_file="landscape_1024.ckpt"))
    with pytest.raises(downloads.DownloadError, match=r"'\.\./\.\./escaped.txt' contains '\.\.'"):
        downloads.install(catalogue.entry("evil"))
    assert not list(tmp_path.rglob("escaped.txt")) and not list(user_models_dir().parent.rglob("escaped.txt"))
    assert not list(user_models_dir().rglob("landscape_1024.yaml"))
    nothing_installed("evil")


def test_unpack_refuses_absolute_members_links_and_bombs(tmp_path):
    import stat

    def make(name, members):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for member in members:
                z.writestr(*member) if isinstance(member, tuple) else z.writestr(member, "x")
        return path

    with pytest.raises(downloads.DownloadError, match="absolute"):
        downloads.unpack(make("abs.zip", ["/etc/passwd"]), tmp_path / "a", "zip")
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(downloads.DownloadError, match="is a link"):
        downloads.unpack(make("link.zip", [(link, "/etc/passwd")]), tmp_path / "b", "zip")
    with pytest.raises(downloads.DownloadError, match="more than"):
        downloads.unpack(make("bomb.zip", [("zeros", b"\0" * (8 << 20))]), tmp_path / "c", "zip",
                         max_bytes=1 << 20)
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abc")


def test_google_drive_confirmation_page_is_followed(tmp_path, monkeypatch, fresh, checkpoint):
    url = fresh.add("/uc", checkpoint, drive_confirm=True)
    add_catalogue(tmp_path, monkeypatch, entry("drive-vqgan", "vqgan", url + "?export=download&id=1AbC",
                                               checkpoint, file_name="last.ckpt"))
    downloads.install(catalogue.entry("drive-vqgan"))
    paths = [p for p, _ in fresh.log]
    assert paths[0] == "/uc?export=download&id=1AbC"
    assert paths[1].startswith("/uc?") and "confirm=t" in paths[1] and "uuid=0d6c7e1a" in paths[1]
    assert (user_models_dir() / "drive-vqgan" / "config.json").is_file()


def test_a_web_page_instead_of_the_file_is_an_error(tmp_path, monkeypatch, fresh):
    url = fresh.add("/login", b"<html><body>Please sign in</body></html>", content_type="text/html")
    add_catalogue(tmp_path, monkeypatch, entry("page", "vqgan", url, None, file_name="last.ckpt"))
    with pytest.raises(downloads.DownloadError, match="web page instead of the file"):
        downloads.install(catalogue.entry("page"))
    nothing_installed("page")


def test_offline_get_of_the_catalogue_name_fails_fast_with_the_manual_command(monkeypatch, capsys):
    """No network: here a port nothing listens on (connection refused), the same path as an unreachable host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SGRAFFITO_MODEL_MIRROR", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    assert main(["models", "get", "asset-landscape"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/asset-landscape/landscape.zip" in err and "about 5 GB" in err
    assert ("sgraffito import asset UNPACKED_FOLDER/landscape_1024.ckpt --guiding "
            "UNPACKED_FOLDER/landscape_guiding.ckpt --config UNPACKED_FOLDER/landscape_1024.yaml "
            "--name asset-landscape") in err
    assert "https://www.dropbox.com/s/5kyov71ko340ra0/landscape.zip" in err
    nothing_installed("asset-landscape")


def test_an_entry_without_a_direct_link_says_where_to_download_it(capsys):
    assert main(["models", "get", "asapnet-cityscapes"]) == 2
    err = capsys.readouterr().err
    assert "drive.google.com/drive/folders/1mNWsh6QwA-5i8KeihrI6opDj-a2AcOq9" in err
    assert "cityscapes/latest_net_G.pth" in err
    assert "sgraffito models get asapnet-cityscapes --from latest_net_G.pth" in err
    assert "sgraffito import asapnet DOWNLOAD_FOLDER/latest_net_G.pth --dataset cityscapes" in err


def test_from_a_downloaded_file_with_the_same_checks(tmp_path, monkeypatch, checkpoint, capsys):
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", "http://127.0.0.1:9/never", checkpoint,
                                               file_name="last.ckpt"))
    wrong = tmp_path / "other.ckpt"
    wrong.write_bytes(checkpoint + b"junk")
    assert main(["models", "get", "tiny-vqgan", "--from", str(wrong)]) == 2
    assert "the catalogue says" in capsys.readouterr().err
    nothing_installed("tiny-vqgan")
    given = tmp_path / "downloads" / "last.ckpt"
    given.parent.mkdir()
    given.write_bytes(checkpoint)
    assert main(["models", "get", "tiny-vqgan", "--from", str(given.parent)]) == 0
    record = json.loads((user_models_dir() / "tiny-vqgan" / downloads.RECORD).read_text())
    assert record["files"][0]["from"] == str(given) and record["files"][0]["size"] == len(checkpoint)
    assert given.exists()  # the user's file is left where it was


def test_a_downloaded_file_saved_under_another_name_is_taken_by_its_size_and_hash(tmp_path, monkeypatch,
                                                                                   checkpoint, capsys):
    add_catalogue(tmp_path, monkeypatch, entry("tiny-vqgan", "vqgan", "http://127.0.0.1:9/never", checkpoint,
                                               file_name="last.ckpt"))
    given = tmp_path / "last (1).ckpt"  # as a browser names a second download of the same file
    given.write_bytes(checkpoint)
    assert main(["models", "get", "tiny-vqgan", "--from", str(given)]) == 0, capsys.readouterr().err
    record = json.loads((user_models_dir() / "tiny-vqgan" / downloads.RECORD).read_text())
    assert record["files"][0]["from"] == str(given) and given.exists()
