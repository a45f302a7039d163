"""Taming in one step and the demo's layout: the catalogue's two-file S-FLCKR entry downloads and imports, a demo
folder that names its stages' folder loads key for key, and the demo training task trains and exports it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from app.cli import main
from engine import catalogue, downloads
from engine.errors import CheckpointError
from engine.model_store import find_model, read_safetensors, user_models_dir
from engine.pipelines.taming import load_taming, translate
from tests.model_server import entry, write_catalogue
from tests.test_models_get import server  # noqa: F401  (the local download server fixture)
from tests.test_taming import official_folder


def test_models_get_downloads_config_and_checkpoint_and_imports_strictly(tmp_path, monkeypatch, server):
    folder, model = official_folder(tmp_path)
    config = (folder / "configs" / "2020-11-09T13-31-51-project.yaml").read_bytes()
    ckpt = (folder / "checkpoints" / "last.ckpt").read_bytes()
    yaml_entry = entry("tiny-sflckr", "taming", server.add("/sflckr/project.yaml", config),
                       config, file_name="2020-11-09T13-31-51-project.yaml")
    ckpt_entry = entry("tiny-sflckr", "taming", server.add("/sflckr/last.ckpt", ckpt), ckpt, file_name="last.ckpt",
                       options={"config": {"file": "2020-11-09T13-31-51-project.yaml"}})
    ckpt_entry["files"] = yaml_entry["files"] + ckpt_entry["files"]
    monkeypatch.setenv("SGRAFFITO_CATALOGUE", str(write_catalogue(tmp_path / "catalogue.json", [ckpt_entry])))

    result = downloads.install(catalogue.entry("tiny-sflckr"))

    assert result.path == user_models_dir() / "tiny-sflckr"
    loaded, _ = load_taming(result.path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_import_takes_the_checkpoint_with_config_option_and_refuses_neither(tmp_path, capsys):
    folder, _ = official_folder(tmp_path)
    ckpt = folder / "checkpoints" / "last.ckpt"
    assert main(["import", "taming", str(ckpt), "--config",
                 str(folder / "configs" / "2020-11-09T13-31-51-project.yaml"), "--name", "t1"]) == 0
    assert find_model("t1", "taming")
    assert main(["import", "taming", str(ckpt), "--name", "t2"]) == 2
    assert "give the project config and the checkpoint" in capsys.readouterr().err


def _train_tiny(tmp_path, steps=2):
    config = {"task": "taming-landscape", "steps": steps, "batch_size": 2, "lr": 1e-3, "precision": "fp32",
              "ema_decay": 0, "eval_every": 0, "save_every": 0, "log_every": 1,
              "options": {"n_layer": 1, "n_head": 2, "n_embd": 16, "scenes": 6, "eval_sequences": 2,
                          "scene_size": 256, "token_cache": str(tmp_path / "tokens.pt"),
                          "export_dir": str(tmp_path / "demo-taming")}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "taming-landscape", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    return tmp_path / "demo-taming"


@pytest.mark.xdist_group("taming-train")
def test_demo_task_exports_a_transformer_that_borrows_the_demo_vqgans(tmp_path):
    folder = _train_tiny(tmp_path)

    stored = read_safetensors(folder / "model.safetensors")
    assert stored and all(k.startswith("transformer.") for k in stored)  # the VQGANs are not copied
    assert stored["transformer.blocks.0.attn.mask"].dtype == torch.uint8
    config = json.loads((folder / "config.json").read_text())
    assert config["stages"]["folder"] == "demo-asset-landscape"
    assert {"eval_ce", "eval_top1", "steps"} <= set(config["training"])

    model, _ = load_taming(folder)
    asset = read_safetensors(find_model("demo-asset-landscape").path / "image_vqgan.safetensors")
    key = "decoder.conv_out.weight"
    assert torch.equal(model.first_stage_model.state_dict()[key], asset[key])
    from engine.data.landscapes import ids

    labels = np.full((256, 320), ids().sky_other, np.uint8)
    labels[128:] = ids().sea
    images, info = translate(model, labels, [1, 2])
    assert [im.shape for im in images] == [(256, 320, 3)] * 2 and info["tokens"] == [16, 20]
    assert not np.array_equal(images[0], images[1])  # two seeds, two candidates


@pytest.mark.xdist_group("taming-train")
def test_a_demo_folder_whose_stage_weights_do_not_fit_is_named(tmp_path):
    folder = _train_tiny(tmp_path, steps=1)
    config = json.loads((folder / "config.json").read_text())
    config["stages"]["first_stage_model"] = "seg_vqgan"  # 182 input channels where the image stage has 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="first_stage_model"):
        load_taming(folder)
