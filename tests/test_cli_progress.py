"""CLI progress (engine/commands/_progress.py) and a fast `sgraffito info` (issue 17)."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from engine.commands._progress import MIN_STEPS, PLAIN_INTERVAL, StageProgress, split_stage

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_stage_names_and_their_counters_are_split():
    assert split_stage("ColTran: colouring 3 candidates, row 12/64") == ("ColTran: colouring 3 candidates", "row",
                                                                         12, 64)
    assert split_stage("sampling 4 colourings: row 5/32") == ("sampling 4 colourings", "row", 5, 32)
    assert split_stage("loading ColTran") == ("loading ColTran", "", None, None)


def test_no_eta_during_loading_or_the_first_steps_then_one_from_the_counted_stage():
    clock, out = Clock(), io.StringIO()
    progress = StageProgress("coltran", out, interactive=False, now=clock)
    progress.update(0.0, "loading ColTran")
    clock.t += 21  # a slow load: its own stage, not "0 %" of the job, and it never enters the ETA
    assert progress.eta() is None and "[1] loading ColTran  0:21" in progress.line()
    for row in range(1, 65):
        clock.t += 3
        progress.update(0.02 + 0.9 * row / 64, f"ColTran: colouring 3 candidates, row {row}/64")
        if row <= MIN_STEPS:
            assert progress.eta() is None, f"no ETA after {row} step(s)"
        elif row == 10:
            # 3 s a row from here: 54 rows left of the counted stage, and the 8 % after it at the same rate
            assert abs(progress.eta() - (1 - progress.fraction) * 3 * 64 / 0.9) < 1
            assert "row 10/64" in progress.line() and "left" in progress.line()


def test_plain_lines_off_a_terminal_one_per_stage_change_or_every_few_seconds():
    clock, out = Clock(), io.StringIO()
    progress = StageProgress("edit", out, interactive=False, now=clock)
    progress.update(0.0, "loading")
    for step in range(1, 101):  # 100 updates in 10 s of one stage
        clock.t += 0.1
        progress.update(step / 100, f"sampling, token {step}/100")
    progress.update(1.0, "decoding")
    progress.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 4 <= len(lines) <= 3 + 10 / PLAIN_INTERVAL + 1, lines
    assert lines[0].startswith("edit: [1] loading") and "[2] sampling  token 1/100" in lines[1]
    assert "[3] decoding" in lines[-1]


def test_a_terminal_gets_one_line_redrawn_and_a_line_per_finished_stage():
    clock, out = Clock(), io.StringIO()
    progress = StageProgress("edit", out, interactive=True, now=clock)
    progress.update(0.0, "loading")
    for step in range(1, 21):
        clock.t += 0.2
        progress.update(step / 20, f"sampling, token {step}/20")
    progress.close()
    text = out.getvalue()
    assert text.count("\n") == 2, "one kept line per stage"
    assert text.count("\r") > 10


def test_info_describes_a_24_mp_jpeg_in_under_a_second_without_torch(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (250, 375, 3), np.uint8)
    big = np.asarray(Image.fromarray(small).resize((6000, 4000), Image.BILINEAR))
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    # CPU seconds of the whole process (imports included), not wall time: the suite shares two cores
    probe = ("import sys, time; sys.argv = ['sgraffito', 'info', sys.argv[1]]; from app.cli import main; "
             "code = main(sys.argv[1:]); "
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', time.process_time()); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "6000x4000" in done.stdout and "NO-TORCH" in done.stdout, done.stdout
    seconds = float(done.stdout.split()[-1])
    assert seconds < 1.0, f"sgraffito info took {seconds:.2f} s of CPU"
