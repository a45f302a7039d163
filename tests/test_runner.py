"""The shared runner for engine subcommands, driven through the real `sgraffito` CLI entry point with a
test-only subcommand that runs the fake backend."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import run_command
from engine import commands
from engine.commands._runner import add_runner_arguments, run_request
from tests import fake_backend

ROOT = Path(__file__).resolve().parent.parent


class FakeEditCommand:
    """What a model issue's `engine/commands/<name>.py` looks like, pointed at the fake backend."""

    @staticmethod
    def register(subparsers):
        parser = subparsers.add_parser("fake-edit")
        parser.add_argument("photo")
        parser.add_argument("--params", default="{}")
        add_runner_arguments(parser)
        parser.set_defaults(run=FakeEditCommand.run)

    @staticmethod
    def run(args):
        from engine.imageio import load_photo

        photo = load_photo(args.photo).rgb
        mask = np.zeros(photo.shape[:2], bool)
        mask[8:24, 16:40] = True
        fields = {"photo": photo, "mask": mask, "params": json.loads(args.params)}
        return run_request(fake_backend.NAME, fields, args)


@pytest.fixture
def cli(monkeypatch):
    original = commands.command_modules
    monkeypatch.setattr(commands, "command_modules", lambda: [*original(), FakeEditCommand])
    return run_command


@pytest.fixture
def photo_file(tmp_path):
    photo, _, _ = fake_backend.scene(size=48)
    photo = np.concatenate([photo, photo[:, :16]], axis=1)  # 64 x 48: not square
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    return path, photo


def test_the_runner_writes_k_full_size_candidates_and_their_metadata(cli, photo_file, tmp_path, capsys):
    path, photo = photo_file
    out = tmp_path / "out"
    assert cli(["fake-edit", str(path), "--samples", "3", "--seed", "5", "--device", "cpu", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["candidate_00.png", "candidate_01.png", "candidate_02.png", "candidates.json"]
    images = [np.asarray(Image.open(out / f"candidate_{i:02d}.png")) for i in range(3)]
    assert all(image.shape == photo.shape for image in images), "candidates are at the input's native size"
    outside = np.ones(photo.shape[:2], bool)
    outside[8:24, 16:40] = False
    assert all(np.array_equal(image[outside], photo[outside]) for image in images)
    assert not np.array_equal(images[0], images[1])
    meta = json.loads((out / "candidates.json").read_text())
    assert meta["backend"] == "fake" and meta["device"] == "cpu"
    assert [c["seed"] for c in meta["candidates"]] == [5, 6, 7]
    assert meta["candidates"][0]["region"] == [16, 8, 40, 24]
    assert meta["request"]["k"] == 3 and meta["timings"]["run_seconds"] >= 0
    captured = capsys.readouterr()
    assert "candidate_00.png" in captured.out and "100%" in captured.err


def test_bad_input_exits_2_with_a_message_naming_the_problem(cli, photo_file, tmp_path, capsys):
    path, _ = photo_file
    out = str(tmp_path / "out")
    assert cli(["fake-edit", str(path), "--device", "tpu", "--out", out]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert cli(["fake-edit", str(path), "--samples", "0", "--out", out]) == 2
    assert "--samples must be at least 1" in capsys.readouterr().err
    assert cli(["fake-edit", str(path), "--out", out, "--params", '{"fail": "input"}']) == 2
    assert "the label map has no editable class" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli(["fake-edit", str(path), "--out", str(blocker / "sub")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_backend_bug_exits_1_with_its_traceback(cli, photo_file, tmp_path, capsys):
    path, _ = photo_file
    assert cli(["fake-edit", str(path), "--out", str(tmp_path / "o"), "--params", '{"fail": "bug"}']) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "fake failed: RuntimeError: simulated bug" in err


def test_the_runner_refuses_an_unknown_backend(photo_file, tmp_path):
    args = argparse.Namespace(samples=1, seed=0, device="cpu", out=str(tmp_path / "o"))
    with pytest.raises(Exception, match="no engine backend named 'missing'"):
        run_request("missing", {"photo": photo_file[1]}, args)


def test_ctrl_c_cancels_cleanly_with_exit_130(photo_file, tmp_path):
    path, _ = photo_file
    marker, out = tmp_path / "holding", tmp_path / "out"
    params = json.dumps({"hold_at_row": 4, "rows_per_step": 2, "hold_marker": str(marker)})
    script = textwrap.dedent(f"""
        import sys
        from engine import commands
        from tests.test_runner import FakeEditCommand
        from app.cli import run_command
        original = commands.command_modules
        commands.command_modules = lambda: [*original(), FakeEditCommand]
        sys.exit(run_command(["fake-edit", {str(path)!r}, "--device", "cpu", "--out", {str(out)!r},
                              "--params", {params!r}]))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the job never started holding: {process.communicate()[1][-2000:]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "cancelled" in err
    assert not list(out.glob("candidate_*.png")) and not (out / "candidates.json").exists()


# ---- the benchmark harness (`make bench`) ------------------------------------------------------------------


def test_the_bench_harness_reports_a_failing_module_instead_of_hiding_it(tmp_path, monkeypatch, capsys):
    import types

    import tests.bench.__main__ as bench

    good = types.ModuleType("tests.bench.bench_good")
    good.run = lambda: [{"name": "speed", "value": 1.5, "unit": "s", "target": "< 2", "note": "fine"}]
    bad = types.ModuleType("tests.bench.bench_bad")
    bad.run = lambda: [{"name": "speed", "value": "fast"}]
    monkeypatch.setitem(sys.modules, "tests.bench.bench_good", good)
    monkeypatch.setitem(sys.modules, "tests.bench.bench_bad", bad)
    monkeypatch.setattr(bench, "modules", lambda selected: ["bench_bad", "bench_good"])
    monkeypatch.setattr(bench, "machine", lambda: {"cpu": "test"})
    out = tmp_path / "bench-results.json"
    assert bench.main(["--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "'value' must be" in printed and "speed" in printed
    report = json.loads(out.read_text())
    assert [m["status"] for m in report["modules"]] == ["failed", "ok"]
    assert report["results"] == [{"module": "bench_good", "name": "speed", "value": 1.5, "unit": "s",
                                  "target": "< 2", "note": "fine", "met": True}]
    assert report["machine"] == {"cpu": "test"}


def test_the_bench_harness_compares_each_figure_with_its_target_and_fails_on_a_miss(tmp_path, monkeypatch,
                                                                                      capsys):
    import types

    import tests.bench.__main__ as bench

    module = types.ModuleType("tests.bench.bench_mixed")
    module.run = lambda: [{"name": "fast", "value": 1.5, "unit": "s", "target": "< 2", "note": ""},
                          {"name": "memory", "value": 3696, "unit": "MiB", "target": "< 1536", "note": ""},
                          {"name": "speedup", "value": 12.0, "unit": "x", "target": ">= 10", "note": ""},
                          {"name": "unmeasured", "value": float("nan"), "unit": "s", "target": "< 60", "note": ""},
                          {"name": "info only", "value": 7, "unit": "s", "target": None, "note": ""}]
    monkeypatch.setitem(sys.modules, "tests.bench.bench_mixed", module)
    monkeypatch.setattr(bench, "modules", lambda selected: ["bench_mixed"])
    monkeypatch.setattr(bench, "machine", lambda: {"cpu": "test"})
    out = tmp_path / "bench-results.json"
    assert bench.main(["--out", str(out)]) == 1, "a miss fails make bench"
    captured = capsys.readouterr()
    assert "MISS mixed: memory = 3696 MiB (target < 1536)" in captured.err
    assert "MISS mixed: unmeasured = - s (target < 60)" in captured.err, "NaN is a miss, never a pass"
    assert "2 of 4 targets met" in captured.err
    assert [row["met"] for row in json.loads(out.read_text())["results"]] == [True, False, True, False, None]
    module.run = lambda: [{"name": "fast", "value": 1.5, "unit": "s", "target": "< 2", "note": ""}]
    assert bench.main(["--out", str(out)]) == 0


def test_a_benchmark_that_raises_is_a_failure_with_its_traceback(tmp_path, monkeypatch, capsys):
    import types

    import tests.bench.__main__ as bench

    module = types.ModuleType("tests.bench.bench_broken")

    def broken():
        raise FileNotFoundError("no demo-coltran model folder")

    module.run = broken
    monkeypatch.setitem(sys.modules, "tests.bench.bench_broken", module)
    monkeypatch.setattr(bench, "modules", lambda selected: ["bench_broken"])
    monkeypatch.setattr(bench, "machine", lambda: {"cpu": "test"})
    out = tmp_path / "bench-results.json"
    assert bench.main(["--out", str(out)]) == 1
    assert "Traceback" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["modules"][0]["status"] == "failed" and "FileNotFoundError" in report["modules"][0]["traceback"]
    assert report["results"] == []


def test_the_bench_machine_description_names_cpu_cores_and_ram():
    import tests.bench.__main__ as bench

    info = bench.machine()
    assert info["cores"] >= 1 and info["cpu"] and "torch" in info and "device" in info


# ---- one spelling per idea: --model is a model, --engine the backend ----------------------------------------


def test_colorize_takes_engine_and_model(photo_file, tmp_path, capsys):
    path, _ = photo_file
    out = tmp_path / "out"
    assert run_command(["colorize", str(path), "--engine", "fake", "--model", "lake-v1", "--samples", "1",
                        "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "candidates.json").read_text())
    assert meta["backend"] == "fake" and meta["request"]["model"] == "lake-v1"
    assert meta["request"]["mode"] == "colorize"
    assert "deprecated" not in capsys.readouterr().err


def test_colorize_old_spellings_still_work_with_a_deprecation_message(photo_file, tmp_path, capsys):
    path, _ = photo_file
    out = tmp_path / "out"
    assert run_command(["colorize", str(path), "--model", "fake", "--weights", "lake-v1", "--samples", "1",
                        "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "candidates.json").read_text())
    assert meta["backend"] == "fake" and meta["request"]["model"] == "lake-v1"
    err = capsys.readouterr().err
    assert "--model fake (the engine) is deprecated" in err and "use --engine fake" in err
    assert "--weights lake-v1 is deprecated" in err and "use --model lake-v1" in err
    assert run_command(["colorize", str(path), "--model", "x", "--weights", "y", "--out", str(out)]) == 2
    assert "both name the model" in capsys.readouterr().err


def test_the_engine_defaults_to_the_models_kind():
    from engine.commands._runner import choose_engine

    def args(**fields):
        return argparse.Namespace(**{"engine": None, "model": "", **fields})

    assert choose_engine(args(), "pixelcnn") == "pixelcnn"
    assert choose_engine(args(model="demo-coltran"), "pixelcnn") == "coltran"
    assert choose_engine(args(model=str(ROOT / "assets/models/demo-coltran")), "pixelcnn") == "coltran"
    assert choose_engine(args(model="demo-coltran", engine="pixelcnn"), "asset") == "pixelcnn"
    assert choose_engine(args(model="no-such-model"), "asset") == "asset", "the backend reports a missing model"


@pytest.mark.parametrize("command", ["edit", "colorize", "translate"])
def test_help_shows_one_spelling(command, capsys):
    with pytest.raises(SystemExit):
        run_command([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model NAME|DIR" in text and "--engine KIND" in text
    assert "--weights NAME|DIR deprecated: use --model" in text or "--weights" not in text
