import errno
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from skimage import data

from engine.errors import InputError, SgraffitoError
from engine.imageio import load_photo, new_label_map
from engine.labels import load_label_set
from engine.project import (
    Project,
    StoredCandidate,
    autosave_path,
    discard_autosave,
    list_recoverable,
    load_project,
    save_project,
    write_autosave,
)

COCO = load_label_set("coco-stuff-182")


@pytest.fixture
def project(tmp_path):
    photo_path = tmp_path / "Coffee Cup.jpg"
    Image.fromarray(data.coffee()[:120, :160]).save(photo_path, quality=90)
    photo = load_photo(photo_path)
    original = new_label_map(photo.size, COCO)
    original[60:] = COCO.id_of("grass")
    edited = original.copy()
    edited[80:100, 20:60] = COCO.id_of("sea")
    rng = np.random.default_rng(0)
    candidate = StoredCandidate("c1", "r1", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
                                {"model": "asset-demo", "seed": 7, "box": [20, 80, 68, 120]}, pinned=True)
    result = photo.rgb.copy()
    result[80:100, 20:60] = candidate.image[:20, :40]
    return Project(photo, "coco-stuff-182", original, edited, result, [candidate],
                   history=[{"candidate": "c1", "applied": "2026-01-01T00:00:00+00:00"}],
                   hints=[{"x": 3, "y": 4, "ab": [10, -20]}], mode="edit")


def test_round_trip_is_exact(tmp_path, project):
    path = tmp_path / "work.sgraffito"
    save_project(path, project)
    loaded = load_project(path)
    assert loaded.photo.data == project.photo.data and loaded.photo.name == "Coffee Cup.jpg"
    assert (loaded.photo.rgb == project.photo.rgb).all()
    assert loaded.original_labels.dtype == np.uint16
    assert (loaded.original_labels == project.original_labels).all()
    assert (loaded.edited_labels == project.edited_labels).all()
    assert (loaded.result == project.result).all()
    [candidate] = loaded.candidates
    assert (candidate.id, candidate.request_id, candidate.pinned) == ("c1", "r1", True)
    assert candidate.meta == {"model": "asset-demo", "seed": 7, "box": [20, 80, 68, 120]}
    assert (candidate.image == project.candidates[0].image).all()
    assert loaded.history == project.history and loaded.hints == project.hints and loaded.mode == "edit"
    with zipfile.ZipFile(path) as archive:
        assert archive.read("photo/Coffee Cup.jpg") == project.photo.data
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["format_version"][0] == 1 and manifest["label_set"] == "coco-stuff-182"


def test_sixteen_bit_ids_and_label_map_only_documents(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    (assets / "labels").mkdir(parents=True)
    wide = {"name": "wide-test-set", "unlabeled": 0,
            "labels": [{"id": i, "name": f"class {i}", "color": [i % 256, i // 256, 7]} for i in range(1, 1001)]}
    (assets / "labels" / "wide-test-set.json").write_text(json.dumps(wide))
    monkeypatch.setenv("SGRAFFITO_ASSETS", str(assets))
    ids = np.zeros((20, 30), np.uint16)
    ids[5:, :] = 1000  # beyond 8 bits: stored as a 16-bit PNG
    ids[10:, :5] = 256
    project = Project(None, "wide-test-set", ids.copy(), ids.copy(), mode="translate")
    path = tmp_path / "ids.sgraffito"
    save_project(path, project)
    with zipfile.ZipFile(path) as archive:
        import io

        assert Image.open(io.BytesIO(archive.read("labels/edited.png"))).mode.startswith("I;16")
    loaded = load_project(path)
    assert loaded.photo is None and loaded.mode == "translate" and loaded.result is None
    assert (loaded.edited_labels == ids).all() and (loaded.original_labels == ids).all()


def test_save_is_atomic_and_a_full_disk_keeps_the_old_file(tmp_path, project, monkeypatch):
    path = tmp_path / "work.sgraffito"
    save_project(path, project)
    before = path.read_bytes()
    project.edited_labels[:] = COCO.id_of("sand")
    original_writestr = zipfile.ZipFile.writestr
    calls = []

    def failing_writestr(self, name, payload, *args, **kwargs):
        calls.append(name)
        if name.startswith("labels/edited"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_writestr(self, name, payload, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(SgraffitoError, match="cannot save work.sgraffito: the disk is full"):
        save_project(path, project)
    assert "labels/edited.png" in calls
    assert path.read_bytes() == before  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []  # no temp file left behind


def test_corrupted_zip_is_a_clear_error(tmp_path, project):
    path = tmp_path / "work.sgraffito"
    save_project(path, project)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64  # damage the middle: the PNGs, not the directory
    damaged = tmp_path / "damaged.sgraffito"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="damaged.sgraffito is damaged"):
        load_project(damaged)
    cut = tmp_path / "cut.sgraffito"
    cut.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(InputError, match="cut.sgraffito is not a Sgraffito project or is damaged"):
        load_project(cut)


def write_zip(path, members: dict, manifest: dict | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        if manifest is not None:
            archive.writestr("manifest.json", json.dumps(manifest))
        for name, payload in members.items():
            archive.writestr(name, payload)


def test_path_escapes_and_links_are_refused(tmp_path, project):
    good = tmp_path / "good.sgraffito"
    save_project(good, project)
    with zipfile.ZipFile(good) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    evil = tmp_path / "evil.sgraffito"
    write_zip(evil, {**members, "../outside.txt": b"gotcha"})
    with pytest.raises(InputError, match=r"evil.sgraffito is unsafe: member '../outside.txt' points outside"):
        load_project(evil)
    assert not (tmp_path / "outside.txt").exists()
    absolute = tmp_path / "absolute.sgraffito"
    write_zip(absolute, {**members, "/etc/passwd": b"x"})
    with pytest.raises(InputError, match="points outside the archive"):
        load_project(absolute)
    link = tmp_path / "link.sgraffito"
    with zipfile.ZipFile(link, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
        info = zipfile.ZipInfo("photo/link.jpg")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="is a symbolic link"):
        load_project(link)


def test_size_limits_stop_zip_bombs(tmp_path, project, monkeypatch):
    import engine.project as module

    path = tmp_path / "bomb.sgraffito"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", "{}")
        archive.writestr("candidates/zeros.png", b"\0" * 3_000_000)  # 3 MB of zeros: a few kB compressed
    assert path.stat().st_size < 50_000
    monkeypatch.setattr(module, "MAX_MEMBER_BYTES", 1_000_000)
    with pytest.raises(InputError, match=r"bomb.sgraffito: member 'candidates/zeros.png' claims 3 MB, more than the 1 MB limit"):
        load_project(path)
    monkeypatch.setattr(module, "MAX_MEMBER_BYTES", 4_000_000)
    monkeypatch.setattr(module, "MAX_TOTAL_BYTES", 2_000_000)
    with pytest.raises(InputError, match="bomb.sgraffito unpacks to more than 2 MB; refusing to open it"):
        load_project(path)


def test_newer_major_version_and_bad_contents(tmp_path, project):
    path = tmp_path / "work.sgraffito"
    save_project(path, project)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    manifest = json.loads(members.pop("manifest.json"))

    newer = tmp_path / "newer.sgraffito"
    write_zip(newer, members, {**manifest, "format_version": [2, 0], "app_version": "3.0.0"})
    with pytest.raises(InputError, match=r"newer.sgraffito was saved by a newer Sgraffito \(3.0.0, project format 2.0\)"):
        load_project(newer)

    minor = tmp_path / "minor.sgraffito"
    write_zip(minor, members, {**manifest, "format_version": [1, 7], "future_key": {"ignored": True}})
    assert (load_project(minor).edited_labels == project.edited_labels).all()

    wrong_size = tmp_path / "wrong-size.sgraffito"
    small = Image.fromarray(np.zeros((50, 60), np.uint8))
    import io

    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    write_zip(wrong_size, {**members, "labels/edited.png": buffer.getvalue()}, manifest)
    with pytest.raises(InputError, match=r"labels/edited.png is 60x50 but the photo is 160x120"):
        load_project(wrong_size)

    missing = tmp_path / "missing.sgraffito"
    write_zip(missing, {k: v for k, v in members.items() if not k.startswith("candidates/")}, manifest)
    with pytest.raises(InputError, match="missing.sgraffito is incomplete: candidates/c1.png is missing"):
        load_project(missing)

    not_project = tmp_path / "other.sgraffito"
    write_zip(not_project, {"readme.txt": b"hello"}, {"some": "json"})
    with pytest.raises(InputError, match="is not a Sgraffito project"):
        load_project(not_project)


def test_autosave_recovery(tmp_path, project, isolated_user_data):
    first = write_autosave("doc1", project, source=tmp_path / "work.sgraffito")
    assert first == autosave_path("doc1") and first.is_relative_to(isolated_user_data)
    write_autosave("doc2", project)
    (first.parent / "junk.sgraffito").write_bytes(b"not a zip")  # a half-written autosave must not block recovery
    found = {item.doc_id: item for item in list_recoverable()}
    assert set(found) == {"doc1", "doc2"}
    assert found["doc1"].source == str(tmp_path / "work.sgraffito") and found["doc1"].title == "Coffee Cup.jpg"
    assert [item.doc_id for item in list_recoverable(exclude={"doc2"})] == ["doc1"]
    recovered = load_project(found["doc1"].path)
    assert (recovered.edited_labels == project.edited_labels).all()
    discard_autosave("doc1")
    assert not first.exists() and {item.doc_id for item in list_recoverable()} == {"doc2"}
    with pytest.raises(InputError):
        autosave_path("../escape")


def test_numpy_values_in_metadata_are_saved_as_json(tmp_path, project):
    project.candidates[0].meta = {"seed": np.int64(42), "box": np.array([1, 2, 3, 4]), "strength": np.float32(0.5)}
    path = tmp_path / "numpy.sgraffito"
    save_project(path, project)
    assert load_project(path).candidates[0].meta == {"seed": 42, "box": [1, 2, 3, 4], "strength": 0.5}
    project.history.append({"callback": print})
    with pytest.raises(InputError, match="project metadata holds a builtin_function_or_method"):
        save_project(path, project)
    assert load_project(path).history == project.history[:-1]  # the previous save is intact
