"""Whole folders through one command (engine/batch.py): bad items recorded and skipped, the model loaded once,
resume after a crash without redoing finished items, Ctrl+C after the current item, and two torchrun processes
that share the items and write what one process writes. Photos are tiny (64x48) and the models the shipped demos
(PixelCNN colorizer, demo segmenter) or the tests' fake engine."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import run_command
from engine import batch

ROOT = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, count: int, corrupt: bool = True) -> list[str]:
    """`count` small photos, every other one in a subfolder, plus a damaged JPEG; their keys."""
    rng = np.random.default_rng(7)
    keys = []
    for index in range(count):
        key = f"{'box/' if index % 2 else ''}scan{index}.png"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:48, 0:64]
        photo = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) + rng.integers(0, 40, (48, 64, 3))
        photo = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
        (photo.convert("L") if index == 0 else photo).save(folder / key)  # the first one is a gray scan
        keys.append(key)
    if corrupt:
        (folder / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
        keys.append("damaged.jpg")
    return sorted(keys)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["items"]


def results(out: Path) -> dict:
    """Every output file under `out`: PNGs as bytes, candidates.json without its times."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.suffix == ".png":
            files[path.relative_to(out).as_posix()] = path.read_bytes()
        elif path.name == "candidates.json":
            meta = json.loads(path.read_text())
            for name in ("created", "timings"):
                meta.pop(name)
            for candidate in meta["candidates"]:
                candidate.pop("seconds")
            files[path.relative_to(out).as_posix()] = meta
    return files


def command(*args) -> list[str]:
    return [sys.executable, "-m", "app", *map(str, args)]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_a_folder_with_a_damaged_photo_through_colorize(tmp_path, capsys, monkeypatch):
    from engine.pipelines.pixelcnn import PixelCNNBackend

    keys = make_photos(tmp_path / "scans", 3)
    loads = []
    original = PixelCNNBackend.load
    monkeypatch.setattr(PixelCNNBackend, "load", lambda self, *a: loads.append(a) or original(self, *a))
    out = tmp_path / "coloured"
    assert run_command(["colorize", str(tmp_path / "scans"), "--engine", "pixelcnn", "--samples", "2",
                        "--device", "cpu", "--out", str(out)]) == 1, "a failed item makes the exit status non-zero"
    err = capsys.readouterr().err
    assert len(loads) == 1, "the model loads once for the whole folder"
    items = manifest(out)
    assert sorted(items) == keys
    assert items["damaged.jpg"]["status"] == "failed" and "damaged.jpg" in items["damaged.jpg"]["error"]
    good = [key for key in keys if key != "damaged.jpg"]
    assert all(items[key]["status"] == "done" for key in good)
    for key in good:  # the outputs mirror the input tree, a folder per photo
        folder = out / key.removesuffix(".png")
        assert sorted(p.name for p in folder.iterdir()) == ["candidate_00.png", "candidate_01.png", "candidates.json"]
        meta = json.loads((folder / "candidates.json").read_text())
        assert [c["seed"] for c in meta["candidates"]] == [batch.item_seed(0, key), batch.item_seed(0, key) + 1]
        assert Image.open(folder / "candidate_00.png").size == (64, 48)
    assert "failed: damaged.jpg: damaged.jpg" in err
    assert "colorize: 3 done, 0 skipped, 1 failed of 4 items" in err

    # the same command again: nothing recomputed, the earlier failure still reported
    assert run_command(["colorize", str(tmp_path / "scans"), "--engine", "pixelcnn", "--samples", "2",
                        "--device", "cpu", "--out", str(out)]) == 1
    assert "colorize: 0 done, 3 skipped, 1 failed of 4 items" in capsys.readouterr().err
    assert len(loads) == 1
    # other options are other results: every item is redone; --retry-failed tries the damaged photo again, and
    # --gray-only leaves the photos that have colour alone
    assert run_command(["colorize", str(tmp_path / "scans"), "--engine", "pixelcnn", "--samples", "1",
                        "--device", "cpu", "--out", str(out), "--retry-failed", "--gray-only"]) == 1
    assert "colorize: 1 done, 0 skipped, 3 failed of 4 items" in capsys.readouterr().err
    assert "already has colour" in manifest(out)["box/scan1.png"]["error"]
    assert manifest(out)["scan0.png"]["status"] == "done"


def test_a_folder_with_a_damaged_photo_through_segment(tmp_path, capsys):
    from engine.imageio import load_label_map
    from engine.labels import load_label_set

    keys = make_photos(tmp_path / "scans", 3)
    labels = tmp_path / "labels"
    assert run_command(["segment", str(tmp_path / "scans"), "--device", "cpu", "--out", str(labels)]) == 1
    assert "segment: 3 done, 0 skipped, 1 failed of 4 items" in capsys.readouterr().err
    coco = load_label_set("coco-stuff-182")
    for key in keys:
        if key != "damaged.jpg":  # one label map per photo, at the photo's size, in the mirrored tree
            assert load_label_map(labels / key, coco, (64, 48)).shape == (48, 64)
    assert manifest(labels)["damaged.jpg"]["status"] == "failed"
    # --out of a segment run is no place for another command's results
    assert run_command(["colorize", str(tmp_path / "scans"), "--device", "cpu", "--out", str(labels)]) == 2
    assert "holds the results of `sgraffito segment`" in capsys.readouterr().err


def test_edit_rows_from_a_csv_record_a_wrong_size_map_and_go_on(tmp_path, capsys):
    import tests.fake_backend  # noqa: F401  registers the "fake" edit engine
    from tests.fake_backend import scene

    photo, before, after = scene(size=48)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(before, mode="L").save(tmp_path / "before.png")
    Image.fromarray(after, mode="L").save(tmp_path / "after.png")
    Image.fromarray(after[:32], mode="L").save(tmp_path / "small.png")
    rows = tmp_path / "edits.csv"
    rows.write_text("photo,labels,new_labels\nphoto.png,before.png,after.png\nphoto.png,before.png,small.png\n")
    out = tmp_path / "out"
    assert run_command(["edit", str(rows), "--engine", "fake", "--samples", "1", "--device", "cpu",
                        "--out", str(out)]) == 1
    items = manifest(out)
    assert items["photo.png+after"]["status"] == "done"
    assert items["photo.png+small"]["status"] == "failed" and "small.png" in items["photo.png+small"]["error"]
    assert (out / "photo.png+after" / "candidate_00.png").is_file()
    assert "edit: 1 done, 0 skipped, 1 failed of 2 items" in capsys.readouterr().err


def test_items_outputs_and_seeds_do_not_depend_on_the_order_or_the_other_items(tmp_path):
    for name in ("b/photo.jpg", "b/photo.png", "a.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "in" / "out").mkdir()
    (tmp_path / "in" / "out" / "result.png").write_bytes(b"x")
    items = batch.find_inputs([str(tmp_path / "in")], tmp_path / "in" / "out")
    assert [(i.key, i.name) for i in items] == [("a.png", "a"), ("b/photo.jpg", "b/photo.jpg"),
                                                ("b/photo.png", "b/photo.png")], "results under --out are no inputs"
    alone = batch.find_inputs([str(tmp_path / "in" / "b" / "photo.png"), str(tmp_path / "in" / "a.png")], "o")
    assert [i.key for i in alone] == ["a.png", "b/photo.png"]
    assert batch.item_seed(3, "b/photo.png") == batch.item_seed(3, "b/photo.png") != batch.item_seed(4, "b/photo.png")
    assert batch.is_batch([str(tmp_path / "in")]) and batch.is_batch([str(tmp_path / "in" / "*.png")])
    assert not batch.is_batch([str(tmp_path / "in" / "a.png")])


def wait_for_done(process, out: Path, count: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = sum(e["status"] == "done" for e in manifest(out).values())
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= count:
            return done
        if process.poll() is not None:
            pytest.fail(f"the batch ended before {count} items were done: {process.communicate()[1][-2000:]}")
        time.sleep(0.01)
    process.kill()
    pytest.fail("the batch did not get going")


@pytest.mark.slow  # a run killed part-way in a fresh process, then the resumed and a reference run: ~12 s
def test_a_killed_run_resumes_without_redoing_finished_items_and_ends_as_an_uninterrupted_run(tmp_path, capsys):
    make_photos(tmp_path / "scans", 6, corrupt=False)
    arguments = ["colorize", tmp_path / "scans", "--samples", "2", "--device", "cpu"]
    out = tmp_path / "out"
    process = subprocess.Popen(command(*arguments, "--out", out), cwd=ROOT, env=environment(),
                               stderr=subprocess.PIPE, text=True)
    wait_for_done(process, out, 2)
    process.kill()  # SIGKILL: no handler runs, as in a crash or a power cut
    process.communicate()
    finished = {key: entry for key, entry in manifest(out).items() if entry["status"] == "done"}
    assert 2 <= len(finished) < 6, "killed part-way"
    stamps = {name: (out / name).stat().st_mtime_ns for entry in finished.values() for name in entry["outputs"]}

    assert run_command([*map(str, arguments), "--out", str(out)]) == 0
    assert f"{6 - len(finished)} done, {len(finished)} skipped, 0 failed" in capsys.readouterr().err
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps, "finished items not recomputed"
    reference = tmp_path / "reference"
    assert run_command([*map(str, arguments), "--out", str(reference)]) == 0
    assert results(out) == results(reference)
    assert not list(out.rglob("*.sgraffito-tmp"))


def test_ctrl_c_stops_after_the_current_item_with_a_consistent_manifest(tmp_path):
    keys = make_photos(tmp_path / "scans", 8, corrupt=False)
    out = tmp_path / "out"
    process = subprocess.Popen(command("colorize", tmp_path / "scans", "--samples", "4", "--device", "cpu",
                                       "--out", out), cwd=ROOT, env=environment(), stderr=subprocess.PIPE, text=True)
    wait_for_done(process, out, 1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "SIGINT: stopping after the current item" in err and "not started (interrupted" in err
    items = manifest(out)
    assert 1 <= len(items) < 8 and all(entry["status"] == "done" for entry in items.values())
    for key, entry in items.items():
        assert all((out / name).is_file() for name in entry["outputs"])
    written = {p.parent.relative_to(out).as_posix() for p in out.rglob("candidates.json")}
    assert written == {key.removesuffix(".png") for key in items}, "no item half done and unrecorded"
    assert not list(out.rglob("*.sgraffito-tmp"))
    assert len(keys) == 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two processes that each import torch and load the model, plus a reference run: ~15 s
def test_two_torchrun_processes_cover_every_item_once_with_the_outputs_of_one_process(tmp_path, capsys):
    keys = make_photos(tmp_path / "scans", 6)
    out, reference = tmp_path / "out", tmp_path / "reference"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(free_port()), "-m", "app", "colorize", str(tmp_path / "scans"), "--samples", "2",
              "--out", str(out)]
    done = subprocess.run(launch, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, "the damaged photo failed, so the run did"
    assert "colorize: 6 done, 0 skipped, 1 failed of 7 items on 2 processes" in done.stderr, done.stderr[-3000:]
    items = manifest(out)
    assert sorted(items) == keys and not list(out.glob("manifest.rank*.json")), "rank manifests merged"
    assert [items[key]["rank"] for key in keys] == [index % 2 for index in range(len(keys))], \
        "each item went to exactly one rank, round robin"
    assert run_command(["colorize", str(tmp_path / "scans"), "--samples", "2", "--out", str(reference)]) == 1
    assert results(out) == results(reference)
    assert {key: e["seed"] for key, e in items.items()} == {key: e["seed"] for key, e in manifest(reference).items()}
