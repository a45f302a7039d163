import pytest
import torch
import torch.nn.functional as F

from app.cli import main as cli
from engine.importers.state_dicts import read_checkpoint
from engine.model_store import list_models
from engine.errors import CheckpointError, InputError
from engine.importers.lightning import split_asset_tokenizers, vqgan_from_state_dict
from engine.models.vqgan import VQGAN, RegionNorm, VQGANConfig, VectorQuantizer2, config_from_state_dict
from engine.pipelines.asset import load_vqgan

TINY = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=64, embed_dim=64, n_embed=128)


def official_vqgan_shapes(ch=32, ch_mult=(1, 1, 2, 2, 4), nrb=1, z=64, n_embed=128, embed_dim=64, cin=3, cout=3,
                          attn_levels=(4,)):
    """Key -> shape of a taming VQModel state dict, written out from the published layout (not from our model)."""
    shapes = {}

    def conv(name, co, ci, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (co, ci, k, k), (co,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name, ci, co):
        norm(f"{name}.norm1", ci)
        conv(f"{name}.conv1", co, ci, 3)
        norm(f"{name}.norm2", co)
        conv(f"{name}.conv2", co, co, 3)
        if ci != co:
            conv(f"{name}.nin_shortcut", co, ci, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    conv("encoder.conv_in", ch, cin, 3)
    c = ch
    for level, mult in enumerate(ch_mult):
        for b in range(nrb):
            resnet(f"encoder.down.{level}.block.{b}", c, ch * mult)
            c = ch * mult
            if level in attn_levels:
                attn(f"encoder.down.{level}.attn.{b}", c)
        if level < len(ch_mult) - 1:
            conv(f"encoder.down.{level}.downsample.conv", c, c, 3)
    for prefix in ("encoder", "decoder"):
        resnet(f"{prefix}.mid.block_1", c, c)
        attn(f"{prefix}.mid.attn_1", c)
        resnet(f"{prefix}.mid.block_2", c, c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", z, c, 3)
    conv("decoder.conv_in", c, z, 3)
    for level in reversed(range(len(ch_mult))):
        for b in range(nrb + 1):
            resnet(f"decoder.up.{level}.block.{b}", c, ch * ch_mult[level])
            c = ch * ch_mult[level]
            if level in attn_levels:
                attn(f"decoder.up.{level}.attn.{b}", c)
        if level > 0:
            conv(f"decoder.up.{level}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", cout, c, 3)
    shapes["quantize.embedding.weight"] = (n_embed, embed_dim)
    conv("quant_conv", embed_dim, z, 1)
    conv("post_quant_conv", z, embed_dim, 1)
    return shapes


def random_state_dict(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.2 if len(s) > 1 else 0.05) + (1.0 if k.endswith("norm1.weight") else 0)
            for k, s in shapes.items()}


def tiny(**kw):
    torch.manual_seed(0)
    return VQGAN(VQGANConfig(**{**TINY, **kw})).eval()


def test_full_size_layout_and_parameter_counts():
    # counts of the published landscape models (343 tensors each)
    with torch.device("meta"):
        image = VQGAN(VQGANConfig(masked_encoder=True))
        seg = VQGAN(VQGANConfig(in_channels=182, out_ch=182, n_labels=182))
    assert {k: tuple(v.shape) for k, v in image.state_dict().items()} == official_vqgan_shapes(
        ch=128, nrb=2, z=256, n_embed=1024, embed_dim=256)
    assert sum(p.numel() for p in image.parameters()) == 72_141_699
    assert sum(p.numel() for p in seg.parameters()) == 72_554_294
    assert seg.state_dict()["colorize"].shape == (3, 182, 1, 1)


def test_taming_lightning_checkpoint_imports_strictly(tmp_path):
    shapes = official_vqgan_shapes()
    sd = random_state_dict(shapes)
    sd["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)  # training-only keys are dropped
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "global_step": 10, "optimizer_states": []}, path)

    assert cli(["import", "vqgan", str(path), "--name", "tiny-taming"]) == 0
    [info] = [m for m in list_models("vqgan") if m.name == "tiny-taming"]
    assert info.source == "imported"
    model = load_vqgan(info.path)
    assert config_from_state_dict(sd) == model.config
    assert model.config.attn_resolutions == (16,) and model.config.ch_mult == (1, 1, 2, 2, 4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key

    x = torch.rand(1, 3, 64, 64) * 2 - 1
    quant, codes = model.encode(x)
    assert codes.shape == (1, 4, 4) and quant.shape == (1, 64, 4, 4)
    assert torch.allclose(model.decode_code(codes), model.decode(quant), atol=1e-4)
    assert cli(["import", "vqgan", str(path), "--name", "tiny-taming"]) == 2  # exists: needs --force


def test_renamed_key_is_reported_by_name(tmp_path, capsys):
    sd = random_state_dict(official_vqgan_shapes())
    sd["encoder.mid.attn_1.proj.weight"] = sd.pop("encoder.mid.attn_1.proj_out.weight")
    path = tmp_path / "renamed.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as error:
        vqgan_from_state_dict(read_checkpoint(path), str(path))
    assert "encoder.mid.attn_1.proj_out.weight <- encoder.mid.attn_1.proj.weight [128, 128, 1, 1]" in str(error.value)

    assert cli(["import", "vqgan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "renamed.ckpt" in err and "encoder.mid.attn_1.proj.weight" in err
    assert not [m for m in list_models() if m.source == "imported"]


def test_asset_checkpoint_splits_into_masked_image_and_seg_tokenizers(tmp_path):
    image_sd = random_state_dict(official_vqgan_shapes(), seed=1)
    seg_sd = random_state_dict(official_vqgan_shapes(cin=182, cout=182), seed=2)
    seg_sd["colorize"] = torch.randn(3, 182, 1, 1)
    sd = {**{f"first_stage_model.{k}": v for k, v in image_sd.items()},
          **{f"cond_stage_model.{k}": v for k, v in seg_sd.items()},
          "transformer.shared.weight": torch.zeros(130, 64)}
    image, seg, transformer, rest = split_asset_tokenizers(sd, "asset.ckpt")
    assert image.config.masked_encoder and not seg.config.masked_encoder
    assert seg.config.n_labels == 182 and seg.config.in_channels == 182
    assert set(transformer) == {"shared.weight"} and rest == {}

    labels = torch.randint(0, 182, (1, 64, 64))
    labels[:, :20] = 7
    codes = seg.encode_labels(labels)
    assert torch.allclose(seg.label_conv_in(labels), seg.encoder.conv_in(seg.one_hot(labels)), atol=1e-5)
    assert torch.equal(codes, seg.encode(seg.one_hot(labels))[1])
    assert codes.shape == (1, 4, 4) and seg.decode_labels(codes).shape == (1, 64, 64)
    with pytest.raises(InputError, match="182"):
        seg.encode_labels(torch.full((1, 32, 32), 200))


def test_codes_outside_the_hole_do_not_depend_on_hole_content():
    image = tiny(masked_encoder=True)
    plain = tiny()
    plain.load_state_dict(image.state_dict())
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    mask = torch.zeros(1, 1, 96, 96)
    mask[..., 30:70, 21:57] = 1  # not aligned to the 16 px token grid
    other = torch.where(mask.bool(), torch.rand_like(x) * 2 - 1, x)
    token_hole = F.interpolate(mask, size=(6, 6))[0, 0].bool()

    z1, z2 = image.encode_z(x, mask), image.encode_z(other, mask)
    assert torch.allclose(z1[..., ~token_hole], z2[..., ~token_hole], atol=1e-5)
    assert not torch.allclose(z1[..., token_hole], z2[..., token_hole], atol=1e-3)
    assert torch.equal(image.encode(x, mask)[1][0][~token_hole], image.encode(other, mask)[1][0][~token_hole])
    # the plain taming encoder leaks the hole into its neighbours: what the masked encoder is for
    p1, p2 = plain.encode_z(x), plain.encode_z(other)
    assert not torch.allclose(p1[..., ~token_hole], p2[..., ~token_hole], atol=1e-3)


def test_mask_none_means_no_edit_and_full_masks_are_refused():
    image = tiny(masked_encoder=True)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(image.encode_z(x), image.encode_z(x, torch.zeros(2, 32, 32)))
    with pytest.raises(InputError, match="whole image"):
        image.encode(x, torch.ones(2, 1, 32, 32))
    with pytest.raises(InputError, match="multiple of 16"):
        image.encode(torch.rand(1, 3, 72, 64))


def test_region_norm_reproduces_the_reference_scaling_quirk():
    norm = RegionNorm(128)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 128, 8, 8)
    empty = norm(x, torch.zeros(2, 1, 8, 8))
    gn = F.group_norm(x, 32, eps=1e-6)
    expected = gn * norm.weight[:, None, None] / 2.0 + norm.bias[:, None, None]  # 1/sqrt(C/G), C/G = 4
    assert torch.allclose(empty, expected, atol=1e-5)

    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :3] = 1
    out = norm(x, mask)
    inside = F.group_norm(x, 32, norm.weight, norm.bias, eps=1e-6)
    assert torch.allclose(out[..., :3, :], inside[..., :3, :], atol=1e-6)
    # outside the hole: what the hole holds does not matter
    out2 = norm(torch.where(mask.bool(), torch.randn_like(x) * 50, x), mask)
    assert torch.allclose(out[..., 3:, :], out2[..., 3:, :], atol=1e-5)


def test_quantizer_legacy_flag_moves_beta_between_terms():
    z = torch.randn(1, 8, 2, 2, requires_grad=True)
    grads = {}
    for legacy in (True, False):
        torch.manual_seed(0)
        q = VectorQuantizer2(16, 8, beta=0.25, legacy=legacy)
        zq, loss, idx = q(z)
        z.grad = None
        loss.backward()
        grads[legacy] = (z.grad.clone(), q.embedding.weight.grad.clone())
        d = torch.cdist(z.detach().permute(0, 2, 3, 1).reshape(-1, 8), q.embedding.weight.detach())
        assert torch.equal(idx.flatten(), d.argmin(1))
    assert torch.allclose(grads[True][0] * 0.25, grads[False][0], atol=1e-7)  # commitment: 1 vs beta
    assert torch.allclose(grads[True][1], grads[False][1] * 0.25, atol=1e-7)  # codebook: beta vs 1


def test_import_asset_bundle(tmp_path):
    from engine.models.asset import ASSET, ASSETConfig

    torch.manual_seed(0)
    cfg = ASSETConfig(vocab_size=128, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=1,
                      decoder_attention_heads=1, encoder_ffn_dim=64, decoder_ffn_dim=64)
    sga, guiding = ASSET(cfg).state_dict(), ASSET(cfg).state_dict()
    image_sd = random_state_dict(official_vqgan_shapes(), seed=1)
    seg_sd = random_state_dict(official_vqgan_shapes(cin=182, cout=182), seed=2)
    seg_sd["colorize"] = torch.randn(3, 182, 1, 1)
    torch.save({"state_dict": {**{f"first_stage_model.{k}": v for k, v in image_sd.items()},
                               **{f"cond_stage_model.{k}": v for k, v in seg_sd.items()},
                               **{f"transformer.{k}": v for k, v in sga.items()},
                               **{f"guiding_transformer.{k}": v for k, v in guiding.items()}}},
               tmp_path / "landscape_1024.ckpt")
    torch.save({"state_dict": {f"transformer.{k}": v for k, v in guiding.items()}}, tmp_path / "guiding.ckpt")

    assert cli(["import", "asset", str(tmp_path / "landscape_1024.ckpt"), "--guiding",
                str(tmp_path / "guiding.ckpt"), "--heads", "1"]) == 0  # no bundle yaml here: heads given
    [info] = [m for m in list_models("asset") if m.source == "imported"]
    assert info.name == "landscape_1024" and info.source == "imported"
    image = load_vqgan(info.path, "image_vqgan")
    assert image.config.masked_encoder and load_vqgan(info.path, "seg_vqgan").config.n_labels == 182
    for key, value in image.state_dict().items():
        assert torch.equal(value, image_sd[key])
    weights = read_checkpoint(info.path / "guiding.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in guiding.items())


def test_training_tasks_export_into_one_shared_demo_folder(tmp_path):
    import json

    from engine.model_store import save_model_dir
    from engine.train import TrainConfig, train

    demo = tmp_path / "demo"
    # another exporter (the transformer) already wrote its part of the folder
    save_model_dir(demo, {"guiding": {"w": torch.ones(2)}}, {"kind": "asset", "title": "t", "guiding": {"d": 1}})
    (demo / "MODEL_CARD.md").write_text("# ASSET demo\n\n## Transformers\n\nguiding notes\n")
    options = dict(ch=32, num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=32, crop=32, scene_size=64,
                   eval_scenes=1, eval_size=64, export_dir=str(demo))
    for task in ("vqgan", "seg_vqgan"):
        config = TrainConfig(task=task, steps=2, batch_size=2, ema_decay=0, eval_every=0, save_every=0,
                             log_every=1, device="cpu", out_dir=str(tmp_path / task), options=options)
        result = train(config)
        assert result.step == 2 and result.metrics
    config = json.loads((demo / "config.json").read_text())
    assert config["guiding"] == {"d": 1} and config["image_vqgan"]["masked_encoder"]
    assert config["seg_vqgan"]["n_labels"] == 182
    assert set(config["training"]) == {"image_vqgan", "seg_vqgan"}
    assert "eval_psnr_db" in config["training"]["image_vqgan"]
    assert "eval_pixel_accuracy" in config["training"]["seg_vqgan"]
    card = (demo / "MODEL_CARD.md").read_text()
    assert "guiding notes" in card and "### image_vqgan.safetensors" in card and "### seg_vqgan.safetensors" in card
    assert load_vqgan(demo, "image_vqgan").config.masked_encoder
    assert (demo / "guiding.safetensors").is_file()


def test_norm_groups_is_a_config_choice_that_changes_no_checkpoint_key():
    small = VQGAN(VQGANConfig(ch=32, num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=32, norm_groups=8,
                              masked_encoder=True))
    official = VQGAN(VQGANConfig(ch=32, num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=32, masked_encoder=True))
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}
    assert small.decoder.norm_out.num_groups == 8 and small.encoder.mid.block_1.norm1.num_groups == 8
    assert official.decoder.norm_out.num_groups == 32
    assert VQGANConfig.from_dict(small.config.to_dict()).norm_groups == 8


def test_kmeans_separates_clusters_and_copes_with_fewer_points_than_centres():
    from engine.train.tasks_vqgan import kmeans

    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in truth])
    centres = kmeans(points, 3)
    assert torch.cdist(truth, centres).min(1).values.max() < 0.1
    few = kmeans(points[:2], 5)
    assert few.shape == (5, 2) and torch.isfinite(few).all()


def test_texture_loss_prefers_detail_to_blur_on_a_rendered_scene():
    """Pixel losses score a blurred landscape better than one with the right amount of the wrong grass; the texture
    term is what asks the decoder for detail: it is zero for the target, small for a shifted copy (same texture,
    other noise) and large for the blur."""
    from engine.data.landscapes import generate_scene
    from engine.train.tasks_vqgan import gradient_loss, texture_loss

    x = torch.from_numpy(generate_scene(3, 128).image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    blurred = F.interpolate(F.avg_pool2d(x, 8), scale_factor=8, mode="bilinear", align_corners=False)
    shifted = torch.roll(x, shifts=(2, 2), dims=(2, 3))
    assert float(texture_loss(x, x)) < 1e-6
    assert (x - shifted).abs().mean() > (x - blurred).abs().mean()  # L1 prefers the blur...
    assert gradient_loss(shifted, x) > gradient_loss(blurred, x)  # ...and so does the gradient L1
    assert texture_loss(shifted, x) < 0.5 * texture_loss(blurred, x)


def test_local_colour_loss_weighs_a_colour_shift_above_noise_that_averages_out():
    """A scene tinted by 20 levels of red and the same scene with zero-mean noise of that per-pixel strength in
    every channel: pixel L1 calls the noise worse, the local colour term calls the tint worse by far (the tint turns
    water brown; the noise averages out over a cell)."""
    from engine.data.landscapes import generate_scene
    from engine.train.tasks_vqgan import local_colour_loss

    x = torch.from_numpy(generate_scene(5, 128).image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    tinted = x + torch.tensor([20 / 127.5, 0, 0]).view(1, 3, 1, 1)
    noisy = x + torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0))) * 20 / 127.5
    assert float(local_colour_loss(x, x)) == 0
    assert (noisy - x).abs().mean() > (tinted - x).abs().mean()
    assert local_colour_loss(tinted, x) > 3 * local_colour_loss(noisy, x)


def test_codebook_warmup_then_kmeans_init_fits_the_latents():
    """taming's tiny uniform codebook sits far from the encoder's outputs (training then collapses onto the few
    nearest codes); after the continuous warm-up the k-means codebook quantises the same latents closely."""
    from engine.data.landscapes import generate_scene
    from engine.train.tasks_vqgan import _Codebook

    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16, embed_dim=8, n_embed=64,
                              norm_groups=8))
    x = torch.stack([torch.from_numpy(generate_scene(s, 64).image.copy()).permute(2, 0, 1) for s in range(4)])
    x = x.float() / 127.5 - 1

    def quantisation_error():
        with torch.no_grad():
            z = model.encode_z(x)
            zq = model.quantize.get_codebook_entry(model.quantize.codes(z))
            return float((z - zq).pow(2).mean() / z.pow(2).mean())

    before = quantisation_error()
    care = _Codebook(model, every=10, warmup=2)
    for step in range(2):
        assert not care.quantizing(step)
        rec, qloss, indices = model(x, quantize=False)
        assert indices is None and rec.shape == x.shape and float(qloss) == 0
        care.update(model, indices, step)
    assert care.quantizing(2) and care.initialised
    assert before > 0.9 and quantisation_error() < 0.2
    assert model.encode(x)[1].unique().numel() >= 48


def test_decoder_fine_tune_keeps_the_tokens_and_records_every_stage(tmp_path):
    """Fine-tuning only the decoder (options.decoder_from) must leave encoder and codebook bit-identical, so
    token caches and transformers trained on them stay valid."""
    import json

    from safetensors.torch import load_file

    from engine.train import TrainConfig, train

    demo = tmp_path / "demo"
    options = dict(ch=32, num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=32, crop=32, scene_size=64,
                   eval_scenes=1, eval_size=64, export_dir=str(demo), mask_prob=0.0)
    base = TrainConfig(task="vqgan", steps=2, batch_size=2, ema_decay=0, eval_every=0, save_every=0, log_every=1,
                       device="cpu", out_dir=str(tmp_path / "first"), options=options)
    train(base)
    first = load_file(str(tmp_path / "first" / "checkpoint" / "model.safetensors"))
    tuned = TrainConfig(**{**base.__dict__, "lr": 1e-2, "out_dir": str(tmp_path / "tuned"),
                           "options": {**options, "decoder_from": str(tmp_path / "first" / "checkpoint" / "model.safetensors")}})
    train(tuned)
    second = load_file(str(tmp_path / "tuned" / "checkpoint" / "model.safetensors"))
    for key, value in first.items():
        same = torch.equal(value, second[key])
        assert same if key.startswith(("encoder.", "quant_conv.", "quantize.")) else True, key
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith("decoder."))
    entry = json.loads((demo / "config.json").read_text())["training"]["image_vqgan"]
    assert entry["steps"] == 2 and "encoder and codebook frozen" in entry["decoder fine-tune"]

    textured = TrainConfig(**{**tuned.__dict__, "out_dir": str(tmp_path / "textured"),
                              "options": {**tuned.options, "texture_weight": 2.0, "colour_weight": 3.0,
                                          "decoder_from": str(tmp_path / "tuned" / "checkpoint" / "model.safetensors")}})
    train(textured)
    stages = json.loads((demo / "config.json").read_text())["training"]["image_vqgan"]["decoder fine-tune"].split("; then ")
    assert len(stages) == 2 and "texture" not in stages[0] and "2.0 x texture" in stages[1]
    assert "colour" not in stages[0] and "3.0 x local colour L1" in stages[1]
    logged = (tmp_path / "textured" / "train.csv").read_text().splitlines()[0].split(",")
    assert "colour" in logged and "colour" not in (tmp_path / "tuned" / "train.csv").read_text().splitlines()[0]


def test_seg_training_crops_carry_user_like_paint_edits_and_only_the_seg_task_takes_them():
    import numpy as np

    from engine.data.landscapes import generate_scene, ids
    from engine.train.task import TrainConfig
    from engine.train.tasks_vqgan import ImageVQGANTask, LandscapeCrops, SegVQGANTask, paint_edit

    labels = generate_scene(7, 96).labels
    rng = np.random.default_rng(0)
    painted, shapes = set(), set()
    for _ in range(30):
        after = paint_edit(labels, rng)
        changed = after != labels
        if changed.any():
            assert len(np.unique(after[changed])) == 1  # one stroke of one class
            painted.add(int(after[changed][0]))
            rows = changed.any(1)
            shapes.add("band" if changed[rows.argmax():].all() else "region")
    assert painted <= set(vars(ids()).values()) and len(painted) >= 5
    assert shapes == {"band", "region"}

    crops = [next(iter(LandscapeCrops(96, 64, 2, 0.0, pool=1, label_edits=share).place(3))) for share in (0.0, 1.0)]
    assert torch.equal(crops[0]["image"], crops[1]["image"])  # the picture stays; only its map is repainted
    with pytest.raises(ValueError, match="seg_vqgan"):
        ImageVQGANTask(TrainConfig(task="vqgan", options={"label_edits": 0.5})).train_dataset()
    assert SegVQGANTask(TrainConfig(task="seg_vqgan", options={"label_edits": 0.5, "crop": 32, "scene_size": 64})).train_dataset()


def test_isolated_code_loss_scores_pure_cells_and_reaches_the_encoder():
    """options.isolated_code_weight: each code of a cell one class fills must decode, alone, to that class; its
    gradient reaches the encoder through the straight-through quantiser, so cells of classes that shared a code
    (a painted sea and a lake) get pushed apart."""
    from engine.train import TrainConfig
    from engine.train.tasks_vqgan import SegVQGANTask, _vqgan_config

    options = dict(ch=32, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=32)
    torch.manual_seed(0)
    model = VQGAN(_vqgan_config(options, in_channels=182, out_ch=182, n_labels=182))
    task = SegVQGANTask(TrainConfig(task="seg_vqgan", options={**options, "isolated_code_weight": 1.0}))
    labels = torch.arange(32 * 32).reshape(1, 32, 32) % 7  # every cell mixed: nothing to score
    labels[0, :16, :16] = 154  # one cell of sea
    labels[0, 16:, 16:17] = 3  # 1/16 of a cell: still mixed
    z = model.quant_conv(model.encoder.features(model.label_conv_in(labels)))
    quant, _, _ = model.quantize(z)
    loss = task._isolated_code_loss(model, quant, labels)
    alone = model.decode(quant[:, :, :1, :1].expand(-1, -1, 2, 2))
    assert torch.allclose(loss, F.cross_entropy(alone, torch.full((1, 32, 32), 154)))
    loss.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    mixed = torch.arange(32 * 32).reshape(1, 32, 32) % 7
    assert task._isolated_code_loss(model, quant, mixed) == 0


@pytest.mark.parametrize("weight", ["abc", -1, None])
@pytest.mark.parametrize("task, key", [("seg_vqgan", "isolated_code_weight"), ("vqgan", "colour_weight")])
def test_a_bad_loss_weight_is_named(weight, task, key):
    from engine.train import TrainConfig
    from engine.train.tasks_vqgan import ImageVQGANTask, SegVQGANTask

    cls = SegVQGANTask if task == "seg_vqgan" else ImageVQGANTask
    with pytest.raises(InputError, match=f"options.{key} must be a number"):
        cls(TrainConfig(task=task, options={key: weight}))
