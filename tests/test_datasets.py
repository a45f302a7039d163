"""Dataset readers: synthetic scenes, dataset folder layouts, colorization photo folders, remapping, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.datasets import LabelledFolder, LabelRemap, LandscapeDataset, PairTransform, PhotoFolder, find_pairs
from engine.data.landscapes import EVAL_SEEDS, generate_scene
from engine.errors import InputError
from engine.labels import load_label_set


def _write_pair(image_path, label_path, seed=0, size=64, label_values=None):
    scene = generate_scene(seed, size)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(image_path)
    labels = scene.labels if label_values is None else np.full(scene.labels.shape, label_values, np.uint8)
    Image.fromarray(labels).save(label_path)
    return scene


def test_landscape_items_are_seed_indexed_tensors():
    data = LandscapeDataset(size=64, length=3, seeds=EVAL_SEEDS)
    item = data[1]
    scene = generate_scene(EVAL_SEEDS[1], 64)
    assert item["image"].shape == (3, 64, 64) and item["image"].min() >= -1 and item["image"].max() <= 1
    assert torch.equal(item["labels"], torch.from_numpy(scene.labels.astype(np.int64)))
    assert LandscapeDataset(size=64, length=3, dtype="uint8")[0]["image"].dtype == torch.uint8
    cached = LandscapeDataset(size=64, length=3, seeds=EVAL_SEEDS, cache=True)
    assert torch.equal(cached[1]["image"], item["image"]) and list(cached.cache) == [EVAL_SEEDS[1]]
    assert torch.equal(cached[1]["labels"], item["labels"])
    with pytest.raises(InputError):
        LandscapeDataset(length=10, seeds=range(5))


def test_layouts_are_recognised(tmp_path):
    coco = tmp_path / "coco"
    _write_pair(coco / "images/val2017/000001.jpg", coco / "stuffthingmaps/val2017/000001.png")
    ade = tmp_path / "ade"
    _write_pair(ade / "images/training/ADE_1.jpg", ade / "annotations/training/ADE_1.png", label_values=3)
    city = tmp_path / "city"
    _write_pair(city / "leftImg8bit/val/bonn/bonn_000000_leftImg8bit.png",
                city / "gtFine/val/bonn/bonn_000000_gtFine_labelIds.png", label_values=23)
    (city / "gtFine/val/bonn/bonn_000000_gtFine_color.png").write_bytes(b"other gtFine files are ignored")
    assert find_pairs(coco)[1:] == ("coco-stuff", "coco-stuff-182")
    assert find_pairs(ade)[1:] == ("ade20k", "ade20k-150")
    assert find_pairs(city)[1:] == ("cityscapes", "cityscapes")
    assert len(find_pairs(coco, split="val2017")[0]) == 1


def test_remapping_by_label_name_into_coco_stuff(tmp_path):
    ade = tmp_path / "ade"
    ade_set = load_label_set("ade20k-150")
    sky = ade_set.id_of("sky")
    _write_pair(ade / "images/training/a.jpg", ade / "annotations/training/a.png", label_values=sky)
    data = LabelledFolder(ade, target_set="coco-stuff-182", transform=PairTransform(crop=32, flip=True))
    item = data[0]
    assert item["image"].shape == (3, 32, 32) and item["labels"].shape == (32, 32)
    coco = load_label_set("coco-stuff-182")
    # ADE's "sky" is COCO-Stuff's "sky-other": found through the synonyms
    assert int(item["labels"][0, 0]) == coco.id_of("sky-other")
    remap = LabelRemap("ade20k-150", "coco-stuff-182")
    assert "grass" in remap.mapped and "tree" in remap.mapped and "lake" in remap.mapped
    painting = ade_set.id_of("painting")  # nothing like it in COCO-Stuff
    assert remap(np.array([[painting]]))[0, 0] == coco.unlabeled
    custom = LabelRemap("ade20k-150", "coco-stuff-182", extra={"painting": "wall-other"})
    assert custom(np.array([[painting]]))[0, 0] == coco.id_of("wall-other")
    city = LabelRemap("cityscapes", "coco-stuff-182")
    cityscapes = load_label_set("cityscapes")
    assert city(np.array([[cityscapes.id_of("vegetation")]]))[0, 0] == coco.id_of("tree")
    back = LabelRemap("coco-stuff-182", "ade20k-150")
    assert back(np.array([[coco.id_of("sky-other")]]))[0, 0] == ade_set.id_of("sky")


def test_crop_and_flip_keep_image_and_labels_aligned():
    # every pixel carries its own coordinates, in the image and in the labels alike
    ys, xs = np.mgrid[0:128, 0:96]
    image = np.stack([ys, xs, (ys + xs) % 256], axis=-1).astype(np.uint8)
    labels = ((ys * 3 + xs * 5) % 256).astype(np.uint8)
    transform = PairTransform(crop=64, flip=True)
    flipped = 0
    for k in range(12):
        img, lab = transform(np.random.default_rng(k), image, labels)
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        assert np.array_equal(lab, ((img[..., 0].astype(int) * 3 + img[..., 1].astype(int) * 5) % 256))
        flipped += int(img[0, 0, 1] > img[0, -1, 1])
    assert 0 < flipped < 12


def test_unpaired_and_unreadable_files_are_named(tmp_path):
    root = tmp_path / "mine"
    _write_pair(root / "images/a.png", root / "labels/a.png")
    _write_pair(root / "images/b.png", root / "labels/b.png")
    (root / "labels/b.png").unlink()
    with pytest.raises(InputError, match=r"1 image\(s\) without a label map \(e\.g\. .*b\.png"):
        find_pairs(root)
    (root / "images/b.png").unlink()
    (root / "labels/c.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"label map\(s\) without an image .*c\.png"):
        find_pairs(root)
    (root / "images/c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = LabelledFolder(root)
    with pytest.raises(InputError, match="c.png"):
        data[data.pairs.index((root / "images/c.png", root / "labels/c.png"))]
    with pytest.raises(InputError, match="not a recognised dataset layout"):
        find_pairs(tmp_path)
    with pytest.raises(InputError, match="no such dataset folder"):
        find_pairs(tmp_path / "missing")


def test_label_ids_outside_the_set_are_refused(tmp_path):
    root = tmp_path / "city"
    _write_pair(root / "leftImg8bit/train/x/x_0_leftImg8bit.png", root / "gtFine/train/x/x_0_gtFine_labelIds.png",
                label_values=200)
    with pytest.raises(InputError, match="ids outside"):
        LabelledFolder(root)[0]


def test_photo_folder_for_colorization(tmp_path):
    scene = generate_scene(1, 64)
    (tmp_path / "sub").mkdir()
    Image.fromarray(scene.image).save(tmp_path / "sub/colour.jpg")
    Image.fromarray(scene.image[..., 0]).save(tmp_path / "gray.png")
    photos = PhotoFolder(tmp_path, transform=PairTransform(crop=48))
    assert len(photos) == 1 and [p.name for p in photos.skipped_gray] == ["gray.png"]
    assert photos[0]["image"].shape == (3, 48, 48) and "labels" not in photos[0]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(InputError, match="broken.jpg"):
        PhotoFolder(tmp_path)
    (tmp_path / "broken.jpg").unlink()
    (tmp_path / "sub/colour.jpg").unlink()
    with pytest.raises(InputError, match="no colour photos"):
        PhotoFolder(tmp_path)


def test_folder_items_get_a_fresh_crop_per_draw_from_torch_generator(tmp_path):
    Image.fromarray(generate_scene(2, 128).image).save(tmp_path / "colour.png")
    photos = PhotoFolder(tmp_path, transform=PairTransform(crop=32, flip=False))
    torch.manual_seed(0)
    draws = [photos[0]["image"] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # not the same crop in every epoch
    torch.manual_seed(0)
    assert all(torch.equal(a, photos[0]["image"]) for a in draws)  # but reproducible (a resume restores the state)


def test_seeded_stream_draws_disjoint_scenes_per_rank_and_new_ones_per_start():
    from engine.data.datasets import SeededStream

    class Seeds(SeededStream):
        def __iter__(self):
            rng = self.rng()
            while True:
                yield self.train_seed(rng)

    def draw(**place):
        return [s for _, s in zip(range(200), Seeds().place(**place))]

    rank0, rank1 = draw(seed=3, rank=0, world=2), draw(seed=3, rank=1, world=2)
    assert all(s % 2 == 0 for s in rank0) and all(s % 2 == 1 for s in rank1)
    assert draw(seed=3, rank=0, world=2) == rank0  # reproducible...
    assert set(draw(seed=3, rank=0, world=2, start=500)).isdisjoint(rank0)  # ...and a later start draws anew
    assert set(draw(seed=4, rank=0, world=2)).isdisjoint(rank0)
