"""PixelCNN colorizer pipeline: hints, seeds, the "pixelcnn" backend in the runtime, `sgraffito colorize`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from engine.model_store import save_model_dir
from engine.pipelines.pixelcnn import colorize, load_model, rgb_to_lab
from engine.hints import Hint
from engine.jobs import JobState, Request, Runtime
from engine.models.pixelcnn import PixelCNNColorizer, PixelCNNConfig

TINY = PixelCNNConfig(channels=12, layers=3, kernel=3, cond_channels=6, embed_channels=6, bins=8, work_size=32)

@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = PixelCNNColorizer(TINY)
    return save_model_dir(tmp_path / "tiny-pixelcnn", {"model": model.state_dict()},
                          {"kind": "pixelcnn", "title": "tiny test model", **TINY.to_dict()})


def gray_photo(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) * 60 + 100).astype(np.uint8)


def test_colourings_keep_the_luminance_and_differ_by_seed(model_dir):
    model = load_model(str(model_dir))
    photo = gray_photo()
    a, b, a_again = colorize(model, photo, [1, 2]) + colorize(model, photo, [1])
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, a_again), "a candidate must be reproducible from its seed alone"
    assert not np.array_equal(a, b)
    luma = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(luma - photo).max() <= 1.5
    assert np.abs(a.astype(int) - photo[:, :, None]).max() > 10, "the random model should add colour"


def test_hints_are_honoured(model_dir):
    model = load_model(str(model_dir))
    hint_rgb = np.array([200, 90, 60], np.uint8)
    luma = float(hint_rgb @ np.array([0.299, 0.587, 0.114]))
    photo = np.full((64, 64), round(luma), np.uint8)
    hint = Hint(x=20, y=40, radius=10, rgb=tuple(int(c) for c in hint_rgb))
    for seed in range(3):
        out = colorize(model, photo, [seed], hints=[hint])[0]
        assert np.abs(out[40, 20].astype(int) - hint_rgb).max() <= 12
    free = colorize(model, photo, [0])[0]
    assert np.abs(free[40, 20].astype(int) - hint_rgb).max() > 12, "without the hint the colour is the model's"


def test_backend_runs_in_the_runtime_and_cancels(model_dir):
    runtime = Runtime(device="cpu")
    try:
        job = runtime.submit(Request(backend="pixelcnn", photo=gray_photo(), model=str(model_dir), k=2, seed=5,
                                     params={"temperature": 0.7}))
        assert job.wait(60) and job.state is JobState.DONE, job.error
        assert [c.seed for c in job.candidates] == [5, 6]
        assert job.candidates[0].image.shape == (48, 64, 3)

        stop = []
        runtime.add_listener(lambda e: "row" in e.stage and not stop and stop.append(runtime.cancel(e.job_id)))
        job = runtime.submit(Request(backend="pixelcnn", photo=gray_photo(), model=str(model_dir), k=2))
        assert job.wait(60) and job.state is JobState.CANCELLED
    finally:
        runtime.shutdown()


def test_cli_writes_the_samples(model_dir, tmp_path, capsys):
    photo = tmp_path / "old.png"
    Image.fromarray(gray_photo()).save(photo)
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps([{"x": 10, "y": 10, "radius": 6, "rgb": "#3060c0"}]))
    out = tmp_path / "out"
    code = main(["colorize", str(photo), "--weights", str(model_dir), "--samples", "2", "--hints", str(hints),
                 "--out", str(out)])
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["candidate_00.png", "candidate_01.png"]
    record = json.loads((out / "candidates.json").read_text())
    assert record["backend"] == "pixelcnn" and record["request"]["params"]["hints"][0]["rgb"] == "#3060c0"
    _, a, b = rgb_to_lab(np.array(Image.open(files[0]))[10:11, 10:11])[0, 0]
    assert b < -20 and abs(a) < 30, "the blue hint shows at its position"

    hints.write_text(json.dumps([{"x": 500, "y": 10, "radius": 6, "rgb": "#3060c0"}]))
    assert main(["colorize", str(photo), "--weights", str(model_dir), "--hints", str(hints), "--out", str(out)]) == 2
    assert "outside the 64x48 photo" in capsys.readouterr().err
    assert main(["colorize", str(photo), "--model", "nosuch", "--out", str(out)]) == 2


def test_shipped_demo_model_loads_and_colours():
    model = load_model()  # assets/models/demo-pixelcnn-colorizer, strict keys and shapes
    out = colorize(model, gray_photo(), [0])[0]
    assert out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - gray_photo()[:, :, None]).max() > 3, "the demo model adds colour"
