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


def test_the_card_describes_each_run_of_the_chain(tmp_path):
    import json

    from engine.train.tasks_coltran import _training_section

    first, second = tmp_path / "first", tmp_path / "second"
    for run, header, row, summary in (
            (first, "step,minutes,colorizer_bits,parallel_bits,color_up_bits,spatial_up_bits",
             "1796,58.3,0.61,2.31,3.41,4.39", {"step": 1796, "minutes": 58.3}),
            (second, "step,minutes,spatial_up_bits", "400,0.3,3.5",
             {"step": 400, "minutes": 0.3, "training_minutes": 14.2})):  # a resumed run: 0.3 min of 14.2
        run.mkdir()
        (run / "train.csv").write_text(f"{header}\n{row}\n")
        (run / "summary.json").write_text(json.dumps(summary))
    (first / "config.yaml").write_text("batch_size: 4\noptions: {}\n")
    (second / "config.yaml").write_text(
        "batch_size: 16\noptions: {init_from: runs/first/demo-coltran, stages: [spatial_upsampler]}\n")
    text, minutes = _training_section([(first, first / "config.yaml"), (second, second / "config.yaml")])
    one, two = text.splitlines()
    assert one.startswith("1. ") and "from scratch" in one and "1796 steps of batch 4, 58.3 minutes" in one
    assert "colorizer 0.61" in one and "spatial upsampler 4.39" in one
    assert two.startswith("2. ") and "continuing `runs/first/demo-coltran`" in two
    assert "stages trained: spatial_upsampler: 400 steps of batch 16, 14.2 minutes" in two
    assert "colorizer" not in two.split("Losses")[1] and "spatial upsampler 3.50" in two
    assert abs(minutes - 72.5) < 1e-9
