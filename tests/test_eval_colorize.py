"""The colorizers' real-photo data and acceptance evaluation: the metrics on constructed images, the photo cache
built from a made-up package tree (the real download, `sgraffito data photos`, is never needed), PhotoCrops'
seeding, the tasks' real-photo option, and the evaluation's pass/fail logic with stand-in colorizers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine import metrics
from engine.composite import transfer_chroma
from engine.data import photos as ph
from engine.data.datasets import PhotoCrops
from engine.errors import InputError
from engine.train import eval_colorize as ev


def colourful(seed: int, shape=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (4, 4, 3)).astype(np.uint8), shape[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


# -- metrics ---------------------------------------------------------------------------------------------------


def test_chroma_psnr_of_a_gray_image_is_the_gray_baseline_whatever_its_lightness():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255  # sRGB red: a* 80.09, b* 67.20
    expected = 10 * math.log10(255**2 / ((80.09**2 + 67.20**2) / 2))
    for level in (0, 90, 200):
        assert metrics.chroma_psnr(np.full((8, 8, 3), level, np.uint8), red) == pytest.approx(expected, abs=0.05)


def test_chroma_psnr_is_infinite_for_the_true_colours_and_falls_as_they_drift():
    truth = colourful(0)
    assert metrics.chroma_psnr(truth, truth) == math.inf
    gray = np.repeat(ev.to_gray(truth)[:, :, None], 3, axis=2)
    # the true colours put back on the gray photo, as a colorizer delivers them: only 8-bit rounding is lost
    assert metrics.chroma_psnr(transfer_chroma(gray, truth), truth) > 40
    near = transfer_chroma(truth, np.clip(truth.astype(int) + [6, -4, 3], 0, 255).astype(np.uint8))
    assert metrics.chroma_psnr(near, truth) > metrics.chroma_psnr(gray, truth) + 10
    with pytest.raises(InputError):
        metrics.chroma_psnr(truth, truth[:10])


def test_colourfulness_is_zero_for_gray_and_grows_with_saturation():
    truth = colourful(1)
    gray = np.repeat(ev.to_gray(truth)[:, :, None], 3, axis=2)
    assert metrics.colorfulness(gray) == 0
    faded = (0.5 * truth + 0.5 * gray).astype(np.uint8)
    assert 0 < metrics.colorfulness(faded) < metrics.colorfulness(truth)


def test_hint_progress_is_the_share_of_the_way_to_the_hint():
    before = np.full((16, 16, 3), 128, np.uint8)
    region = np.zeros((16, 16), bool)
    region[4:12, 4:12] = True
    hint = (200, 90, 90)  # luma 128 up to rounding, so only chroma differs
    after = before.copy()
    after[region] = hint
    assert metrics.hint_progress(before, after, hint, region) == pytest.approx(1.0, abs=0.02)
    assert metrics.hint_progress(before, before, hint, region) == pytest.approx(0.0, abs=1e-9)
    half = before.copy()
    half[region] = (164, 109, 109)
    assert metrics.hint_progress(before, half, hint, region) == pytest.approx(0.5, abs=0.08)


# -- the photo cache -----------------------------------------------------------------------------------------------

COPYRIGHTS = {
    "plasma-workspace-wallpapers": "Files: *\nCopyright: 2014 KDE\nLicense: GPL-2+\n\nFiles: debian/*\nLicense: GPL-2+\n",
    "lomiri-wallpapers-16.04": "Files: warty-final-ubuntu.png\nLicense: CC-BY-SA-3.0\n\nFiles: 16.04/*\nLicense: Expat\n\n"
    + "".join(f"Files: 16.04/{Path(s.member).name}\nCopyright: A. Photographer,\n 2018\nLicense: CC-BY-4.0\n\n"
              for s in ph.SOURCES if s.package == "lomiri-wallpapers-16.04"),
    "lomiri-wallpapers-20.04": "Files: *\nLicense: CC-BY-SA-3.0\n",
    "stellarium-data": "Files: *\nCopyright: Fabien\nLicense: GPL-2+\n",
}


def fake_package_tree(root: Path, sources=ph.SOURCES) -> list[np.ndarray]:
    """Every source file as a small noisy image of its own hue (photo k has hue 12 k), shaped like the packages:
    panels with a transparent sky above a 200-row opaque band, plasma wallpapers with their metadata.json."""
    rng = np.random.default_rng(0)
    hues = []
    for k, source in enumerate(sources):
        hue = np.uint8([[[6 * k % 180, 200, 180]]])
        colour = cv2.cvtColor(hue, cv2.COLOR_HSV2RGB)[0, 0].astype(float)
        hues.append(colour)
        path = root / source.member
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (260, 120) if source.opaque_band else (90, 120)
        image = np.clip(colour + rng.normal(0, 20, (*shape, 3)), 0, 255).astype(np.uint8)
        if source.opaque_band:
            alpha = np.full((*shape, 1), 255, np.uint8)
            alpha[:60] = 0
            Image.fromarray(np.concatenate([image, alpha], axis=2)).save(path)
        else:
            Image.fromarray(image).save(path)
        if source.metadata:
            (root / source.metadata).write_text(json.dumps({"KPlugin": {"License": "LGPLv3",
                                                                        "Authors": [{"Name": "A. Artist"}]}}))
    for package, text in COPYRIGHTS.items():
        (root / "usr/share/doc" / package).mkdir(parents=True)
        (root / "usr/share/doc" / package / "copyright").write_text(text)
    return hues


def offline(monkeypatch) -> None:
    """No apt-cache look-ups (seconds each) and no real evaluation photos to compare with."""
    monkeypatch.setattr(ph, "_package_version", lambda package: "1.0-test")
    monkeypatch.setattr(ph, "evaluation_fingerprints", lambda: {})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    hues = fake_package_tree(root)
    folder = tmp_path_factory.mktemp("photos")
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline(monkeypatch)
        ph.install_photos(folder, root, log=lambda *_: None)
    return SimpleNamespace(folder=folder, hues=hues)


def test_the_cache_lists_each_photo_with_its_licence_and_a_fixed_held_out_split(cache):
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    entries = {e["file"]: e for e in manifest["photos"]}
    assert set(entries) == {s.name for s in ph.SOURCES}
    for entry in entries.values():
        image = Image.open(cache.folder / entry["file"])
        assert max(image.size) <= ph.MAX_SIDE and image.mode == "RGB"
    lomiri = next(e for e in entries.values() if e["package"] == "lomiri-wallpapers-16.04")
    assert lomiri["license"] == "CC-BY-4.0" and lomiri["copyright"] == "A. Photographer, 2018"  # its own paragraph
    plasma = next(e for e in entries.values() if e["package"] == "plasma-workspace-wallpapers")
    assert (plasma["license"], plasma["upstream_license"], plasma["author"]) == ("GPL-2+", "LGPLv3", "A. Artist")
    panel = next(e for e in entries.values() if e["package"] == "stellarium-data")
    assert Image.open(cache.folder / panel["file"]).size[1] == 200  # the sky cut off: only the opaque band
    held_out = (cache.folder / "held_out.txt").read_text().split()
    assert held_out == sorted(n for n, e in entries.items() if e["split"] == "held-out")
    assert 0.10 <= len(held_out) / len(entries) <= 0.15
    assert held_out == ph.held_out_names(list(reversed(list(entries))))  # the order they came in does not matter
    assert all((cache.folder / f"{p}.copyright").is_file() for p in COPYRIGHTS)
    assert manifest["packages"]["stellarium-data"]["version"] == "1.0-test"
    assert not any(bad in f"{s.package}/{s.member}" for s in ph.SOURCES for bad in ph.EVALUATION_ONLY)


def test_vector_art_gray_images_and_evaluation_photos_stay_out(tmp_path, monkeypatch):
    flat = np.zeros((120, 160, 3), np.uint8)
    flat[:, :80] = (200, 40, 40)
    assert "flat" in ph.screen_photo(flat)
    assert ph.screen_photo(np.repeat(ev.to_gray(colourful(2, (120, 160)))[:, :, None], 3, axis=2)) == "nearly gray"
    assert ph.screen_photo(colourful(2, (120, 160))) is None
    root = tmp_path / "root"
    some = (*ph.SOURCES[:3], next(s for s in ph.SOURCES if s.opaque_band))
    fake_package_tree(root, some)
    twin = some[0]
    copy = np.asarray(Image.open(root / twin.member).convert("RGB"))
    offline(monkeypatch)
    monkeypatch.setattr(ph, "evaluation_fingerprints", lambda: {"mate/Twin.jpg": ph._fingerprint(copy)})
    messages = []
    ph.install_photos(tmp_path / "cache", root, some, log=messages.append)
    assert twin.name not in {e["file"] for e in ph.photo_entries(cache=tmp_path / "cache")}
    assert any("mate/Twin.jpg" in m for m in messages)
    with pytest.raises(InputError, match="held out"):
        ph.install_photos(tmp_path / "c2", root, sources=(ph.Source("mate-backgrounds", "x.jpg", "m/x.png"),))


def test_the_data_photos_command_fills_the_user_cache_and_draws_a_contact_sheet(tmp_path, monkeypatch):
    from app.cli import main

    root = tmp_path / "root"
    fake_package_tree(root)
    offline(monkeypatch)
    assert main(["data", "photos", "--from", str(root)]) == 0
    cache = ph.photo_dir()
    assert cache.is_relative_to(tmp_path / "user-data")  # the user data folder (the tests' own), not the checkout
    assert len(ph.photo_entries(cache=cache)) == len(ph.SOURCES)
    assert (cache / "contact_sheet.png").is_file() and (cache / "held_out.txt").is_file()


def test_a_missing_cache_says_what_to_run(tmp_path):
    with pytest.raises(InputError, match="sgraffito data photos"):
        PhotoCrops(32, cache=tmp_path)


# -- PhotoCrops ------------------------------------------------------------------------------------------------


def photo_ids(cache, stream, n=40) -> list[int]:
    """Which cached photo each crop came from, by its mean colour (each fake photo has its own hue)."""
    train = [e["file"] for e in sorted(ph.photo_entries("train", cache.folder), key=lambda e: e["file"])]
    order = {s.name: k for k, s in enumerate(ph.SOURCES)}
    ids = []
    for item in itertools.islice(iter(stream), n):
        mean = ((item["image"] + 1) * 127.5).mean(dim=(1, 2)).numpy()
        k = min(range(len(train)), key=lambda i: np.abs(cache.hues[order[train[i]]] - mean).sum())
        ids.append(k)
    return ids


def test_photo_crops_repeat_per_seed_rank_worker_and_step_and_ranks_take_disjoint_photos(cache, monkeypatch):
    def draw(seed=0, rank=0, world=1, start=0, worker=None):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker and SimpleNamespace(id=worker))
        stream = PhotoCrops(24, cache=cache.folder).place(seed, rank, world, start)
        return torch.stack([item["image"] for item in itertools.islice(iter(stream), 6)])

    first = draw()
    assert first.shape == (6, 3, 24, 24) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(draw(), first)
    for other in ({"seed": 1}, {"start": 100}, {"worker": 1}, {"rank": 1, "world": 2}):
        assert not torch.equal(draw(**other), first), other
    rank0 = set(photo_ids(cache, PhotoCrops(16, cache=cache.folder).place(3, 0, 2)))
    rank1 = set(photo_ids(cache, PhotoCrops(16, cache=cache.folder).place(3, 1, 2)))
    assert rank0 and rank1 and rank0.isdisjoint(rank1)
    assert all(k % 2 == 0 for k in rank0) and all(k % 2 == 1 for k in rank1)
    held_out = {e["file"] for e in ph.photo_entries("held-out", cache.folder)}
    assert len(PhotoCrops(16, cache=cache.folder).photos) == len(ph.SOURCES) - len(held_out)


def test_the_tasks_mix_in_real_photos_only_when_asked(cache):
    from engine.models.pixelcnn import PixelCNNConfig
    from engine.train.tasks_coltran import ScenesAndPhotos
    from engine.train.tasks_pixelcnn import ColourCrops

    cfg = PixelCNNConfig.from_dict({"work_size": 64, "downsample": 4})
    photos = PhotoCrops(32, cache=cache.folder, scale=(0.4, 0.8))

    def items(stream, n=4):
        return [item["ab"] for item in itertools.islice(iter(stream.place(5)), n)]

    shipped = items(ColourCrops(cfg, 32, 0.5, [], 0.0))
    assert all(torch.equal(a, b) for a, b in zip(items(ColourCrops(cfg, 32, 0.5, [], 0.0, real_photos=photos)), shipped))
    real = items(ColourCrops(cfg, 32, 0.5, [], 0.0, real_photos=photos, real_fraction=1.0))
    assert not any(torch.equal(a, b) for a, b in zip(real, shipped))
    stream = ScenesAndPhotos(PhotoCrops(256, cache=cache.folder), 1.0).place(0)
    item = next(iter(stream))
    assert item["rgb256"].shape == (256, 256, 3) and item["gray64"].shape == (64, 64)


# -- the evaluation ------------------------------------------------------------------------------------------------


def oracle(truth: np.ndarray):
    """A stand-in colorizer that knows the true colours and paints a hint's colour inside its disk."""

    def colorize(gray, seeds, hints):
        image = truth.copy()
        for hint in hints:
            image[ev.disk(gray.shape, hint.x, hint.y, hint.radius)] = hint.rgb
        return [transfer_chroma(gray, image) for _ in seeds]

    return colorize


def gray_colorizer(gray, seeds, hints):
    return [np.repeat(gray[:, :, None], 3, axis=2) for _ in seeds]


def test_the_true_colours_pass_every_criterion_and_gray_fails_them():
    truths = [colourful(seed, (60, 80)) for seed in range(3)]
    perfect = ev.summarise([ev.evaluate_photo(oracle(t), t) for t in truths])
    assert all(perfect["pass"].values()), perfect
    assert perfect["chroma_psnr_one_sample"] > perfect["chroma_psnr_gray"] + 10
    assert perfect["colourfulness_ratio"] == pytest.approx(1.0, abs=0.05)
    gray = ev.summarise([ev.evaluate_photo(gray_colorizer, t) for t in truths])
    assert not any(gray["pass"].values()), gray
    assert gray["chroma_psnr_one_sample"] == pytest.approx(gray["chroma_psnr_gray"])


def test_the_hint_colour_keeps_the_region_luma_and_differs_from_its_colour():
    for luma, avoid in ((128.0, (200, 60, 60)), (40.0, (30, 40, 60)), (220.0, (220, 220, 220))):
        colour = ev.hint_colour(luma, np.array(avoid))
        assert abs(float(ev.to_gray(np.uint8([[colour]]))[0, 0]) - luma) <= 2
        distance = np.linalg.norm(metrics.lab_chroma(np.uint8([[colour]])) - metrics.lab_chroma(np.uint8([[avoid]])))
        assert distance > 15, (luma, avoid, colour)


def test_the_evaluation_runs_a_model_folder_and_writes_a_card_block(cache, tmp_path, monkeypatch):
    from engine.models.pixelcnn import PixelCNNColorizer, PixelCNNConfig
    from engine.model_store import save_model_dir

    cfg = PixelCNNConfig.from_dict({"channels": 8, "layers": 1, "cond_channels": 8, "embed_channels": 8,
                                    "input_embed": 4, "work_size": 32, "downsample": 4, "bins": 4})
    torch.manual_seed(0)
    folder = save_model_dir(tmp_path / "tiny", {"model": PixelCNNColorizer(cfg).state_dict()},
                            {"kind": "pixelcnn", "title": "tiny", **cfg.to_dict()})
    result = ev.evaluate(folder, ("held-out",), size=32, limit=2, samples=2, cache=cache.folder, log=lambda *_: None)
    summary = result["sets"]["held-out"]
    assert summary["photos"] == sorted(summary["photos"]) and len(summary["photos"]) == 2
    assert set(summary["pass"]) == {"one_sample_above_gray", "best_at_least_1dB_above_gray",
                                    "colourfulness_within_25pct", "hint_moves_halfway"}
    block = ev.markdown(result)
    assert "best of 2" in block and Path(summary["photos"][0]).name in block
    with pytest.raises(InputError, match="not a colorizer"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text('{"kind": "asset"}')
        ev.load_colorizer(tmp_path / "other")


def test_the_cards_held_out_photos_are_the_held_out_split_only_at_4_to_3(cache, monkeypatch, tmp_path):
    """engine.data.photos.held_out_photos, the real photos of the ASSET and ASAPNet cards: the cache's held-out
    split (never a training photo) plus the mate landscapes when installed, each 512 x 384."""
    monkeypatch.setenv("SGRAFFITO_PHOTOS", str(cache.folder))
    monkeypatch.setattr(ph, "MATE_PHOTOS", tmp_path / "no-mate")
    photos = ph.held_out_photos()
    held_out = (cache.folder / "held_out.txt").read_text().split()
    assert sorted(photos) == held_out
    assert all(rgb.shape == (384, 512, 3) for rgb in photos.values())
    mate = tmp_path / "mate" / "nature"
    mate.mkdir(parents=True)
    Image.fromarray(np.full((300, 900, 3), 90, np.uint8)).save(mate / "Dune.jpg")  # wider than 4:3: centre crop
    monkeypatch.setattr(ph, "MATE_PHOTOS", tmp_path / "mate")
    photos = ph.held_out_photos()
    assert sorted(photos) == sorted(held_out + ["mate/Dune.jpg"]) and photos["mate/Dune.jpg"].shape == (384, 512, 3)
