"""Taming Transformers: official-layout import (strict, renamed keys named), the sliding-window rule at every
border, the cached sampler token-identical to the full-recompute reference, and `sgraffito translate` with k
candidates. Tiny widths throughout; the comparison with the official code on random weights is in the note of
engine/models/taming_sampling.py's bench (tests/bench/bench_taming.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from app.cli import main
from engine import registry
from engine.errors import CheckpointError
from engine.importers.taming_ckpt import model_from_checkpoint
from engine.models.taming import GPT, GPTConfig, Net2NetTransformer, TamingConfig
from engine.models.taming_sampling import forward_tokens, sample_fast, sample_reference, window_start
from engine.models.vqgan import VQGANConfig

DD = dict(double_z=False, z_channels=64, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1, 2, 2, 4],
          num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
GPT_TINY = dict(vocab_size=128, block_size=512, n_layer=1, n_head=2, n_embd=32)


def project_yaml(gpt=GPT_TINY) -> dict:
    """The S-FLCKR project config (scripts/taming-transformers.ipynb) with tiny widths."""
    stage = lambda channels, extra: {  # noqa: E731
        "target": "taming.models.vqgan.VQModel",
        "params": {"embed_dim": 64, "n_embed": 128, "ddconfig": {**DD, "in_channels": channels, "out_ch": channels},
                   "lossconfig": {"target": "taming.modules.losses.DummyLoss"}, **extra}}
    return {"model": {"base_learning_rate": 4.5e-06, "target": "taming.models.cond_transformer.Net2NetTransformer",
                      "params": {"cond_stage_key": "segmentation", "first_stage_key": "image",
                                 "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT",
                                                        "params": dict(gpt)},
                                 "first_stage_config": stage(3, {}),
                                 "cond_stage_config": stage(182, {"image_key": "segmentation"})}},
            "data": {"target": "main.DataModuleFromConfig", "params": {"batch_size": 1}}}


def official_folder(root, seed=0, rename=None):
    """A log folder laid out like 2020-11-09T13-31-51_sflckr: configs/*-project.yaml + checkpoints/last.ckpt
    (a Lightning checkpoint: the state dict under "state_dict" with the official key names)."""
    folder = root / "2020-11-09T13-31-51_sflckr"
    (folder / "configs").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    cfg = project_yaml()
    (folder / "configs" / "2020-11-09T13-31-51-project.yaml").write_text(yaml.safe_dump(cfg))
    p = cfg["model"]["params"]
    taming = TamingConfig(GPTConfig(**GPT_TINY),
                          VQGANConfig(**p["first_stage_config"]["params"]["ddconfig"], n_embed=128, embed_dim=64),
                          VQGANConfig(**p["cond_stage_config"]["params"]["ddconfig"], n_embed=128, embed_dim=64))
    torch.manual_seed(seed)
    model = Net2NetTransformer(taming)
    with torch.no_grad():
        for name, t in model.transformer.named_parameters():
            t.add_(torch.randn_like(t) * 0.3)
    sd = model.state_dict()
    if rename:
        old, new = rename
        sd[new] = sd.pop(old)
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1000, "optimizer_states": []},
               folder / "checkpoints" / "last.ckpt")
    return folder, model


# Key names as in CompVis/taming-transformers (mingpt.GPT inside Net2NetTransformer, VQModel stages)
OFFICIAL_KEYS = ["transformer.tok_emb.weight", "transformer.pos_emb", "transformer.blocks.0.ln1.weight",
                 "transformer.blocks.0.ln2.bias", "transformer.blocks.0.attn.key.weight",
                 "transformer.blocks.0.attn.query.bias", "transformer.blocks.0.attn.value.weight",
                 "transformer.blocks.0.attn.proj.weight", "transformer.blocks.0.attn.mask",
                 "transformer.blocks.0.mlp.0.weight", "transformer.blocks.0.mlp.2.bias", "transformer.ln_f.weight",
                 "transformer.head.weight", "first_stage_model.quantize.embedding.weight",
                 "first_stage_model.decoder.conv_out.weight", "cond_stage_model.encoder.conv_in.weight",
                 "cond_stage_model.post_quant_conv.bias"]


def test_official_layout_imports_strictly(tmp_path):
    folder, model = official_folder(tmp_path)
    sd = model.state_dict()
    assert set(OFFICIAL_KEYS) <= set(sd)
    assert "transformer.head.bias" not in sd and "cond_stage_model.colorize" not in sd  # VQModel cond stage
    assert sd["transformer.blocks.0.attn.mask"].shape == (1, 1, 512, 512)
    loaded, dropped = model_from_checkpoint(folder / "configs" / "2020-11-09T13-31-51-project.yaml",
                                            folder / "checkpoints" / "last.ckpt")
    assert dropped == []
    for key, value in sd.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randint(0, 128, (2, 511))
    with torch.no_grad():
        assert torch.equal(loaded.transformer(x), model.eval().transformer(x))

    # the CLI: CONFIG.yaml LAST.ckpt -> a model folder named after the log folder
    assert main(["import", "taming", str(folder / "configs" / "2020-11-09T13-31-51-project.yaml"),
                 str(folder / "checkpoints" / "last.ckpt")]) == 0
    from engine.model_store import find_model
    info = find_model("taming-2020-11-09T13-31-51_sflckr")
    assert info.kind == "taming"
    config = json.loads((info.path / "config.json").read_text())
    assert config["label_set"] == "coco-stuff-182" and config["taming"]["transformer"]["n_layer"] == 1


def test_renamed_key_is_named(tmp_path, capsys):
    folder, _ = official_folder(tmp_path, rename=("transformer.blocks.0.attn.query.weight",
                                                  "transformer.blocks.0.attn.q.weight"))
    with pytest.raises(CheckpointError) as error:
        model_from_checkpoint(folder / "configs" / "2020-11-09T13-31-51-project.yaml",
                              folder / "checkpoints" / "last.ckpt")
    assert "transformer.blocks.0.attn.query.weight <- transformer.blocks.0.attn.q.weight" in str(error.value)
    assert main(["import", "taming", str(folder / "configs" / "2020-11-09T13-31-51-project.yaml"),
                 str(folder / "checkpoints" / "last.ckpt")]) == 2
    assert "attn.q.weight" in capsys.readouterr().err


def test_config_mismatch_is_refused(tmp_path):
    folder, _ = official_folder(tmp_path)
    cfg = project_yaml(dict(GPT_TINY, n_embd=64))
    path = folder / "configs" / "other.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        model_from_checkpoint(path, folder / "checkpoints" / "last.ckpt")


def _official_local(i, size):
    """scripts/make_samples.py, transcribed: the window's local row (column) of target i."""
    if i <= 8:
        return i
    elif size - i < 8:
        return 16 - (size - i)
    return 8


@pytest.mark.parametrize("size", [16, 17, 24, 25, 40, 64])
def test_window_placement_matches_official_rule_at_all_borders(size):
    for i in range(size):
        start, local = window_start(i, size, 16)
        assert local == _official_local(i, size) and start == i - local
        assert 0 <= start and start + 16 <= size  # clamped at both ends
    assert window_start(0, size) == (0, 0)  # top / left border
    assert window_start(size - 1, size) == (size - 16, 15)  # bottom / right border
    if size >= 25:
        assert window_start(12, size) == (4, 8)  # interior: the target at local 8
        assert window_start(size - 8, size) == (size - 16, 8)
        assert window_start(size - 7, size) == (size - 16, 9)


def _tiny_gpt(seed=0) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=512, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return gpt


def test_fast_sampler_is_token_identical_to_reference():
    gpt = _tiny_gpt()
    cond = torch.randint(0, 64, (24, 40), generator=torch.Generator().manual_seed(1))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    reference = sample_reference(gpt, cond, 2, generator=gens(), top_k=20, temperature=1.0)
    fast = sample_fast(gpt, cond, 2, generator=gens(), top_k=20, temperature=1.0)
    assert reference.shape == (2, 24, 40) and reference.unique().numel() > 10
    assert torch.equal(fast, reference)
    # a cache too small to keep windows for the next row: rebuilt, same tokens
    assert torch.equal(sample_fast(gpt, cond, 2, generator=gens(), top_k=20, cache_bytes=1), reference)
    # candidate 1 depends only on its own seed
    alone = sample_fast(gpt, cond, 1, generator=[torch.Generator().manual_seed(6)], top_k=20)
    assert torch.equal(alone[0], reference[1])
    # one generator for the batch (the official scripts' single multinomial call)
    torch.manual_seed(3)
    a = sample_fast(gpt, cond, 1, generator=None, top_k=None, temperature=0.7, steps=200)
    torch.manual_seed(3)
    b = sample_reference(gpt, cond, 1, generator=None, top_k=None, temperature=0.7, steps=200)
    assert torch.equal(a, b)


def test_cached_logits_equal_full_forward():
    gpt = _tiny_gpt(1)
    x = torch.randint(0, 64, (2, 511))
    with torch.no_grad():
        full = gpt(x)
        h1, kv = gpt.extend(x[:, :256])
        h2, kv = gpt.extend(x[:, 256:400], kv)
        h3, _ = gpt.extend(x[:, 400:401], kv)
        cached = gpt.head(torch.cat([h1, h2, h3], 1))
    assert (cached - full[:, :401]).abs().max() < 1e-5


def test_forward_token_accounting():
    counts = forward_tokens(32, 48)
    assert counts["reference"] == 32 * 48 * 511 and counts["windows"] == 17 * 33
    assert counts["fast"] < counts["reference"] / 3


def test_registry_and_workspace_offer_taming_in_translate_mode():
    spec = registry.spec("taming")
    assert spec.serves("translate") and not spec.serves("edit")
    assert [s.kind for s in registry.specs("translate")][0] == "asapnet"  # ASAPNet stays the default
    assert "taming" in registry.importers() and "taming" in registry.backend_kinds()
    from types import SimpleNamespace
    from app.workspace import generators
    models = [SimpleNamespace(kind="taming", name="t"), SimpleNamespace(kind="asapnet", name="a")]
    assert [m.kind for m in generators(models, "translate")] == ["asapnet", "taming"]
    assert [m.kind for m in generators(models, "edit")] == ["asapnet"]


def test_translate_writes_k_candidates(tmp_path, capsys):
    folder, _ = official_folder(tmp_path)
    assert main(["import", "taming", str(folder / "configs" / "2020-11-09T13-31-51-project.yaml"),
                 str(folder / "checkpoints" / "last.ckpt"), "--name", "tiny-taming"]) == 0
    labels = np.full((96, 160), 156, np.uint8)  # sky over grass (COCO-Stuff 0-based ids)
    labels[60:] = 123
    Image.fromarray(labels, "L").save(tmp_path / "map.png")
    out = tmp_path / "out"
    assert main(["translate", str(tmp_path / "map.png"), "--model", "tiny-taming", "--samples", "2",
                 "--size", "300x200", "--out", str(out), "--device", "cpu"]) == 0
    meta = json.loads((out / "candidates.json").read_text())
    assert [c["file"] for c in meta["candidates"]] == ["candidate_00.png", "candidate_01.png"]
    images = [np.asarray(Image.open(out / c["file"])) for c in meta["candidates"]]
    assert images[0].shape == (200, 300, 3) and not np.array_equal(images[0], images[1])
    info = meta["candidates"][0]["info"]
    assert info["tokens"] == [16, 24] and info["sampler"] == "fast"  # short side scaled up to one window
    assert info["precision"] == "fp32"  # the exact path is the default
    # --precision reaches the transformer
    assert main(["translate", str(tmp_path / "map.png"), "--model", "tiny-taming", "--samples", "1",
                 "--size", "300x200", "--out", str(tmp_path / "int8"), "--device", "cpu", "--precision", "int8"]) == 0
    meta8 = json.loads((tmp_path / "int8" / "candidates.json").read_text())
    assert meta8["candidates"][0]["info"]["precision"] == "int8"
    # ASAPNet keeps its one-image form and refuses --samples and --precision
    assert main(["translate", str(tmp_path / "map.png"), "--samples", "3", "--out", str(tmp_path / "a.png")]) == 2
    assert main(["translate", str(tmp_path / "map.png"), "--precision", "int8", "--out", str(tmp_path / "a.png")]) == 2
    assert "--precision applies to sampling engines" in capsys.readouterr().err


def test_sampler_reports_progress_and_cancels():
    from engine.errors import Cancelled

    class Ctx:
        def __init__(self, stop_after):
            self.fractions, self.stop_after = [], stop_after

        def progress(self, fraction, stage="", preview=None):
            self.fractions.append(fraction)

        def check_cancelled(self):
            if len(self.fractions) >= self.stop_after:
                raise Cancelled("cancelled")

    gpt = _tiny_gpt()
    cond = torch.randint(0, 64, (16, 20))
    ctx = Ctx(10 ** 6)
    sample_fast(gpt, cond, 1, generator=[torch.Generator().manual_seed(0)], ctx=ctx)
    assert ctx.fractions == sorted(ctx.fractions) and ctx.fractions[-1] == 1.0 and len(ctx.fractions) > 20
    with pytest.raises(Cancelled):
        sample_fast(gpt, cond, 1, generator=[torch.Generator().manual_seed(0)], ctx=Ctx(3))


# --- reduced precision (issue 21) ----------------------------------------------------------------------------


def test_int8_transformer_samples_and_translates_and_leaves_the_fp32_model_alone(tmp_path):
    from engine.models.taming_sampling import reduced_precision
    from engine.precision import PreparedLinearModule
    from engine.pipelines.taming import translate

    _, model = official_folder(tmp_path)
    model.eval()
    gpt = model.transformer
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    int8 = reduced_precision(gpt, "int8")
    assert reduced_precision(gpt, "fp32") is gpt and reduced_precision(gpt, "int8") is int8  # made once, kept
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.modules())
    assert {m.prepared.precision for m in int8.modules() if isinstance(m, PreparedLinearModule)} == {"int8"}
    cond = torch.randint(0, 128, (16, 20), generator=torch.Generator().manual_seed(2))
    tokens = sample_fast(int8, cond, 2, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], top_k=20)
    assert tokens.shape == (2, 16, 20) and 0 <= int(tokens.min()) and int(tokens.max()) < 128
    assert tokens.unique().numel() > 10
    labels = np.full((96, 160), 156, np.uint8)
    labels[60:] = 123
    images, info = translate(model, labels, [1], precision="int8")
    assert info["precision"] == "int8" and images[0].shape == (96, 160, 3)
    assert list(gpt.state_dict()) == list(before)
    assert all(torch.equal(gpt.state_dict()[k], v) for k, v in before.items())
    from engine.errors import InputError

    with pytest.raises(InputError, match="precision"):
        translate(model, labels, [1], precision="int3")


def taming_step_agreement(reference, reduced, cond, monkeypatch) -> float:
    """Share of token steps at which `reduced` ranks the same token first as `reference`, both on the
    reference's greedy path: the reduced sampler's draws are replaced by the reference's tokens while its own
    logits at every step are recorded."""
    import engine.models.taming_sampling as sampling

    path = sampling.sample_fast(reference, cond, 1, top_k=1, generator=[torch.Generator().manual_seed(0)])
    path = path.reshape(-1)
    top1 = []

    def follow_the_reference(logits, top_k, temperature, generator):
        top1.append(int(logits.argmax(-1)[0]))
        return path[len(top1) - 1: len(top1)]

    monkeypatch.setattr(sampling, "draw", follow_the_reference)
    sampling.sample_fast(reduced, cond, 1, generator=[torch.Generator().manual_seed(0)])
    return float((torch.tensor(top1) == path).float().mean())


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_a_reduced_precision_ranks_the_demo_transformers_fp32_token_first_at_99_percent_of_steps(
        precision, monkeypatch):
    from engine.model_store import find_model
    from engine.models.taming_sampling import reduced_precision
    from engine.pipelines.taming import load_taming
    from engine.precision import supported

    try:
        folder = find_model("demo-taming-landscape", "taming").path
    except Exception:
        folder = None
    if folder is None or not (folder / "model.safetensors").is_file():
        pytest.skip("no trained demo-taming-landscape weights yet (assets/models/demo-taming-landscape)")
    if precision not in supported("cpu"):
        pytest.skip(f"this CPU's torch runs no {precision} kernels")
    from engine.data.landscapes import generate_scene

    model, _ = load_taming(folder)
    labels = torch.from_numpy(np.asarray(generate_scene(7, (256, 384)).labels, np.int64))
    cond = model.encode_labels(labels[None])[0]  # 16 x 24 tokens
    agreement = taming_step_agreement(model.transformer, reduced_precision(model.transformer, precision), cond,
                                      monkeypatch)
    print(f"taming {precision} top-1 agreement with fp32: {agreement:.4f} of {cond.numel()} steps")
    assert agreement >= 0.99
