"""ASSET editing end to end with a tiny randomly initialised model folder: the runtime backend, the
`sgraffito edit` command, and the training tasks' data and export path."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.model_store import load_model_dir, save_model_dir
from engine.data.landscapes import TRAIN_SEEDS, generate_scene
from engine.models.asset import ASSET, ASSETConfig
from engine.models.vqgan import VQGAN, VQGANConfig

VQ = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=32, embed_dim=16, n_embed=64)
TR = dict(vocab_size=64, cond_vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
          decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, reference_rows_5_6=False)


def make_bundle(directory, resolution=512, sga=True):
    torch.manual_seed(0)
    image = VQGAN(VQGANConfig(**VQ, masked_encoder=True))
    seg = VQGAN(VQGANConfig(**VQ, in_channels=182, out_ch=182, n_labels=182))
    cfg = ASSETConfig(**TR)
    weights = {"image_vqgan": image.state_dict(), "seg_vqgan": seg.state_dict(), "guiding": ASSET(cfg).state_dict()}
    config = {"kind": "asset", "title": "tiny test ASSET", "label_set": "coco-stuff-182", "resolution": resolution,
              "image_vqgan": image.config.to_dict(), "seg_vqgan": seg.config.to_dict(), "guiding": cfg.to_dict()}
    if sga:
        weights["sga"] = ASSET(cfg).state_dict()
        config["sga"] = cfg.to_dict()
    return save_model_dir(directory, weights, config)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """Guide-only at 256 px: the VQGAN at 512 px costs seconds per image on the shared CPU."""
    return make_bundle(tmp_path_factory.mktemp("models") / "tiny-asset", resolution=256, sga=False)


@pytest.fixture(scope="module")
def sga_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("models") / "tiny-asset-sga", resolution=512)


def water_edit(size=256, seed=5):
    """A held-out style scene whose lower band becomes sea."""
    from engine.data.landscapes import ids

    scene = generate_scene(seed, size)
    after = scene.labels.copy()
    after[int(size * 0.75) :, : size // 2] = ids().sea
    return scene, after


class Ctx:
    def __init__(self, seeds, device="cpu"):
        self.seeds, self.device, self.seen = seeds, device, []

    def progress(self, fraction, stage="", preview=None):
        self.seen.append((fraction, stage))

    def check_cancelled(self):
        pass


def test_backend_edits_only_the_region_and_is_reproducible_per_seed(bundle_dir):
    from engine.pipelines.asset import AssetBackend
    from engine.jobs import Request

    scene, after = water_edit()
    request = Request(backend="asset", photo=scene.image, labels_before=scene.labels, labels_after=after,
                      model=str(bundle_dir), k=2, seed=10)
    backend = AssetBackend()
    out = backend.run(request, Ctx([10, 11]))
    assert len(out) == 2 and [c.seed for c in out] == [10, 11]
    full = [c.compose(scene.image) for c in out]
    mask = scene.labels != after
    far = np.ones_like(mask)
    far[int(256 * 0.75) - 40 :, : 128 + 40] = False  # beyond the blend band
    for image in full:
        assert np.array_equal(image[far], scene.image[far])
        assert np.abs(image[mask].astype(int) - scene.image[mask]).mean() > 5  # the hole was regenerated
    assert not np.array_equal(full[0][mask], full[1][mask])
    # candidate 11 alone (k=1) is the same pixels as in the batch of two
    alone = backend.run(request.with_seed(11, k=1), Ctx([11]))[0]
    assert np.array_equal(alone.image, out[1].image)


def test_sga_pass_at_512_with_progress(sga_dir):
    from engine.pipelines.asset import edit, load_bundle

    scene, after = water_edit()
    ctx = Ctx([0])
    mask = scene.labels != after
    (patch,), fit, _ = edit(load_bundle(str(sga_dir)), scene.image, after, mask, [0], ctx)
    assert fit.size == (512, 512) and patch.shape == scene.image.shape
    assert np.abs(patch[mask].astype(int) - scene.image[mask]).mean() > 5
    stages = [s for _, s in ctx.seen]
    assert any(s.startswith("guide") for s in stages) and any(s.startswith("ASSET (512") for s in stages)
    fractions = [f for f, _ in ctx.seen]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.95


def test_edit_command_writes_candidates(bundle_dir, tmp_path):
    from app.cli import main

    scene, after = water_edit(seed=6)
    Image.fromarray(scene.image).save(tmp_path / "photo.png")
    Image.fromarray(scene.labels.astype(np.uint8)).save(tmp_path / "labels.png")
    Image.fromarray(after.astype(np.uint8)).save(tmp_path / "new.png")
    args = ["edit", str(tmp_path / "photo.png"), "--labels", str(tmp_path / "labels.png"), "--new-labels",
            str(tmp_path / "new.png"), "--samples", "2", "--model", str(bundle_dir), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    info = json.loads((tmp_path / "out" / "candidates.json").read_text())
    assert len(info["candidates"]) == 2
    result = np.asarray(Image.open(tmp_path / "out" / "candidate_00.png"))
    assert result.shape == scene.image.shape
    # identical maps: a user error naming the files, exit 2
    same = args[:5] + [str(tmp_path / "labels.png")] + args[6:]
    assert main(same) == 2


def test_training_tasks_run_and_export(bundle_dir, tmp_path):
    import shutil

    from engine.train.task import TrainConfig
    from engine.train.tasks_asset import GuidingTask, SGATask, training_mask

    labels = generate_scene(3, 256).labels
    mask = training_mask(labels, np.random.default_rng(0), iterations=2)
    assert mask.any() and not mask[::16, ::16].all()
    folder = tmp_path / "demo"
    shutil.copytree(bundle_dir, folder)
    for stem in ("guiding", "sga"):
        (folder / f"{stem}.safetensors").unlink(missing_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.pop("guiding"), config.pop("sga", None)
    (folder / "config.json").write_text(json.dumps(config))
    options = {**{k: v for k, v in TR.items() if k not in ("vocab_size", "cond_vocab_size", "reference_rows_5_6")},
               "export_dir": str(folder), "token_cache": str(tmp_path / "cache.pt"), "scenes": 4, "eval_sequences": 2, "scene_size": 256}
    for task_cls in (GuidingTask, SGATask):
        task = task_cls(TrainConfig(task="x", batch_size=2, options=options))
        model = task.build_model()
        batch = task.collate([task.train_dataset()[i] for i in range(2)])
        loss, logs = task.loss(model, batch)
        loss.backward()
        assert 0 < logs["ce"] < 10
        task.export(model, tmp_path)
    config, weights = load_model_dir(folder)
    assert {"guiding", "sga", "image_vqgan", "seg_vqgan"} <= set(weights)
    assert config["training"]["sga"]["parameters"] > 0 and config["resolution"] == 256

    # a run can continue the folder's transformer of its kind (the SGA one, not the guiding one it would start from)
    from safetensors.torch import save_file

    weights["sga"] = {k: v + 1 if v.is_floating_point() else v for k, v in weights["sga"].items()}
    save_file(weights["sga"], folder / "sga.safetensors")
    for task_cls, stem in ((GuidingTask, "guiding"), (SGATask, "sga")):
        continued = task_cls(TrainConfig(task="x", options={**options, "init_from": str(folder)})).build_model()
        assert all(torch.equal(v, weights[stem][k]) for k, v in continued.state_dict().items())
    from engine.errors import InputError

    with pytest.raises(InputError, match="guiding.safetensors does not exist"):
        GuidingTask(TrainConfig(task="x", options={**options, "init_from": str(tmp_path / "nowhere")})).build_model()


def test_decode_window_is_the_edit_bounding_box_plus_margin():
    from engine.pipelines.asset import decode_window

    cells = np.zeros((32, 32), bool)
    cells[20:26, 3:5] = True
    assert decode_window(cells, 4) == (slice(16, 30), slice(0, 9))
    assert decode_window(cells, None) == (slice(0, 32), slice(0, 32))
    assert decode_window(cells, 0) == (slice(20, 26), slice(3, 5))


def test_decode_margin_full_and_bad_values(bundle_dir):
    from engine.pipelines.asset import AssetBackend
    from engine.errors import InputError
    from engine.jobs import Request

    scene, after = water_edit()
    mask = scene.labels != after
    backend = AssetBackend()
    for margin in ("full", 0):
        request = Request(backend="asset", photo=scene.image, labels_before=scene.labels, labels_after=after,
                          model=str(bundle_dir), k=1, seed=3, params={"decode_margin": margin})
        image = backend.run(request, Ctx([3]))[0].compose(scene.image)
        assert np.abs(image[mask].astype(int) - scene.image[mask]).mean() > 5
        assert np.array_equal(image[:100], scene.image[:100])  # far above the edit: the photo's own pixels
    bad = Request(backend="asset", photo=scene.image, labels_before=scene.labels, labels_after=after,
                  model=str(bundle_dir), k=1, seed=3, params={"decode_margin": "wide"})
    with pytest.raises(InputError, match="decode_margin"):
        backend.run(bad, Ctx([3]))


def test_token_cache_holds_each_edit_with_the_tokens_the_editor_would_give_it(bundle_dir, tmp_path):
    """The official training encodes the image with the edit's mask (encode_to_z(x, mask)), as the editor does;
    each cached edit carries those tokens, and the dataset serves one of a scene's edits at random for training
    and always the first for evaluation."""
    from engine.pipelines.asset import GUIDE_SIZE, _codes
    from engine.train.tasks_asset import MASK_SCALE, TokenDataset, _Tokenizers, build_token_cache, edit_cells

    cache = build_token_cache(bundle_dir, tmp_path / "cache.pt", count=2, size=256, masks_per_scene=3)
    assert cache["mz"].shape == (2, 3, 256) and cache["mgz"].shape == (2, 3, 256) and cache["m"].shape == (2, 3, 256)
    scene = generate_scene(int(TRAIN_SEEDS[1]), 256)
    cells, guide = edit_cells(scene.labels[::MASK_SCALE, ::MASK_SCALE], np.random.default_rng([1, 2]))
    assert torch.equal(cache["m"][1, 2], torch.from_numpy(cells.reshape(-1)))
    editor_tokens, _ = _codes(_Tokenizers(bundle_dir), scene.image, scene.labels,
                              np.kron(cells, np.ones((16, 16), bool)), "cpu")
    assert torch.equal(cache["mz"][1, 2], editor_tokens)
    assert GUIDE_SIZE == 256 and torch.equal(cache["gm"][1, 2], torch.from_numpy(guide.reshape(-1)))

    train = TokenDataset(cache)
    drawn = {tuple(train[0]["m"].tolist()) for _ in range(24)}
    assert drawn == {tuple(cache["m"][0, j].tolist()) for j in range(3)}  # every cached edit, nothing else
    item = train[1]
    j = next(j for j in range(3) if torch.equal(cache["m"][1, j], item["m"]))
    assert torch.equal(item["z"], cache["mz"][1, j]) and torch.equal(item["gz"], cache["mgz"][1, j])
    held = TokenDataset(cache, fixed_masks=True)
    assert all(torch.equal(held[0]["m"], cache["m"][0, 0]) for _ in range(4))
    with pytest.raises(ValueError, match="masks_per_scene"):
        TokenDataset(build_token_cache(bundle_dir, tmp_path / "plain.pt", count=1, size=256))

    # hole_targets="unmasked": the context as the editor encodes it, the hole's targets as the scene itself is
    hybrid = TokenDataset(cache, fixed_masks=True, hole_targets="unmasked")[1]
    m, gm = cache["m"][1, 0], cache["gm"][1, 0]
    assert torch.equal(hybrid["z"][m], cache["z"][1][m]) and torch.equal(hybrid["z"][~m], cache["mz"][1, 0][~m])
    assert torch.equal(hybrid["gz"][gm], cache["gz"][1][gm]) and torch.equal(hybrid["gz"][~gm], cache["mgz"][1, 0][~gm])
    from engine.errors import InputError

    with pytest.raises(InputError, match="hole_targets must be 'masked' or 'unmasked', not 'both'"):
        TokenDataset(cache, hole_targets="both")


def test_edit_cells_draw_a_guide_cell_exactly_over_its_edited_full_size_cells():
    from engine.train.tasks_asset import edit_cells

    labels = generate_scene(2, 512).labels[::4, ::4]
    for seed in range(4):
        cells, guide = edit_cells(labels, np.random.default_rng(seed))
        assert cells.shape == (32, 32) and guide.shape == (16, 16) and cells.any() and not cells.all()
        assert np.array_equal(guide, cells.reshape(16, 2, 16, 2).any(3).any(1))


def test_water_edits_mask_all_of_a_scenes_water_and_leave_what_it_reflects_as_context():
    from engine.data.landscapes import water_ids
    from engine.train.tasks_asset import water_cells

    labels = generate_scene(3, 512).labels[::4, ::4]  # a sea under mountains
    water = np.isin(labels, water_ids())
    water_cells_ = water.reshape(32, 4, 32, 4).any(3).any(1)
    shapes = set()
    for seed in range(8):
        cells, guide = water_cells(labels, np.random.default_rng(seed))
        assert np.all(cells[water_cells_]), "every token cell with water is sampled again"
        assert not cells[: np.flatnonzero(water_cells_.any(1))[0] - 1].any(), "what stands above stays context"
        assert np.array_equal(guide, cells.reshape(16, 2, 16, 2).any(3).any(1))
        shapes.add(cells.tobytes())
    assert len(shapes) > 1, "both kinds of water edit are drawn"


def test_a_token_cache_of_other_tokenizers_is_encoded_again(bundle_dir, tmp_path):
    """A new seg VQGAN changes every label token; a cache made with the old one must not be trained on. A new
    decoder alone changes no token, so it keeps the cache."""
    import shutil

    from engine.model_store import read_safetensors
    from engine.train.tasks_asset import build_token_cache
    from safetensors.torch import save_file

    folder, path = tmp_path / "demo", tmp_path / "cache.pt"
    shutil.copytree(bundle_dir, folder)
    first = build_token_cache(folder, path, count=1, size=256)

    seg = read_safetensors(folder / "seg_vqgan.safetensors")
    seg["decoder.conv_out.bias"] = seg["decoder.conv_out.bias"] + 1
    save_file(seg, folder / "seg_vqgan.safetensors")
    assert build_token_cache(folder, path, count=1, size=256)["tokenizers"] == first["tokenizers"]

    seg["quantize.embedding.weight"] = torch.flip(seg["quantize.embedding.weight"], [0]).contiguous()
    save_file(seg, folder / "seg_vqgan.safetensors")
    again = build_token_cache(folder, path, count=1, size=256)
    assert again["tokenizers"] != first["tokenizers"]
    assert not torch.equal(again["c"], first["c"])  # the label tokens were encoded again, by the new codebook
    assert torch.equal(torch.load(path, weights_only=True)["c"], again["c"])


def test_an_interrupted_token_cache_resumes_and_a_larger_one_extends_to_what_a_fresh_build_gives(
        bundle_dir, tmp_path, monkeypatch):
    """Encoding a thousand training scenes takes this CPU hours: a killed build must keep its work, and asking for
    more scenes must encode only the new ones, with the same tokens and edits a build from scratch draws."""
    from engine.train import tasks_asset

    options = dict(size=256, masks_per_scene=2, water_edits=0.5)
    fresh = tasks_asset.build_token_cache(bundle_dir, tmp_path / "fresh.pt", count=4, **options)

    path = tmp_path / "cache.pt"
    real_generate, calls = tasks_asset.generate_scene, []

    def killed_on_the_fourth_scene(seed, size):
        calls.append(seed)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_generate(seed, size)

    monkeypatch.setattr(tasks_asset, "CACHE_SAVE_EVERY", 1)
    monkeypatch.setattr(tasks_asset, "generate_scene", killed_on_the_fourth_scene)
    with pytest.raises(KeyboardInterrupt):
        tasks_asset.build_token_cache(bundle_dir, path, count=4, **options)
    assert not path.exists() and len(torch.load(path.with_name("cache.pt.partial"), weights_only=True)["z"]) == 3

    calls.clear()
    monkeypatch.setattr(tasks_asset, "generate_scene",
                        lambda seed, size: calls.append(seed) or real_generate(seed, size))
    tasks_asset.build_token_cache(bundle_dir, path, count=2, **options)  # fewer than the partial holds: kept
    assert calls == [] and torch.load(path, weights_only=True)["z"].shape[0] == 3
    resumed = tasks_asset.build_token_cache(bundle_dir, path, count=4, **options)
    assert calls == [int(TRAIN_SEEDS[3])], "only the scene the kill lost is encoded again"
    assert not path.with_name("cache.pt.partial").exists()
    for key, value in fresh.items():
        assert torch.equal(resumed[key], value) if isinstance(value, torch.Tensor) else resumed[key] == value, key

    calls.clear()
    other = tasks_asset.build_token_cache(bundle_dir, path, count=4, **(options | {"water_edits": 0.0}))
    assert len(calls) == 4 and not torch.equal(other["m"], fresh["m"])  # other settings: nothing kept


def test_a_damaged_token_cache_is_encoded_again_with_a_message(bundle_dir, tmp_path, capsys):
    from engine.train.tasks_asset import build_token_cache

    path = tmp_path / "cache.pt"
    path.write_bytes(b"PK\x03\x04 half of a zip, the rest lost when the disk filled")
    cache = build_token_cache(bundle_dir, path, count=1, size=256)
    assert "not a token cache this version can read" in capsys.readouterr().out
    assert torch.equal(torch.load(path, weights_only=True)["z"], cache["z"]) and cache["z"].shape[0] == 1


def test_the_card_acceptance_table_passes_and_fails_each_set_by_its_bar():
    from engine.train.tasks_asset import FIRST_DEMO, _acceptance_keys, acceptance_table

    def results(group, agreement, reflection, lpips, grid):
        keys = _acceptance_keys(group)
        figures = {"agreement": agreement, "appearance": (0.4, 0.6), "reflection": reflection}
        out = {f"{keys[name]} ({who})": value for name, pair in figures.items()
               for who, value in zip(("ours", "naive fill"), pair)}
        return out | {f"{keys['lpips']} (ours)": lpips, f"{keys['grid']} (ours)": grid}

    edits = {"procedural scenes": results("procedural scenes", (0.30, 0.02), (0.3, 0.2), 0.7, 12.0),
             "photo-textured scenes": results("photo-textured scenes", (0.01, 0.02), (0.3, 0.2), 0.95, 12.0),
             "held-out real photos": results("held-out real photos", (0.30, 0.02), (0.1, 0.2), 0.7, 16.0)}
    rows = [[cell.strip() for cell in line.strip("|").split("|")][1:] for line in acceptance_table(edits)[2:]]
    agreement, reflection, lpips, grid, appearance = rows
    assert [cell.endswith("pass") for cell in agreement] == [True, False, True]  # naive above ours: fail
    assert [cell.endswith("pass") for cell in reflection] == [True, True, False]
    assert [cell.endswith("pass") for cell in lpips] == [True, False, True]  # 0.95 is not below the first demo's 0.94
    assert [cell.endswith("pass") for cell in grid] == [True, True, False]  # 16 > half of the first demo's 30.6
    assert grid[2].startswith(f"16.000 vs {FIRST_DEMO['held-out real photos']['grid'] / 2:.3f}")
    assert not any(cell.endswith("pass") for cell in appearance)
