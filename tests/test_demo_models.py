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


@pytest.mark.parametrize("kind, name", [("coltran", "demo-coltran"), ("pixelcnn", "demo-pixelcnn-colorizer")])
def test_colorizer_demos_colour_a_small_gray_photo(runtime, kind, name):
    gray = generate_scene(12, 64).image[:48].mean(axis=2).astype(np.uint8)
    (candidate,) = run(runtime, Request(backend=kind, model=name, mode="colorize", photo=gray, k=1))
    assert candidate.image.shape == (48, 64, 3)
    image = candidate.image.astype(int)
    assert np.abs(image[..., 0] - image[..., 2]).mean() > 1, "some colour"


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


PASSES = {"demo-asset-landscape", "demo-coltran", "demo-pixelcnn-colorizer", "demo-asapnet-landscape"}
