"""Metric helpers: PSNR/SSIM against scikit-image, colourfulness, label agreement, reflection score edge cases."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from engine.data.landscapes import EVAL_SEEDS, generate_scene, ids, water_ids
from engine.errors import InputError
from engine.metrics import (VGG_CLASSIFIER_FILE, classifier_info, colorfulness, label_agreement, psnr,
                            reflection_score, ssim, vgg_label_agreement)


@pytest.fixture(scope="module")
def eval_scenes():
    return [generate_scene(seed, 256) for seed in EVAL_SEEDS[:12]]  # the size label agreement is fit at


def test_psnr_and_ssim_match_scikit_image(eval_scenes):
    a = eval_scenes[0].image
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, noisy) == pytest.approx(peak_signal_noise_ratio(a, noisy, data_range=255), abs=1e-6)
    reference = structural_similarity(a, noisy, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=255)  # fmt: skip
    assert ssim(a, noisy) == pytest.approx(reference, abs=2e-3)
    assert ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(InputError):
        psnr(a, a[:64])


def test_colorfulness_is_zero_for_gray_and_orders_saturation(eval_scenes):
    image = eval_scenes[1].image
    gray = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    assert colorfulness(gray) == pytest.approx(0.0, abs=0.5)
    faded = ((image.astype(float) + gray) / 2).astype(np.uint8)
    assert colorfulness(image) > colorfulness(faded) > colorfulness(gray)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200  # rg = 200, yb = 100, no spread: 0.3 * hypot(200, 100)
    assert colorfulness(red) == pytest.approx(0.3 * np.hypot(200, 100))


def test_label_classifier_accuracy_on_held_out_ground_truth(eval_scenes):
    info = classifier_info()
    assert float(info["eval_accuracy"]) > 0.75
    scores = [label_agreement(s.image, s.labels) for s in eval_scenes]
    assert np.mean(scores) > 0.75
    # the same images with another scene's labels: appearance no longer matches the requested labels
    shuffled = [label_agreement(s.image, eval_scenes[(k + 1) % len(eval_scenes)].labels)
                for k, s in enumerate(eval_scenes)]  # fmt: skip
    assert np.mean(shuffled) < np.mean(scores) - 0.25


def test_label_agreement_inside_a_mask(eval_scenes):
    scene = next(s for s in eval_scenes if (s.labels == ids().sky_other).mean() > 0.1)
    sky = scene.labels == ids().sky_other
    assert label_agreement(scene.image, scene.labels, mask=sky) > 0.8
    as_grass = scene.labels.copy()
    as_grass[sky] = ids().grass
    assert label_agreement(scene.image, as_grass, mask=sky) < 0.2
    assert np.isnan(label_agreement(scene.image, np.full_like(scene.labels, 0)))  # "person": unknown to it


def test_reflection_score_needs_water_and_matching_sizes(eval_scenes):
    dry = next(s for s in eval_scenes if not np.isin(s.labels, water_ids()).any())
    assert np.isnan(reflection_score(dry.image, dry.labels))
    with pytest.raises(InputError):
        reflection_score(dry.image, dry.labels[:64])


def test_vgg_judge_reads_what_fills_a_region_not_its_colour_and_noise(eval_scenes):
    """The generator's own water reads as water to the VGG judge; the naive fill's Gaussian noise of the same
    colour and spread, which the appearance classifier credits, does not, nor does a flat fill."""
    assert float(classifier_info(VGG_CLASSIFIER_FILE)["eval_accuracy"]) > 0.85
    scene = max(eval_scenes, key=lambda s: np.isin(s.labels, water_ids()).mean())
    water = np.isin(scene.labels, water_ids())
    assert water.mean() > 0.1
    pixels = scene.image[water].astype(float)
    noise = scene.image.copy()
    noise[water] = np.clip(np.random.default_rng(0).normal(pixels.mean(0), pixels.std(0), pixels.shape), 0, 255)
    flat = scene.image.copy()
    flat[water] = pixels.mean(0).astype(np.uint8)
    own = vgg_label_agreement(scene.image, scene.labels, water)
    assert own > 0.6
    assert vgg_label_agreement(noise, scene.labels, water) < own - 0.4
    assert vgg_label_agreement(flat, scene.labels, water) < own - 0.4
    assert label_agreement(noise, scene.labels, water) > 0.5  # the appearance classifier's known blind spot
    with pytest.raises(InputError):
        vgg_label_agreement(scene.image, scene.labels[:64])


def test_a_damaged_judge_file_is_an_error_naming_it(tmp_path, monkeypatch):
    from engine.errors import CheckpointError
    from engine.metrics import forget_loaded_classifiers
    from engine.paths import assets_dir

    shipped = (assets_dir() / VGG_CLASSIFIER_FILE).read_bytes()
    (tmp_path / "metrics").mkdir()
    monkeypatch.setenv("SGRAFFITO_ASSETS", str(tmp_path))
    forget_loaded_classifiers()
    try:
        with pytest.raises(InputError, match="label_judges --fit-vgg"):  # missing: how to rebuild it
            classifier_info(VGG_CLASSIFIER_FILE)
        (tmp_path / VGG_CLASSIFIER_FILE).write_bytes(shipped[: len(shipped) // 2])
        with pytest.raises(CheckpointError, match="label-agreement-vgg.safetensors"):
            classifier_info(VGG_CLASSIFIER_FILE)
    finally:
        forget_loaded_classifiers()
