import enum
import json
import os
import pickle
import stat
import sys
import types
from collections import OrderedDict

import pytest
import torch
from torch import nn

from engine.importers.state_dicts import load_state_dict_strict, read_checkpoint, split_by_prefix, state_dict_report
from engine.model_store import find_model, list_models, load_model_dir, save_model_dir
from engine.errors import CheckpointError, InputError


def fake_module(name, **classes):
    """Classes pickled under a third-party module name (omegaconf, pytorch_lightning) that is not installed."""
    module = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__, cls.__name__ = name, cls_name, cls_name
        setattr(module, cls_name, cls)
    return module


def lightning_checkpoint(state_dict):
    """A checkpoint shaped like a PyTorch-Lightning 1.4 .ckpt, with omegaconf/Lightning objects pickled inside."""

    class DictConfig:
        def __init__(self, content):
            self._content = content
            self._metadata = {"ref_type": typing_any, "object_type": dict}

        def __getstate__(self):
            return {"_content": self._content, "_metadata": self._metadata, "_parent": None}

    class ModelCheckpoint:
        pass

    class TrainerFn(enum.Enum):
        FITTING = "fit"

    class AttributeDict(dict):
        pass

    import typing
    typing_any = typing.Any
    modules = {
        "omegaconf.dictconfig": fake_module("omegaconf.dictconfig", DictConfig=DictConfig),
        "pytorch_lightning.callbacks.model_checkpoint": fake_module(
            "pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint),
        "pytorch_lightning.trainer.states": fake_module("pytorch_lightning.trainer.states", TrainerFn=TrainerFn),
        "pytorch_lightning.utilities.parsing": fake_module(
            "pytorch_lightning.utilities.parsing", AttributeDict=AttributeDict),
    }
    hparams = AttributeDict(ddconfig=DictConfig({"ch": 128, "ch_mult": [1, 1, 2, 2, 4]}), n_embed=1024)
    checkpoint = {
        "epoch": 12,
        "global_step": 34000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state_dict,
        "callbacks": {ModelCheckpoint: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(5)}}, "param_groups": [{"lr": 4.5e-6}]}],
        "lr_schedulers": [],
        "hyper_parameters": hparams,
        "loops": {"fn": TrainerFn.FITTING},
    }
    return checkpoint, modules


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(4, 8)
        self.register_buffer("colorize", torch.randn(3, 5, 1, 1))


def test_lightning_checkpoint_loads_without_lightning_or_omegaconf(tmp_path, monkeypatch):
    model = Tiny()
    checkpoint, modules = lightning_checkpoint(model.state_dict())
    path = tmp_path / "last.ckpt"
    with monkeypatch.context() as m:
        for name, module in modules.items():
            parts = name.split(".")
            for i in range(1, len(parts)):
                m.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
            m.setitem(sys.modules, name, module)
        torch.save(checkpoint, path)
    assert not any(name.split(".")[0] in sys.modules for name in modules)

    state_dict = read_checkpoint(path)
    assert set(state_dict) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state_dict[key], value)
    assert not any(name.split(".")[0] in sys.modules for name in modules), "the loader must not import unknown classes"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_tensors_views_and_dtypes_survive(tmp_path, legacy):
    base = torch.randn(6, 4)
    sd = OrderedDict(w=base, row=base[2], t=base.t(), h=torch.randn(3).half(), b=torch.tensor([True, False]),
                     i=torch.arange(7))
    path = tmp_path / "model.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    loaded = read_checkpoint(path)
    for key, value in sd.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running(tmp_path, legacy):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": Evil()}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert not marker.exists()
    assert f"{os.system.__module__}.system" in str(error.value) and "evil.ckpt" in str(error.value)


def test_getattr_only_reaches_placeholders(tmp_path):
    class EnumMember:  # how Python >= 3.12 pickles an enum member of a Lightning class
        def __reduce__(self):
            return getattr, (Stage, "FIT")

    class Stage:
        pass

    class Evil:  # reaching a real object's attributes would be a way out of the allow-list
        def __reduce__(self):
            return getattr, (OrderedDict, "fromkeys")

    module = fake_module("pytorch_lightning.trainer.states", Stage=Stage)
    sys.modules["pytorch_lightning"] = types.ModuleType("pytorch_lightning")
    sys.modules["pytorch_lightning.trainer"] = types.ModuleType("pytorch_lightning.trainer")
    sys.modules["pytorch_lightning.trainer.states"] = module
    try:
        good = pickle.dumps({"state_dict": {}, "stage": EnumMember()})
    finally:
        for name in ("pytorch_lightning", "pytorch_lightning.trainer", "pytorch_lightning.trainer.states"):
            del sys.modules[name]
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pt")
    (tmp_path / "enum.pkl").write_bytes(good)
    with pytest.raises(CheckpointError, match="no tensors"):  # parsed fine; this pickle simply holds no tensors
        read_checkpoint(tmp_path / "enum.pkl")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(CheckpointError, match="getattr"):
        read_checkpoint(tmp_path / "evil.pkl")


def test_plain_pickle_calling_eval_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w')",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="builtins.eval"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path, legacy):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "photo.ckpt"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is a jpeg")
    with pytest.raises(CheckpointError, match=r"photo.ckpt: not a PyTorch checkpoint \(neither a zip"):
        read_checkpoint(path)
    noise = tmp_path / "noise.pth"  # bytes that are no format used to fail inside the unpickler ("KeyError: 7")
    noise.write_bytes(bytes(range(256)) * 12)
    with pytest.raises(CheckpointError, match="noise.pth: not a PyTorch checkpoint"):
        read_checkpoint(noise)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_strict_load_reports_renames_missing_unexpected_and_shapes():
    model = Tiny()
    sd = dict(model.state_dict())
    sd["conv_inn.weight"] = sd.pop("conv_in.weight")      # a rename: same shape, similar name
    sd["norm.bias"] = torch.zeros(9)                       # wrong shape
    del sd["colorize"]                                     # missing
    sd["loss.discriminator.weight"] = torch.zeros(1)       # unexpected
    with pytest.raises(CheckpointError) as error:
        load_state_dict_strict(model, sd, "my.ckpt")
    report = str(error.value)
    assert "my.ckpt" in report and "Tiny" in report
    assert "conv_in.weight <- conv_inn.weight [8, 3, 3, 3]" in report
    assert "colorize [3, 5, 1, 1]" in report
    assert "loss.discriminator.weight" in report
    assert "norm.bias: [9] vs [8]" in report
    assert state_dict_report(model.state_dict(), model.state_dict()) is None


def test_strict_load_converts_dtype():
    model, other = Tiny(), Tiny()
    load_state_dict_strict(model, {k: v.half() for k, v in other.state_dict().items()}, "half.safetensors")
    assert torch.allclose(model.conv_in.weight, other.conv_in.weight, atol=1e-3)


def test_split_by_prefix():
    sd = {"first_stage_model.a": 1, "cond_stage_model.b": 2, "transformer.c": 3, "loss.d": 4}
    parts = split_by_prefix(sd, ["first_stage_model", "cond_stage_model.", "transformer"])
    assert parts == {"first_stage_model": {"a": 1}, "cond_stage_model": {"b": 2}, "transformer": {"c": 3},
                     "": {"loss.d": 4}}


def test_model_dirs_roundtrip_and_listing(tmp_path, monkeypatch, isolated_user_data):
    assets = tmp_path / "assets"
    monkeypatch.setenv("SGRAFFITO_ASSETS", str(assets))
    shared = torch.randn(4, 4)
    demo = save_model_dir(assets / "models" / "demo-x", {"image_vqgan": {"w": shared, "alias": shared}},
                          {"kind": "asset", "title": "Demo X", "n_embed": 16}, card="# card\n")
    save_model_dir(demo, {"guiding": {"g": torch.ones(2)}}, {"kind": "asset", "guiding": {"layers": 2}},
                   merge_config=True)
    save_model_dir(isolated_user_data / "models" / "mine", {"vqgan": {"w": torch.ones(1)}},
                   {"kind": "vqgan", "title": "Mine"})
    (assets / "models" / "broken").mkdir()
    (assets / "models" / "broken" / "config.json").write_text("{not json")

    config, weights = load_model_dir(demo)
    assert config == {"kind": "asset", "title": "Demo X", "n_embed": 16, "guiding": {"layers": 2}}
    assert set(weights) == {"image_vqgan", "guiding"} and torch.equal(weights["image_vqgan"]["alias"], shared)
    assert (demo / "MODEL_CARD.md").read_text() == "# card\n"
    assert not [p for p in demo.iterdir() if p.name.startswith(".")], "no temporary files left behind"
    umask = os.umask(0)
    os.umask(umask)
    for written in ("image_vqgan.safetensors", "config.json", "MODEL_CARD.md"):  # not mkstemp's private 0600
        assert stat.S_IMODE((demo / written).stat().st_mode) == 0o666 & ~umask, written

    models = list_models()
    assert [(m.name, m.kind, m.title, m.source) for m in models] == [
        ("mine", "vqgan", "Mine", "imported"), ("demo-x", "asset", "Demo X", "demo")]
    assert [m.name for m in list_models("asset")] == ["demo-x"]
    assert find_model("mine").path == isolated_user_data / "models" / "mine"
    with pytest.raises(InputError, match="available: demo-x"):
        find_model("nope", kind="asset")
    with pytest.raises(CheckpointError, match="kind"):
        save_model_dir(tmp_path / "bad", {}, {"kind": "gan", "title": "x"})
    assert json.loads((demo / "config.json").read_text())["guiding"] == {"layers": 2}


def test_models_command_lists_imported_and_demo_models(tmp_path, monkeypatch, isolated_user_data, capsys):
    from app.cli import main as cli

    monkeypatch.setenv("SGRAFFITO_ASSETS", str(tmp_path / "assets"))
    save_model_dir(tmp_path / "assets" / "models" / "demo-x", {}, {"kind": "asset", "title": "Demo X"})
    save_model_dir(isolated_user_data / "models" / "mine", {}, {"kind": "vqgan", "title": "Mine"})
    assert cli(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["mine", "vqgan", "imported"] and out[1].split()[:3] == ["demo-x", "asset", "demo"]
    assert cli(["models", "--kind", "asset"]) == 0
    assert "mine" not in capsys.readouterr().out
