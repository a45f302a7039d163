"""The synthetic landscape generator: determinism, label validity, water that mirrors its surroundings."""

import numpy as np
import pytest

from engine.data.landscapes import EVAL_SEEDS, TRAIN_SEEDS, generate_scene, ids, water_ids
from engine.errors import InputError
from engine.labels import load_label_set
from engine.metrics import reflection_score


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = generate_scene(123), generate_scene(123), generate_scene(124)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.meta == b.meta
    assert not np.array_equal(a.image, c.image)


def test_sizes_and_non_square_keep_the_layout():
    small, large = generate_scene(7, 256), generate_scene(7, 512)
    assert small.image.shape == (256, 256, 3) and large.labels.shape == (512, 512)
    assert small.image.dtype == np.uint8 and small.labels.dtype == np.uint8
    # the same seed at twice the size is the same scene: labels agree on nearly every pixel
    assert (large.labels[::2, ::2] == small.labels).mean() > 0.9
    wide = generate_scene(7, (256, 384))
    assert wide.image.shape == (256, 384, 3) and wide.labels.shape == (256, 384)
    with pytest.raises(InputError):
        generate_scene(0, 16)


def test_labels_hold_only_known_generator_ids():
    label_set = load_label_set("coco-stuff-182")
    painted = set(vars(ids()).values())
    seen = set()
    for seed in range(40):
        labels = generate_scene(seed, 96).labels
        label_set.check_ids(labels)
        seen |= set(np.unique(labels).tolist())
    assert seen <= painted
    # the variety a landscape model needs: sky, clouds, mountains, snow, water, vegetation, ground
    names = {label_set.name_of(i) for i in seen}
    assert {"sky-other", "clouds", "mountain", "snow", "grass", "tree", "sand"} <= names
    assert names & {"sea", "river", "water-other"}


def test_held_out_split_is_disjoint_from_training():
    overlap = range(max(EVAL_SEEDS.start, TRAIN_SEEDS.start), min(EVAL_SEEDS.stop, TRAIN_SEEDS.stop))
    assert len(overlap) == 0 and len(EVAL_SEEDS) >= 100


def _water_below_scenery(scene) -> bool:
    i = ids()
    water = np.isin(scene.labels, water_ids())
    if water.mean() < 0.05:
        return False
    top = int(np.flatnonzero(water.any(axis=1))[0])
    above = scene.labels[max(0, top - scene.labels.shape[0] // 4) : top]
    return bool(np.isin(above, (i.mountain, i.tree, i.hill, i.snow)).mean() > 0.05)


def test_water_reflects_what_stands_above_it_and_a_control_does_not():
    rng = np.random.default_rng(0)
    scenes = [generate_scene(seed, 128) for seed in range(40)]
    reflecting = [s for s in scenes if _water_below_scenery(s)]
    # a realistic share: lakes under mountains and tree lines are common, but not every scene has one
    assert 0.25 <= len(reflecting) / len(scenes) <= 0.75
    for scene in reflecting:
        assert reflection_score(scene.image, scene.labels) > 0.6, scene.meta
        water = np.isin(scene.labels, water_ids())
        shuffled = scene.image.copy()
        shuffled[water] = scene.image[water][rng.permutation(int(water.sum()))]
        assert reflection_score(shuffled, scene.labels) < 0.3
        flat = scene.image.copy()
        flat[water] = scene.image[water].mean(axis=0).astype(np.uint8)
        assert reflection_score(flat, scene.labels) < 0.3


def test_winter_whitens_and_sunset_tints():
    scenes = [generate_scene(seed, 96) for seed in range(80)]
    i = ids()
    snow_share = {s: np.mean([(x.labels == i.snow).mean() for x in scenes if x.meta["season"] == s])
                  for s in ("winter", "summer")}  # fmt: skip
    assert snow_share["winter"] > 3 * snow_share["summer"]

    def water_redness(x):
        water = np.isin(x.labels, water_ids())
        rgb = x.image[water].astype(float)
        return (rgb[:, 0] - rgb[:, 2]).mean()

    sunset = [water_redness(x) for x in scenes if x.meta["time_of_day"] == "sunset" and x.meta["water"]]
    day = [water_redness(x) for x in scenes if x.meta["time_of_day"] == "day" and x.meta["water"]]
    assert sunset and day and np.mean(sunset) > np.mean(day) + 10


def test_data_preview_writes_pairs_that_read_back(tmp_path, capsys):
    from PIL import Image

    from app.cli import main
    from engine.imageio import load_label_map

    assert main(["data", "preview", "--n", "3", "--size", "64", "--seed", "5", "--out", str(tmp_path)]) == 0
    scene = generate_scene(6, 64)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "6.png")), scene.image)
    label_set = load_label_set("coco-stuff-182")
    assert np.array_equal(load_label_map(tmp_path / "6_labels.png", label_set), scene.labels)
    assert np.array_equal(load_label_map(tmp_path / "6_labels_color.png", label_set), scene.labels)
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png"))
    assert sheet.shape[0] > 2 * 64 and sheet.shape[1] > 3 * 64
    assert main(["data", "preview", "--n", "0", "--out", str(tmp_path)]) == 2
