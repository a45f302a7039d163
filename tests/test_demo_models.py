"""The shipped demo models, each loaded once through one runtime (its model cache), each mode run once on a tiny
input: an ASSET edit, a ColTran and a PixelCNN colorization, an ASAPNet translation and a live-preview pass.

A marked tier (`-m demo_models`; `make test` runs it with the rest, `-m "not demo_models"` leaves it out): the
other tests use tiny random models, so these are the only tests that would notice shipped weights that no longer
load or no longer run."""

import numpy as np
import pytest
import torch

from engine import registry
from engine.data.landscapes import generate_scene, ids
from engine.jobs import JobKind, JobState, Request, Runtime
from engine.model_store import list_models

pytestmark = [pytest.mark.demo_models, pytest.mark.slow]
TIMEOUT = 300


@pytest.fixture(scope="module")
def runtime():
    torch.set_num_threads(1)
    rt = Runtime(device="cpu")
    yield rt
    rt.shutdown()


def demo_models() -> dict[str, object]:
    return {m.name: m for m in list_models() if m.source == "demo"}


def run(runtime, request, kind=JobKind.GENERATE):
    job = runtime.submit(request, kind=kind, supersede=False)
    assert job.wait(TIMEOUT), f"{request.backend} did not finish in {TIMEOUT} s"
    assert job.state is JobState.DONE, f"{request.backend}: {job.state} {job.error}"
    assert len(job.candidates) == request.k
    return job.candidates


def test_every_shipped_demo_model_is_listed_and_loads(runtime):
    models = demo_models()
    assert {"demo-asset-landscape", "demo-coltran", "demo-pixelcnn-colorizer", "demo-asapnet-landscape"} <= set(models)
    for info in models.values():
        if info.name in PASSES:
            continue  # loaded by its pass below, once
        backend = registry.create_backend(info.kind)
        assert backend.load(info.path, "cpu") is not None, info.name


def test_asset_demo_edits_a_small_scene(runtime):
    scene = generate_scene(11, 128)
    after = scene.labels.copy()
    after[96:, :64] = ids().sea
    (candidate,) = run(runtime, Request(backend="asset", model="demo-asset-landscape", mode="edit",
                                        photo=scene.image, labels_before=scene.labels, labels_after=after, k=1))
    x0, y0, x1, y1 = candidate.region
    assert candidate.image.shape == (y1 - y0, x1 - x0, 3) and x0 < 64 and y1 > 96
    assert candidate.image.std() > 2, "not a flat image"


def test_asset_demo_regenerates_water_that_reads_as_water_unlike_the_naive_fill():
    """The held-out edit evaluation of the model card, on one scene: the scene's own water masked and sampled again
    (the scene is the ground truth) reads as water to the label classifier and reflects what stands above it,
    where the naive per-class colour noise does neither, and reports the scene itself as the ceiling; every metric of the card but LPIPS (its weights are a
    download) is there and finite."""
    from engine.paths import assets_dir
    from engine.train.tasks_asset import evaluate_edits, regenerate_water

    assert regenerate_water(generate_scene(0, 64).__class__(np.zeros((64, 64, 3), np.uint8),
                                                            np.full((64, 64), ids().grass, np.uint8))) is None
    torch.set_num_threads(1)
    results = evaluate_edits(assets_dir() / "models" / "demo-asset-landscape", count=2, k=1, size=256, lpips_net=None)
    water = "the scene's water sampled again: "
    assert results["held-out scenes"] == "2 sea edits, 2 water edits"
    # the sea edit's paired comparison with the naive fill, with its standard error over the scenes
    paired = results["everything below the mountains becomes sea: reflection score, ours minus naive fill per scene"]
    assert paired.endswith("(mean +- standard error, 2 scenes)")
    assert all(np.isfinite(v) for v in results.values() if isinstance(v, float))
    assert results[water + "label agreement in the edit (ours)"] > results[water + "label agreement in the edit (naive fill)"] + 0.2
    assert results[water + "reflection score (ours)"] > results[water + "reflection score (naive fill)"]
    assert results[water + "grid-artefact score (median) (ours)"] > 0
    # the card's ceiling: the scene itself, which a perfect edit would reproduce, reads as water and mirrors
    assert results[water + "label agreement in the edit (the scene itself)"] > 0.5
    assert results[water + "reflection score (the scene itself)"] > results[water + "reflection score (ours)"]
    assert np.isfinite(results[water + "label agreement in the edit (the scene's own tokens decoded)"])
    assert np.isfinite(results[water + "grid-artefact score (median) (the scene's own tokens decoded)"])


def test_asset_reconstruct_gives_back_the_photo_through_the_tokenizers_only_where_asked():
    """The perfect transformer's edit: the photo's own tokens decoded into the masked region. Far from the mask
    the photo is untouched; inside it is much closer to the photo than the naive fill is."""
    from engine.pipelines.asset import load_bundle, reconstruct
    from engine.train.tasks_asset import class_colour_stats, naive_fill

    torch.set_num_threads(1)
    scene = generate_scene(21, 256)
    mask = np.zeros(scene.labels.shape, bool)
    mask[150:230, 40:200] = True
    patch, fit = reconstruct(load_bundle("demo-asset-landscape"), scene.image, mask)
    x0, y0, x1, y1 = fit.region
    image = scene.image.copy()
    image[y0:y1, x0:x1] = patch
    far = np.ones_like(mask)
    far[150 - 70:230 + 70, 0:200 + 70] = False  # the blend reaches 64 px past the mask
    assert np.array_equal(image[far], scene.image[far])
    naive = naive_fill(scene.image, scene.labels, mask, class_colour_stats(), np.random.default_rng(0))
    error = lambda a: np.abs(a[mask].astype(int) - scene.image[mask]).mean()  # noqa: E731
    assert 0 < error(image) < 0.6 * error(naive)  # through the tokenizer: close, not the photo itself


@pytest.mark.parametrize("kind, name", [("coltran", "demo-coltran"), ("pixelcnn", "demo-pixelcnn-colorizer")])
def test_colorizer_demos_colour_a_small_gray_photo(runtime, kind, name):
    gray = generate_scene(12, 64).image[:48].mean(axis=2).astype(np.uint8)
    (candidate,) = run(runtime, Request(backend=kind, model=name, mode="colorize", photo=gray, k=1))
    assert candidate.image.shape == (48, 64, 3)
    image = candidate.image.astype(int)
    assert np.abs(image[..., 0] - image[..., 2]).mean() > 1, "some colour"


def test_the_coltran_demo_samples_with_the_context_it_was_trained_with():
    from engine.pipelines.coltran import load_model

    assert load_model("demo-coltran").row_context_quirk is False


def test_asapnet_demo_translates_a_label_map_and_renders_a_live_preview(runtime):
    scene = generate_scene(13, (96, 128))
    labels = scene.labels
    blank = np.zeros((*labels.shape, 3), np.uint8)
    (rendering,) = run(runtime, Request(backend="asapnet", model="demo-asapnet-landscape", mode="translate",
                                        photo=blank, labels_before=labels, labels_after=labels, k=1))
    assert rendering.image.shape[2] == 3 and rendering.image.std() > 5

    after = labels.copy()
    after[60:, :50] = ids().sea
    (preview,) = run(runtime, Request(backend="asapnet", model="demo-asapnet-landscape", mode="edit",
                                      photo=scene.image, labels_before=labels, labels_after=after, k=1),
                     kind=JobKind.LIVE_PREVIEW)
    x0, y0, x1, y1 = preview.region
    assert x0 < 50 and y1 > 60 and preview.image.shape == (y1 - y0, x1 - x0, 3)


def test_asapnet_demo_renders_no_tile_grid_and_a_new_texture_per_seed(runtime):
    """The previous demo repeated one texture in every 16-px tile (grid-artefact score 3.3 on held-out scenes, a
    flat fill about 1); the noise model does not, and Generate's candidates differ."""
    from engine.data.landscapes import EVAL_SEEDS
    from engine.metrics import grid_artefact_score

    scores = []
    for seed in EVAL_SEEDS[:3]:
        scene = generate_scene(int(seed), 256)
        labels, blank = scene.labels, np.zeros((256, 256, 3), np.uint8)
        candidates = run(runtime, Request(backend="asapnet", model="demo-asapnet-landscape", mode="translate",
                                          photo=blank, labels_before=labels, labels_after=labels, k=2))
        assert len(candidates) == 2
        assert np.abs(candidates[0].image.astype(int) - candidates[1].image).mean() > 2
        scores.append(grid_artefact_score(candidates[0].image, scene.image))
    assert np.median(scores) < 1.8, scores


PASSES = {"demo-asset-landscape", "demo-coltran", "demo-pixelcnn-colorizer", "demo-asapnet-landscape"}


def test_asset_demo_photo_edit_evaluation_segments_edits_and_scores_a_photo():
    """The card's real-photo edits on a stand-in photo (a procedural scene rendered at 4:3): the demo segmenter
    labels it, the lower band is sampled again and the lower third becomes sea, each scored for ours and the
    naive fill."""
    from engine.paths import assets_dir
    from engine.train.tasks_asset import evaluate_photo_edits

    torch.set_num_threads(1)
    photo = generate_scene(3, (192, 256)).image
    results = evaluate_photo_edits(assets_dir() / "models" / "demo-asset-landscape", {"stand-in": photo}, k=1,
                                   lpips_net=None)
    assert results["photos"] == "stand-in" and results["size"] == "256x192 px"
    scored = {k: v for k, v in results.items() if isinstance(v, float)}
    assert len(scored) == 10 and all(np.isfinite(v) for v in scored.values())
    band = "the lower band sampled again: grid-artefact score (median) "
    assert results[band + "(ours)"] > 0 and results[band + "(naive fill)"] > 0
    sea = "the lower third becomes sea: label agreement in the edit "
    assert results[sea + "(ours)"] > results[sea + "(the photo unedited)"]  # the edit changed what the region shows
    vgg = "the lower third becomes sea: label agreement in the edit, VGG16 judge "
    assert results[vgg + "(ours)"] > results[vgg + "(naive fill)"] + 0.2  # ImageNet features: noise is not water
