"""Photo-textured scenes (engine/data/textures.py) with a tiny made-up texture cache: the real one (Debian
flightgear-data-base, `sgraffito data textures`) is never needed by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import textures as tx
from engine.data.landscapes import generate_scene


def _fake_root(root: Path) -> Path:
    """A folder shaped like the unpacked package: every SOURCES file as a small noisy image of its class's hue."""
    rng = np.random.default_rng(0)
    hues = {"grass": (70, 120, 40), "grass-autumn": (140, 120, 50), "forest": (30, 70, 30), "forest-autumn": (140, 70, 20),
            "shrub": (60, 90, 40), "rock": (120, 118, 112), "snow": (235, 238, 245), "sand": (210, 190, 140),
            "water": (30, 60, 80), "clouds": (250, 250, 250), "road": (90, 90, 92)}
    for cls, files in tx.SOURCES.items():
        for f in files:
            path = root / tx.PACKAGE_ROOT / f
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = rng.normal(0, 25, (64, 64, 3))
            image = np.clip(np.float32(hues[cls]) + noise, 0, 255).astype(np.uint8)
            if cls == "clouds":
                alpha = (rng.random((64, 64, 1)) * 255).astype(np.uint8)
                image = np.concatenate([image, alpha], axis=-1)
            Image.fromarray(image).save(path)
    doc = root / "usr/share/doc" / tx.PACKAGE
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nLicense: GPL-2+\n")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = _fake_root(tmp_path_factory.mktemp("root"))
    folder = tmp_path_factory.mktemp("textures")
    tx.install_textures(folder, root, log=lambda *_: None)
    return folder


def test_the_cache_has_a_manifest_of_file_class_package_and_licence(cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    entries = manifest["textures"]
    assert len(entries) == sum(len(f) for f in tx.SOURCES.values())
    for entry in entries:
        assert (cache / entry["file"]).is_file()
        assert entry["package"] == tx.PACKAGE and entry["license"] == "GPL-2+" and entry["class"] in tx.SOURCES
    assert (cache / f"{tx.PACKAGE}.copyright").is_file()
    assert not any(bad in f for files in tx.SOURCES.values() for f in files for bad in tx.HELD_OUT)
    assert tx.PACKAGE not in tx.HELD_OUT


@pytest.mark.parametrize("seed", [2, 3, 6, 7])
def test_the_textured_scene_keeps_the_exact_label_map(cache, seed):
    library = tx.TextureLibrary(cache)
    scene = generate_scene(seed, (96, 128))
    before = scene.image.copy()
    textured = tx.texture_scene(scene, library)
    assert np.array_equal(textured.labels, scene.labels)
    assert np.array_equal(scene.image, before)  # the procedural scene is left as it was
    assert textured.image.shape == scene.image.shape and textured.image.dtype == np.uint8
    assert np.abs(textured.image.astype(int) - scene.image.astype(int)).mean() > 1
    assert textured.meta["textured"] and textured.meta["seed"] == seed and textured.meta["layout"] == scene.meta["layout"]
    again = tx.texture_scene(generate_scene(seed, (96, 128)), library)
    assert np.array_equal(again.image, textured.image)  # deterministic per seed


def test_the_procedural_generator_is_unchanged_by_the_texture_module(cache):
    first = generate_scene(5, 96)
    tx.generate_textured_scene(5, 96, tx.TextureLibrary(cache))
    second = generate_scene(5, 96)
    assert np.array_equal(first.image, second.image) and np.array_equal(first.labels, second.labels)


def test_water_still_reflects_what_stands_above_it(cache):
    from engine.metrics import reflection_score

    library = tx.TextureLibrary(cache)
    scores = []
    for seed in (2, 6, 7):  # river, lake, sea
        scene = tx.generate_textured_scene(seed, 128, library)
        assert scene.meta["shoreline"] is not None
        scores.append(reflection_score(scene.image, scene.labels))
    assert min(scores) > 0.5


def test_ground_textures_get_smaller_towards_the_horizon():
    u, v, footprint = tx._coordinates("ground", 100, 100, 0.4, 1.0, 512, np.random.default_rng(0))
    column = footprint[:, 50]
    assert column[45] > column[70] > column[99]  # texels per pixel grow towards the horizon
    assert abs(v[99, 50] - v[98, 50]) < abs(v[45, 50] - v[44, 50])


def test_a_missing_cache_says_what_to_run(tmp_path):
    from engine.errors import InputError

    with pytest.raises(InputError, match="sgraffito data textures"):
        tx.TextureLibrary(tmp_path / "none")


def test_preview_shows_both_kinds(cache, tmp_path, monkeypatch):
    from app.cli import main

    monkeypatch.setenv("SGRAFFITO_TEXTURES", str(cache))
    tx.default_library.cache_clear()
    out = tmp_path / "preview"
    assert main(["data", "preview", "--n", "2", "--size", "64", "--out", str(out)]) == 0
    assert (out / "0.png").is_file() and (out / "0_textured.png").is_file()
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape[0] == 3 * 64 + 2 * 4  # procedural, textured and label rows
    tx.default_library.cache_clear()


def test_vqgan_crop_stream_draws_textured_scenes_only_when_asked(cache, monkeypatch):
    """options.textured of the VQGAN tasks: at 0 the stream is exactly the one before the option (no texture, no
    extra random draw); at 1 every scene it renders is photo-textured."""
    import itertools

    import torch

    from engine.train.tasks_vqgan import LandscapeCrops

    textured_seeds, original = [], tx.texture_scene

    def texture(scene):
        textured_seeds.append(scene.meta["seed"])
        return original(scene, tx.TextureLibrary(cache))

    monkeypatch.setattr(tx, "texture_scene", texture)

    def crops(**textured):
        stream = LandscapeCrops(64, 32, 2, 0.0, pool=2, **textured).place(3)
        return list(itertools.islice(iter(stream), 6))

    before, zero = crops(), crops(textured=0.0)
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
               for a, b in zip(before, zero))
    assert textured_seeds == []
    crops(textured=1.0)
    assert len(textured_seeds) == 4  # a pool of 2, then one new scene every 2 crops


def test_the_asset_token_cache_encodes_photo_textured_scenes_when_asked(cache, tmp_path, monkeypatch):
    """options.textured of the ASSET transformers: the same label maps (label tokens) with photo-textured images
    (other image tokens); a cache of another fraction is encoded again, never reused."""
    import torch

    from engine.errors import InputError
    from engine.train.tasks_asset import build_token_cache
    from tests.test_asset_pipeline import make_bundle

    monkeypatch.setenv("SGRAFFITO_TEXTURES", str(cache))
    folder = make_bundle(tmp_path / "tiny-asset", resolution=256, sga=False)
    plain = build_token_cache(folder, tmp_path / "cache.pt", count=2, size=256)
    textured = build_token_cache(folder, tmp_path / "textured.pt", count=2, size=256, textured=1.0)
    assert torch.equal(plain["c"], textured["c"])
    assert not torch.equal(plain["z"], textured["z"])
    again = build_token_cache(folder, tmp_path / "cache.pt", count=2, size=256, textured=1.0)
    assert torch.equal(again["z"], textured["z"]) and again["textured"] == 1.0
    with pytest.raises(InputError, match="options.textured must be a fraction"):
        build_token_cache(folder, tmp_path / "cache.pt", count=2, size=256, textured=1.5)


def test_the_segmenter_task_caches_photo_textured_and_jittered_scenes_only_when_asked(cache, monkeypatch):
    """options.textured / options.jitter of the demo segmenter: at 0 the cached scenes are exactly the first
    demo's (no texture, no extra draw); at textured 1 every scene is photo-textured with its exact label map as the
    target, and jitter changes the images the features come from, never the targets."""
    import torch

    from engine.models.segmenter import VGG16Features
    from engine.train.task import TrainConfig
    from engine.train.tasks_segmenter import SegmenterLandscapeTask

    textured_seeds, original = [], tx.texture_scene

    def texture(scene):
        textured_seeds.append(scene.meta["seed"])
        return original(scene, tx.TextureLibrary(cache))

    monkeypatch.setattr(tx, "texture_scene", texture)
    torch.manual_seed(0)
    backbone = VGG16Features().eval().requires_grad_(False)

    def cached(**options):
        task = SegmenterLandscapeTask(TrainConfig(task="segmenter-landscape", options={
            "scenes": 3, "size": [64, 96], "head": {"width": 8, "blocks": 1, "dilations": [1]}, **options}))
        task.backbone = backbone
        data = task.train_dataset()
        return data.features, data.targets

    before, zero = cached(), cached(textured=0.0, jitter=0.0, zoom=1.0)
    assert torch.equal(before[0], zero[0]) and torch.equal(before[1], zero[1])
    assert textured_seeds == []
    textured = cached(textured=1.0)
    assert len(textured_seeds) == 3
    assert torch.equal(textured[1], before[1]) and not torch.equal(textured[0], before[0])
    jittered = cached(jitter=0.3)
    assert torch.equal(jittered[1], before[1]) and not torch.equal(jittered[0], before[0])
    zoomed = cached(zoom=0.5)  # windows of larger scenes: same size, other content
    assert zoomed[1].shape == before[1].shape and not torch.equal(zoomed[1], before[1])
