"""The ColTran training task continues a model folder and trains only the stages it is told to."""

import pytest
import torch

from engine.errors import CheckpointError, InputError
from engine.model_store import read_safetensors
from engine.train import TrainConfig, train
from engine.train.tasks_coltran import ColTranTask

TINY = {"hidden": 8, "ff": 16, "heads": 2, "encoder_layers": 1, "outer_layers": 1, "inner_layers": 1,
        "up_hidden": 8, "up_ff": 16, "up_layers": 1, "spatial_crop": 16, "eval_images": 1}


def _config(out, **options):
    return TrainConfig(task="coltran", steps=2, batch_size=1, lr=1e-2, warmup_steps=0, save_every=0, eval_every=0,
                       log_every=1, out_dir=str(out), ema_decay=0.0, options={**TINY, **options})


def test_a_run_of_one_stage_continues_the_folder_and_leaves_the_other_stages_as_they_were(tmp_path):
    torch.manual_seed(0)
    start = ColTranTask(_config(tmp_path / "unused"))
    start_folder = start.export(start.build_model(), tmp_path / "start")
    train(_config(tmp_path / "run", init_from=str(start_folder), stages=["spatial_upsampler"]))
    trained = tmp_path / "run" / "demo-coltran"
    for stage, should_change in (("colorizer", False), ("color_upsampler", False), ("spatial_upsampler", True)):
        before = read_safetensors(start_folder / f"{stage}.safetensors")
        after = read_safetensors(trained / f"{stage}.safetensors")
        assert before.keys() == after.keys()
        changed = any(not torch.equal(before[k], after[k]) for k in before)
        assert changed == should_change, stage
    rows = (tmp_path / "run" / "train.csv").read_text().splitlines()
    assert rows[0].split(",")[-2:] == ["spatial_up_bits", "grad_norm"]  # only the trained stage's loss is logged


@pytest.mark.parametrize("stages", [["spatial"], [], "colorizer,upsampler"])
def test_an_unknown_stage_is_named(tmp_path, stages):
    with pytest.raises(InputError, match="options.stages must name one or more of colorizer"):
        ColTranTask(_config(tmp_path, stages=stages))


def test_a_folder_of_another_architecture_is_reported_key_by_key(tmp_path):
    torch.manual_seed(0)
    small = ColTranTask(_config(tmp_path / "unused"))
    folder = small.export(small.build_model(), tmp_path / "start")
    wider = ColTranTask(_config(tmp_path / "unused", hidden=16, init_from=str(folder)))
    with pytest.raises(CheckpointError, match="colorizer.safetensors does not fit"):
        wider.build_model()
