"""The shared training loop on a tiny model: logs, checkpoints, resume, time budget, CLI and torchrun."""

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tests.train_tiny_task  # noqa: F401  (registers "tiny-test")
from app.cli import main
from engine.errors import InputError
from engine.train import TrainConfig, available_tasks, train

ROOT = Path(__file__).resolve().parent.parent


def _config(out, **changes):
    values = dict(task="tiny-test", steps=4, batch_size=2, lr=1e-2, save_every=2, eval_every=2, log_every=1,
                  out_dir=str(out), ema_decay=0.9)  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_logs_checkpoints_exports_and_resumes(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    first = train(_config(out, grad_accum=2, precision="bf16"))
    assert first.step == 4 and not first.stopped_by_budget
    rows = _rows(out / "train.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(float(r["loss"]) > 0 for r in rows)
    assert [int(r["step"]) for r in _rows(out / "eval.csv")] == [2, 4]
    saved = load_file(out / "checkpoint/model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in first.model.state_dict().items())
    ema = load_file(out / "checkpoint/ema.safetensors")
    assert any(not torch.equal(ema[k], v) for k, v in first.model.state_dict().items())  # EMA lags behind
    assert (out / "tiny.safetensors").is_file() and (out / "summary.json").is_file()
    state = torch.load(out / "checkpoint/state.pt", weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and 0 < state["minutes"] < 5

    with pytest.raises(InputError, match="already holds a checkpoint"):
        train(_config(out, steps=6))
    state["minutes"] = 100.0  # as if the first run had taken 100 minutes: the card of a resumed run counts them
    torch.save(state, out / "checkpoint/state.pt")
    with open(out / "train.csv", "a") as f:  # a step the first run logged after its checkpoint, then crashed
        f.write("5," + ",".join(["9"] * (len(rows[0]) - 1)) + "\n")
    resumed = train(_config(out, steps=6), resume=True)
    assert resumed.step == 6
    assert 100 < torch.load(out / "checkpoint/state.pt", weights_only=True)["minutes"] < 105
    assert 100 < json.loads((out / "summary.json").read_text())["training_minutes"] < 105
    assert [int(r["step"]) for r in _rows(out / "train.csv")] == [1, 2, 3, 4, 5, 6]  # the crashed run's 5 is gone


def test_time_budget_stops_and_still_saves(tmp_path):
    out = tmp_path / "budget"
    result = train(_config(out, steps=10_000, max_minutes=1e-9))
    assert result.stopped_by_budget and result.step < 10_000
    assert torch.load(out / "checkpoint/state.pt", weights_only=True)["step"] == result.step


def test_config_from_yaml_and_cli(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text("steps: 2\nbatch_size: 2\nlog_every: 1\nema_decay: 0\noptions:\n  length: 8\n")
    config = TrainConfig.from_yaml(path, task="tiny-test")
    assert config.steps == 2 and config.options == {"length": 8} and config.task == "tiny-test"
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    with pytest.raises(InputError, match="unknown training settings stepz"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    assert "tiny-test" in available_tasks()
    code = main(["train", "tiny-test", "--config", str(path), "--out", str(tmp_path / "cli"), "--set", "lr=0.02",
                 "--set", "options.length=4"])  # fmt: skip
    assert code == 0 and "2 steps" in capsys.readouterr().out
    assert (tmp_path / "cli/checkpoint/state.pt").is_file()
    assert main(["train", "no-such-task"]) == 2


# A rank that has finished (weights saved, process group destroyed) may still abort in the interpreter's teardown
# with this libstdc++ message: seen once in CI (torch 2.13, gloo, a loaded 2-core machine), never in 48 launches
# here. It is a teardown fault, not a training one: the test then runs once more in a fresh folder and warns with
# the aborted launch's output.
TEARDOWN_ABORT = "terminate called without an active exception"


class _TeardownAbort(Exception):
    pass


@pytest.mark.slow  # two torchrun launches of two processes each: ~15 s on an idle 2-core machine
def test_torchrun_two_ranks_hold_identical_weights_and_resume(tmp_path):
    try:
        _two_ranks_then_resume(tmp_path / "ddp")
    except _TeardownAbort as abort:
        warnings.warn(f"a torchrun rank aborted in teardown; retrying once:\n{abort}")
        _two_ranks_then_resume(tmp_path / "ddp-retry", retry=False)


def _two_ranks_then_resume(out: Path, retry: bool = True):
    torchrun = Path(sys.executable).parent / "torchrun"
    # faulthandler prints every thread's Python stack should a rank abort, to find where
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}

    def launch(steps, *extra):
        for r in (0, 1):
            (out / f"hash-rank{r}.txt").unlink(missing_ok=True)
        command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tests.train_tiny_task",
                   str(out), str(steps), *extra]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 and retry and TEARDOWN_ABORT in done.stderr:
            raise _TeardownAbort(done.stderr[-3000:])
        assert done.returncode == 0, done.stderr[-3000:]
        hashes = [(out / f"hash-rank{r}.txt").read_text().split() for r in (0, 1)]
        return done, hashes

    _, hashes = launch(4)
    assert hashes[0] == hashes[1] and hashes[0][0] == "4"
    done, resumed = launch(6, "--resume")
    assert "resuming tiny-test from step 4" in done.stdout + done.stderr
    assert resumed[0] == resumed[1] and resumed[0][0] == "6" and resumed[0][1] != hashes[0][1]
    assert [int(r["step"]) for r in _rows(out / "train.csv")] == [1, 2, 3, 4, 5, 6]
