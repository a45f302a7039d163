"""`sgraffito import asapnet` and `sgraffito translate` on tiny synthetic checkpoints with the official layout."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from app.cli import main
from engine.model_store import find_model, load_model_dir
from engine.models.asapnet import ASAPNetConfig, ASAPNetsGenerator
from engine.pipelines.asapnet import ASAPNetRenderer

TINY = dict(lr_width=16, lr_max_width=64, lr_depth=2, hr_width=16, hr_depth=5)


def official_pth(path, cfg, seed=0):
    """A netG state dict saved the way upstream's util.save_network does (torch.save of a plain state dict)."""
    torch.manual_seed(seed)
    model = ASAPNetsGenerator(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3 if p.ndim > 1 else 0.1)
    torch.save(model.state_dict(), path)
    return model.eval()


def test_import_facades_checkpoint_then_translate(tmp_path, capsys):
    cfg = ASAPNetConfig(in_channels=13, downsampling=32, padding="reflection", **TINY)
    reference = official_pth(tmp_path / "latest_net_G.pth", cfg)
    assert main(["import", "asapnet", str(tmp_path / "latest_net_G.pth"), "--hr-width", "16", "--hr-depth", "5"]) == 0
    info = find_model("asapnet-facades", "asapnet")
    config, weights = load_model_dir(info.path)
    assert config["dataset"] == "facades" and config["label_set"] == "cmp-facades"
    assert ASAPNetConfig.from_dict(config["generator"]) == cfg
    assert config["native_size"] == [512, 512]

    labels = np.ones((80, 100), np.uint8)  # not a multiple of S = 32: padded, then cropped
    labels[20:60, 30:70] = 3
    labels[:10] = 12
    Image.fromarray(labels, mode="L").save(tmp_path / "facade.png")
    out = tmp_path / "out.png"
    assert main(["translate", str(tmp_path / "facade.png"), "--model", "asapnet-facades", "--out", str(out)]) == 0
    image = np.asarray(Image.open(out))
    assert image.shape == (80, 100, 3)

    padded = np.pad(labels, ((0, 16), (0, 28)), mode="edge")
    x = torch.zeros(1, 13, 96, 128).scatter_(1, torch.from_numpy(padded).long()[None, None], 1.0)
    with torch.no_grad():
        want = reference(x)[0, :, :80, :100]
    want = ((want + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()
    assert np.abs(image.astype(int) - want).max() <= 1
    assert len({tuple(image[y, x]) for y, x in [(5, 5), (40, 50), (75, 95)]}) == 3  # the labels show


def test_cityscapes_checkpoint_uses_the_instance_edge_channel(tmp_path):
    cfg = ASAPNetConfig(in_channels=36, downsampling=16, lr_instance=True, **TINY)
    official_pth(tmp_path / "city.pth", cfg)
    assert main(["import", "asapnet", str(tmp_path / "city.pth"), "--name", "city", "--hr-width", "16",
                 "--hr-depth", "5"]) == 0
    renderer = ASAPNetRenderer.load("city")
    assert renderer.encoding.instance_edge and renderer.encoding.channels == 36
    labels = np.full((64, 128), 7, np.uint8)  # road
    labels[:20] = 23  # sky
    x = renderer.encoding.encode(labels)
    assert x.shape == (1, 36, 64, 128)
    assert x[0, 35].sum() == 2 * 128  # the edge marks both rows of the road/sky boundary
    assert renderer.render(labels).shape == (64, 128, 3)


def test_import_errors_name_the_file_and_the_problem(tmp_path, capsys):
    cfg = ASAPNetConfig(in_channels=13, downsampling=16, **TINY)
    official_pth(tmp_path / "g.pth", cfg)
    code = main(["import", "asapnet", str(tmp_path / "g.pth"), "--dataset", "coco", "--hr-width", "16",
                 "--hr-depth", "5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "g.pth" in err and "13 input channels" in err and "184" in err

    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["import", "asapnet", str(tmp_path / "broken.pth")]) == 2
    assert "broken.pth" in capsys.readouterr().err


def test_translate_rejects_unknown_ids_and_bad_sizes(tmp_path, capsys):
    cfg = ASAPNetConfig(in_channels=13, downsampling=16, **TINY)
    official_pth(tmp_path / "g.pth", cfg)
    assert main(["import", "asapnet", str(tmp_path / "g.pth"), "--dataset", "facades", "--name", "f",
                 "--hr-width", "16", "--hr-depth", "5"]) == 0
    Image.fromarray(np.full((32, 32), 40, np.uint8), mode="L").save(tmp_path / "bad.png")
    assert main(["translate", str(tmp_path / "bad.png"), "--model", "f", "--out", str(tmp_path / "o.png")]) == 2
    assert "bad.png" in capsys.readouterr().err
    Image.fromarray(np.full((32, 32), 2, np.uint8), mode="L").save(tmp_path / "ok.png")
    assert main(["translate", str(tmp_path / "ok.png"), "--model", "f", "--size", "64", "--out",
                 str(tmp_path / "o.png")]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["translate", str(tmp_path / "ok.png"), "--model", "f", "--size", "96x48", "--out",
                 str(tmp_path / "o.png")]) == 0
    assert Image.open(tmp_path / "o.png").size == (96, 48)


def test_large_maps_run_the_lr_stream_near_native_scale_and_the_mlps_at_full_resolution():
    from engine.models.asapnet import dataset_preset, model_config

    torch.manual_seed(0)
    preset = dataset_preset("landscape")
    cfg = ASAPNetConfig(in_channels=preset.encoding.channels, downsampling=4, learned_ds_factor=4, lr_width=8,
                        lr_max_width=16, lr_depth=1, hr_width=8)
    model = ASAPNetsGenerator(cfg).eval()
    renderer = ASAPNetRenderer(model_config(cfg, preset, "tiny"), model.state_dict())
    assert renderer.config["native_size"] == [64, 64]
    assert [renderer.lr_factor(s, s) for s in (48, 64, 100, 128, 260)] == [1, 1, 1, 2, 4]
    labels = np.full((128, 96), 156, np.uint8)  # sky-other
    labels[70:, :] = 123  # grass
    labels[90:100, 10:30] = 154  # a thin band: finer than the LR grid
    image = renderer.render(labels)
    x = preset.encoding.encode(labels)
    with torch.no_grad():
        params = model.lowres(preset.encoding.encode(labels[1::2, 1::2]))
        want = model.highres_stream(x, F.interpolate(params, scale_factor=2, mode="bilinear", align_corners=False))[0]
    want = ((want + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()
    assert image.shape == (128, 96, 3) and np.abs(image.astype(int) - want).max() <= 1
    assert not np.array_equal(image, renderer.render(labels, lr_factor=1))


def _tiny_landscape_model(name="tiny", **extensions):
    from engine.model_store import new_model_dir, save_model_dir
    from engine.models.asapnet import dataset_preset, model_config

    torch.manual_seed(0)
    preset = dataset_preset("landscape")
    cfg = ASAPNetConfig(in_channels=preset.encoding.channels, downsampling=16, lr_width=8, lr_max_width=16,
                        lr_depth=1, hr_width=8, **extensions)
    model = ASAPNetsGenerator(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    save_model_dir(new_model_dir(name), {"netG": model.state_dict()}, model_config(cfg, preset, "tiny"))


@pytest.mark.parametrize("photo_kind", ["none", "photo"])
def test_backend_translates_label_maps_and_blends_edits_into_photos(photo_kind):
    from engine.jobs import JobState, Request, Runtime

    _tiny_landscape_model()
    before = np.full((96, 160), 156, np.uint16)  # sky-other
    before[60:] = 123  # grass
    after = before.copy()
    after[70:90, 40:100] = 154  # sea
    rng = np.random.default_rng(0)
    photo = (np.zeros((96, 160, 3), np.uint8) if photo_kind == "none"
             else rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))
    runtime = Runtime(device="cpu")
    mode = "translate" if photo_kind == "none" else "edit"  # the request says it; no guessing from the pixels
    job = runtime.submit(Request(backend="asapnet", model="tiny", mode=mode, photo=photo, labels_before=before,
                                 labels_after=after, k=3))
    finished = job.wait(60)
    runtime.shutdown()
    assert finished and job.state == JobState.DONE, job.error
    (candidate,) = job.candidates
    renderer = ASAPNetRenderer.load("tiny")
    if photo_kind == "none":  # translate: the whole map rendered
        assert candidate.region == (0, 0, 160, 96) and candidate.info["mode"] == "translate"
        np.testing.assert_array_equal(candidate.image, renderer.render(after))
    else:  # edit: only around the changed pixels, the photo kept far from them
        x0, y0, x1, y1 = candidate.region
        assert candidate.info["mode"] == "edit" and x0 <= 40 and x1 >= 100 and y0 <= 70 and y1 >= 90
        result = candidate.compose(photo)
        assert np.abs(result[75:85, 50:90].astype(int) - photo[75:85, 50:90]).mean() > 20
        assert np.array_equal(result[:8, :8], photo[:8, :8])


def test_a_model_with_noise_gives_one_candidate_per_seed():
    from engine.jobs import JobState, Request, Runtime

    _tiny_landscape_model("tiny-noise", hr_coor=None, noise_channels=2, tile_blend=True)
    labels = np.full((64, 96), 156, np.uint16)  # sky-other
    labels[32:] = 123  # grass
    runtime = Runtime(device="cpu")
    job = runtime.submit(Request(backend="asapnet", model="tiny-noise", mode="translate", labels_before=labels,
                                 labels_after=labels, photo=np.zeros((64, 96, 3), np.uint8), k=3, seed=5))
    finished = job.wait(60)
    runtime.shutdown()
    assert finished and job.state == JobState.DONE, job.error
    assert [c.seed for c in job.candidates] == [5, 6, 7]
    renderer = ASAPNetRenderer.load("tiny-noise")
    assert renderer.stochastic and not job.candidates[0].info["deterministic"]
    for candidate in job.candidates:  # each reproducible from its seed alone
        np.testing.assert_array_equal(candidate.image, renderer.render(labels, seed=candidate.seed))
    a, b = (c.image.astype(int) for c in job.candidates[:2])
    assert np.abs(a - b).mean() > 1  # other noise, other texture


def test_translate_seed_picks_the_noise_of_a_stochastic_model(tmp_path, capsys):
    _tiny_landscape_model("tiny-noise-cli", hr_coor=None, noise_channels=2, tile_blend=True)
    labels = np.full((48, 64), 156, np.uint8)  # sky-other
    labels[24:] = 123  # grass
    Image.fromarray(labels, mode="L").save(tmp_path / "map.png")
    images = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / f"{name}.png"
        assert main(["translate", str(tmp_path / "map.png"), "--model", "tiny-noise-cli", "--seed", str(seed),
                     "--out", str(out)]) == 0
        images[name] = np.asarray(Image.open(out)).astype(int)
    assert np.array_equal(images["a"], images["b"]) and np.abs(images["a"] - images["c"]).mean() > 1
    capsys.readouterr()
    assert main(["translate", str(tmp_path / "map.png"), "--model", "tiny-noise-cli", "--samples", "3",
                 "--out", str(tmp_path / "d.png")]) == 2  # one image per map: the error points to --seed
    assert "--seed picks the texture" in capsys.readouterr().err and not (tmp_path / "d.png").exists()
