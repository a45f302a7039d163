"""`sgraffito` starting the GUI, as the CI smoke test and a desktop launcher run it (offscreen here)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_app(*args, data):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "SGRAFFITO_DATA": str(data)}
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_demo_opens_a_sample_and_writes_the_screenshot(tmp_path, isolated_user_data):
    shot = tmp_path / "shots" / "main.png"
    result = run_app("--demo", "--screenshot", str(shot), "--quit-after", "300", data=isolated_user_data)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        pixels = np.asarray(image.convert("RGB"))
    # the sample photo fills the canvas: far more than the flat background and widget greys
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000


def test_photo_with_labels_from_the_command_line(tmp_path, isolated_user_data):
    photo, labels = tmp_path / "p.png", tmp_path / "l.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(photo)
    Image.fromarray(np.full((40, 60), 123, np.uint8)).save(labels)
    shot = tmp_path / "s.png"
    result = run_app(str(photo), "--labels", str(labels), "--screenshot", str(shot), "--quit-after", "300",
                     data=isolated_user_data)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file()


def test_unknown_label_set_is_an_error_on_stderr(isolated_user_data):
    result = run_app("--label-set", "nope", data=isolated_user_data)
    assert result.returncode == 2
    assert "nope" in result.stderr
