"""Importer correctness (issue 22, Build 4): ASSET head counts from the bundle's yaml, the seg VQGAN's `colorize`
buffer, ColTran's EMA shadows and renamed Keras scopes, omegaconf DictConfig hyper-parameters."""

import collections
import io
import os
import pickle
import sys
import types
import zipfile

import pytest
import torch

from app.cli import main
from engine.errors import CheckpointError
from engine.importers.state_dicts import read_checkpoint
from engine.model_store import list_models, user_models_dir
from tests.model_server import asset_bundle_zip, asset_yaml


def unzip_bundle(tmp_path, **options):
    zipfile.ZipFile(io.BytesIO(asset_bundle_zip(**options))).extractall(tmp_path)
    return tmp_path / "landscape"


def import_asset(folder, *extra):
    return main(["import", "asset", str(folder / "landscape_1024.ckpt"), "--guiding",
                 str(folder / "landscape_guiding.ckpt"), "--name", "a", *extra])


# ---- ASSET: heads from the official config ----------------------------------------------------------------


def test_asset_heads_come_from_the_yaml_beside_the_checkpoint(tmp_path):
    import json

    folder = unzip_bundle(tmp_path, heads=4)  # d_model 32: the old d_model // 64 rule would give 1 head
    assert import_asset(folder) == 0
    config = json.loads((user_models_dir() / "a" / "config.json").read_text())
    assert config["sga"]["encoder_attention_heads"] == 4 and config["guiding"]["decoder_attention_heads"] == 4


def test_asset_config_that_contradicts_the_checkpoint_is_refused(tmp_path, capsys):
    folder = unzip_bundle(tmp_path, heads=2)
    (folder / "landscape_1024.yaml").write_text(asset_yaml(heads=2).replace("encoder_layers: 1", "encoder_layers: 7"))
    assert import_asset(folder) == 2
    err = capsys.readouterr().err
    assert "does not match its config" in err and "encoder_layers: config 7, checkpoint 1" in err
    (folder / "landscape_1024.yaml").write_text(asset_yaml(heads=2, vocab=1024))
    assert import_asset(folder) == 2
    assert "image VQGAN codes config 1024, checkpoint 16" in capsys.readouterr().err
    (folder / "landscape_1024.yaml").write_text(asset_yaml(heads=3))  # 3 does not divide d_model 32
    assert import_asset(folder) == 2
    assert "encoder_attention_heads: config 3 does not divide d_model 32" in capsys.readouterr().err
    assert not [m for m in list_models() if m.source == "imported"]


def test_asset_without_a_config_needs_heads_or_config(tmp_path, capsys):
    folder = unzip_bundle(tmp_path, heads=2)
    moved = tmp_path / "elsewhere.yaml"
    (folder / "landscape_1024.yaml").rename(moved)
    assert import_asset(folder) == 2
    assert "--config" in capsys.readouterr().err
    assert import_asset(folder, "--config", str(moved)) == 0


def test_asset_yaml_without_head_counts_means_the_official_defaults(tmp_path, capsys):
    """The official yamls leave d_model and heads to ASSET.__init__ (1024 and 16): a tiny model then mismatches."""
    folder = unzip_bundle(tmp_path, heads=2)
    text = asset_yaml(heads=2)
    text = "\n".join(line for line in text.splitlines() if "attention_heads" not in line and "d_model" not in line)
    (folder / "landscape_1024.yaml").write_text(text)
    assert import_asset(folder) == 2
    assert "d_model: config 1024, checkpoint 32" in capsys.readouterr().err


# ---- the segmentation VQGAN's colorize buffer ----------------------------------------------------------------


def test_asset_checkpoint_without_the_seg_colorize_buffer_is_refused(tmp_path, capsys):
    folder = unzip_bundle(tmp_path, heads=2)
    checkpoint = torch.load(folder / "landscape_1024.ckpt", weights_only=True)
    del checkpoint["state_dict"]["cond_stage_model.colorize"]
    torch.save(checkpoint, folder / "landscape_1024.ckpt")
    assert import_asset(folder) == 2
    err = capsys.readouterr().err
    assert "cond_stage_model" in err and "colorize [3, 182, 1, 1]" in err and "missing" in err
    assert not (user_models_dir() / "a").exists()


# ---- ColTran: EMA shadows and renamed scopes -----------------------------------------------------------------


def colorizer_bundle(tmp_path, drop_shadow=None, rename_scope=None):
    from engine.importers.tfbundle import read_bundle
    from engine.models.coltran import ColTranCore
    from tests.test_coltran import TINY, official_tensors, randomized
    from tests.tf_bundle_writer import write_bundle

    model = randomized(ColTranCore(TINY), seed=4)
    tensors = official_tensors("colorizer", model, TINY)
    if drop_shadow:
        [key] = [k for k in tensors if drop_shadow in k and "ExponentialMovingAverage" in k and "OPTIMIZER" not in k]
        del tensors[key]
    if rename_scope:
        tensors = {k.replace("col_tran_core.S", f"{rename_scope}.S"): v for k, v in tensors.items()}
    write_bundle(str(tmp_path / "model-5"), tensors)
    return model, read_bundle(tmp_path / "model-5")


def test_coltran_variable_without_its_ema_shadow_is_refused_unless_raw_weights_are_asked_for(tmp_path):
    from engine.importers.coltran_tf import convert_official_stage

    model, tensors = colorizer_bundle(tmp_path, drop_shadow="affine_r_0.Skernel")
    with pytest.raises(CheckpointError) as error:
        convert_official_stage("colorizer", tensors, "model-5")
    message = str(error.value)
    assert "col_tran_core/outer_decoder/affine_r_0/kernel" in message and "without their EMA shadow" in message
    assert "--raw-weights" in message
    # raw weights for every variable, when asked (the test's raw values are junk 123.0; normalize ones are real)
    _, state = convert_official_stage("colorizer", tensors, "model-5", raw_weights=True)
    assert torch.all(state["outer_decoder.affine_r_0.weight"] == 123.0)
    assert torch.all(state["pixel_embed_layer.weight"] == 123.0)


def test_coltran_renamed_keras_scope_is_named(tmp_path):
    from engine.importers.coltran_tf import convert_official_stage, find_stage_checkpoints

    _, tensors = colorizer_bundle(tmp_path, rename_scope="col_tran_core_1")
    with pytest.raises(CheckpointError, match="'col_tran_core_1' instead of 'col_tran_core'"):
        convert_official_stage("colorizer", tensors, "model-5")
    with pytest.raises(CheckpointError, match="col_tran_core_1.*Keras numbered"):
        find_stage_checkpoints(tmp_path)


# ---- omegaconf DictConfig hyper-parameters -------------------------------------------------------------------


def _fake_omegaconf():
    """omegaconf's DictConfig pickles its metadata with a `defaultdict(dict)` resolver cache; these stand-ins
    pickle the same opcodes under omegaconf's module names (omegaconf itself is not a dependency)."""
    from tests.test_checkpoints import fake_module

    class ContainerMetadata:
        def __init__(self):
            self.ref_type, self.object_type, self.optional, self.key = object, dict, True, None
            self.flags, self.flags_root = {}, False
            self.resolver_cache = collections.defaultdict(dict)

    class DictConfig:
        def __init__(self, content):
            self._metadata, self._parent, self._content = ContainerMetadata(), None, content

    return DictConfig, {"omegaconf.base": fake_module("omegaconf.base", ContainerMetadata=ContainerMetadata),
                        "omegaconf.dictconfig": fake_module("omegaconf.dictconfig", DictConfig=DictConfig)}


def _save_with_modules(obj, path, modules, monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
        for name, module in modules.items():
            m.setitem(sys.modules, name, module)
        torch.save(obj, path)


def test_lightning_checkpoint_with_dictconfig_hyper_parameters_loads_as_inert_data(tmp_path, monkeypatch):
    DictConfig, modules = _fake_omegaconf()
    hparams = DictConfig({"ddconfig": DictConfig({"ch": 128}), "n_embed": 1024})
    path = tmp_path / "last.ckpt"
    _save_with_modules({"state_dict": {"w": torch.ones(3)}, "hyper_parameters": hparams}, path, modules, monkeypatch)
    assert b"defaultdict" in zipfile.ZipFile(path).read("last/data.pkl")
    assert "omegaconf" not in sys.modules
    sd = read_checkpoint(path)
    assert torch.equal(sd["w"], torch.ones(3)) and "omegaconf" not in sys.modules


def test_real_omegaconf_dictconfig_loads_without_omegaconf_being_imported(tmp_path):
    """With omegaconf installed (not a dependency): a checkpoint pickled with the real DictConfig."""
    import subprocess

    script = ("import torch, omegaconf; torch.save({'state_dict': {'w': torch.ones(2)}, 'hyper_parameters': "
              "omegaconf.OmegaConf.create({'ddconfig': {'ch': 128, 'ch_mult': [1, 2]}, 'lr': 4.5e-6})}, "
              f"{str(tmp_path / 'real.ckpt')!r})")
    made = subprocess.run([sys.executable, "-c", script], capture_output=True)
    if made.returncode != 0:
        pytest.skip("omegaconf is not installed")
    assert torch.equal(read_checkpoint(tmp_path / "real.ckpt")["w"], torch.ones(2))


def test_a_defaultdict_factory_is_never_called(tmp_path):
    class Evil:
        def __reduce__(self):
            return collections.defaultdict, (os.system,)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"state_dict": {}, "x": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="no tensors"):  # loaded as inert data; nothing ran
        read_checkpoint(path)


def test_vqgan_stage_of_a_transformer_checkpoint_imports_with_stage(tmp_path, capsys):
    """taming's S-FLCKR last.ckpt holds first_stage_model, cond_stage_model and the transformer (catalogue entry
    vqgan-sflckr imports its first stage)."""
    from tests.model_server import tiny_vqgan_state_dict

    image = tiny_vqgan_state_dict(seed=3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**{f"first_stage_model.{k}": v for k, v in image.items()},
                               **{f"cond_stage_model.{k}": v for k, v in tiny_vqgan_state_dict(182, 182).items()},
                               "transformer.tok_emb.weight": torch.zeros(16, 8)}}, path)
    assert main(["import", "vqgan", str(path), "--name", "s"]) == 2
    assert "--stage first_stage_model" in capsys.readouterr().err
    assert main(["import", "vqgan", str(path), "--name", "s", "--stage", "first_stage_model"]) == 0
    weights = read_checkpoint(user_models_dir() / "s" / "vqgan.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in image.items())
