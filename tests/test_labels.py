import numpy as np
import pytest

from app.cli import main
from engine.errors import InputError
from engine.labels import available_sets, load_label_set


def test_coco_stuff_182_uses_the_landscape_ids_of_asset():
    coco = load_label_set("coco-stuff-182")
    # ids from ASSET's landscape_test.yaml class table
    expected = {"mountain": 134, "water-other": 177, "rock": 149, "snow": 158, "road": 148, "tree": 168,
                "stone": 161, "river": 147, "grass": 123, "clouds": 105, "sea": 154, "sky-other": 156,
                "flower": 118, "bush": 96, "hill": 126, "person": 0}
    assert {name: coco.id_of(name) for name in expected} == expected
    assert len(coco.labels) == 182 and coco.unlabeled == 255


def test_coco_stuff_183_is_shifted_by_one_with_zero_unlabeled():
    c182, c183 = load_label_set("coco-stuff-182"), load_label_set("coco-stuff-183")
    assert c183.unlabeled == 0 and c183.name_of(0) == "unlabeled"
    assert c183.id_of("pizza") == 59 == c182.id_of("pizza") + 1


def test_unknown_ids_are_reported_with_counts_and_a_position():
    coco = load_label_set("coco-stuff-182")
    label_map = np.full((10, 20), coco.id_of("grass"), np.uint16)
    label_map[3, 7] = 200
    label_map[5:7, 0:2] = 999
    with pytest.raises(InputError) as error:
        coco.check_ids(label_map, "labels.png")
    message = str(error.value)
    assert "id 200 (1 px, e.g. at x=7, y=3)" in message and "id 999 (4 px" in message
    coco.check_ids(np.full((4, 4), 255, np.uint16))  # unlabeled is valid


def test_every_set_has_unique_ids_names_and_valid_colours():
    assert len(available_sets()) >= 2
    for name in available_sets():
        label_set = load_label_set(name)
        ids = [label.id for label in label_set.labels]
        assert len(ids) == len(set(ids)), name
        assert all(len(label.color) == 3 and all(0 <= c <= 255 for c in label.color) for label in label_set.labels)
        for subset in label_set.subsets.values():
            assert set(subset) <= set(ids)


def test_cli_lists_sets_and_labels(capsys):
    assert main(["labels"]) == 0
    assert "coco-stuff-182" in capsys.readouterr().out
    assert main(["labels", "coco-stuff-182"]) == 0
    assert "mountain" in capsys.readouterr().out
    assert main(["labels", "no-such-set"]) == 2
    assert "unknown label set" in capsys.readouterr().err
