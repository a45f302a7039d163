import json

import numpy as np

from engine.imageio import load_label_map
from engine.labels import load_label_set
from engine.paths import assets_dir


def test_ade20k_150_follows_the_scene_parsing_order_and_palette():
    ade = load_label_set("ade20k-150")
    assert len(ade.labels) == 150 and ade.unlabeled == 0 and ade.name_of(0) == "unlabeled"
    # objectInfo150 order: 1 wall, 3 sky, 5 tree, 10 grass, 17 mountain, 22 water, 27 sea, 61 river, 150 flag
    expected = {"wall": 1, "sky": 3, "tree": 5, "grass": 10, "mountain": 17, "water": 22, "sea": 27, "river": 61,
                "lake": 129, "flag": 150}
    assert {name: ade.id_of(name) for name in expected} == expected
    assert ade.by_id[1].color == (120, 120, 120) and ade.by_id[3].color == (6, 230, 230)
    assert {ade.name_of(i) for i in ade.subsets["landscape"]} >= {"sky", "mountain", "sea", "grass", "tree"}


def test_cityscapes_has_label_ids_with_official_colours_and_train_ids():
    cityscapes = load_label_set("cityscapes")
    assert [label.id for label in cityscapes.labels] == list(range(34))
    assert cityscapes.by_id[7].name == "road" and cityscapes.by_id[7].color == (128, 64, 128)
    assert cityscapes.by_id[26].name == "car" and cityscapes.by_id[26].color == (0, 0, 142)
    raw = json.loads((assets_dir() / "labels" / "cityscapes.json").read_text())
    train_ids = {entry["name"]: entry["train_id"] for entry in raw["labels"]}
    assert train_ids["road"] == 0 and train_ids["sky"] == 10 and train_ids["bicycle"] == 18
    assert sorted(t for t in train_ids.values() if t != 255) == list(range(19))
    assert len(cityscapes.subsets["train"]) == 19


def test_cmp_facades_has_the_twelve_base_classes():
    facades = load_label_set("cmp-facades")
    names = [facades.by_id[i].name for i in range(1, 13)]
    assert names == ["background", "facade", "window", "door", "cornice", "sill", "balcony", "blind", "deco",
                     "molding", "pillar", "shop"]
    assert len({label.color for label in facades.labels}) == 12


def test_colour_coded_cityscapes_map_reads_back(tmp_path):
    from PIL import Image

    cityscapes = load_label_set("cityscapes")
    ids = np.full((20, 30), cityscapes.id_of("road"), np.uint16)
    ids[:6] = cityscapes.id_of("sky")
    ids[6:9, 10:20] = cityscapes.id_of("car")
    ids[0, 0] = 0
    path = tmp_path / "city_color.png"
    Image.fromarray(cityscapes.colorize(ids)).save(path)
    assert (load_label_map(path, cityscapes) == ids).all()


def test_shipped_samples_open_and_the_landscape_label_map_fits():
    from engine.imageio import load_photo

    samples = assets_dir() / "samples"
    photos = {path.name: load_photo(path) for path in samples.glob("*.jpg")}
    assert sum(not photo.is_grayscale for photo in photos.values()) >= 3
    assert photos["camera.jpg"].is_grayscale
    assert all(path.stat().st_size < 1_000_000 for path in samples.glob("*.jpg"))
    licences = (samples / "LICENSES.md").read_text()
    assert all(name in licences for name in photos)
    coco = load_label_set("coco-stuff-182")
    labels = load_label_map(samples / "summer-palace.labels.png", coco, size=photos["summer-palace.jpg"].size)
    present = {coco.name_of(i) for i in np.unique(labels)}
    assert present == {"sky-other", "tree", "water-other", "building-other"}
